"""Bad input stops early with an error that names the problem: damaged MNIST files, wrong notebook parameters."""
import json
import re
import shutil
from pathlib import Path

import pytest

import params
import utils
from helpers import good_parameters

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "data" / "MNIST" / "raw"
FIX = ("Delete it so that torchvision downloads it again (online), or replace it with the original decompressed file "
       "(md5 sums: torchvision.datasets.MNIST.resources).")


@pytest.fixture
def mnist_copy(tmp_path):
    """A copy of the four MNIST files, safe to damage."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in utils.MNIST_FILES:
        shutil.copy(RAW / name, raw / name)
    return tmp_path


def test_a_truncated_file_is_named_with_its_size_and_the_fix(mnist_copy):
    path = mnist_copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:999_984 + 16])
    with pytest.raises(ValueError) as error:
        utils.load_mnist(mnist_copy)
    message = str(error.value)
    assert message == (f"{path} is damaged: it has 1,000,000 bytes, but MNIST's train-images-idx3-ubyte has "
                       f"47,040,016 (truncated). {FIX}")


def test_a_file_with_the_wrong_header_is_named(mnist_copy):
    raw = mnist_copy / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes())  # swapped files
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte is not the MNIST file it is named after: its header "
                                         r"is 000008010000ea60, MNIST's t10k-labels-idx1-ubyte starts with "
                                         r"0000080100002710"):
        utils.load_mnist(mnist_copy)


def test_extra_bytes_are_named_too(mnist_copy):
    path = mnist_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes() + b"\0" * 10)
    with pytest.raises(ValueError, match=re.escape(f"7,840,016 (extra bytes at the end). {FIX}")):
        utils.load_mnist(mnist_copy)


def test_the_real_files_pass_the_check():
    for name in utils.MNIST_FILES:
        utils.check_mnist_file(RAW / name)


@pytest.mark.parametrize("name, value, allowed", [
    ("EPOCHS", 0, "a whole number from 1"), ("SEEDS", 0, "a whole number from 1"), ("EPOCHS", 2.5, "whole number"),
    ("SWEEP_MICRO_BATCHES", [8, -4], "a non-empty list of whole numbers from 1 to BATCH_SIZE"),
    ("SWEEP_MICRO_BATCHES", [], "non-empty"), ("SWEEP_TRAIN_SIZE", 70_000, "a whole number from 1 to 60,000"),
    ("MAX_LR", 0.0, "a number above 0"), ("DROPOUT", 1.0, "up to (not including) 1"), ("GN_GROUPS", 3, "1, 2, 4 or 8"),
    ("WORKERS", -1, "a whole number from 0"), ("RETRAIN", "yes", "True or False"), ("BATCH_SIZE", True, "whole"),
    ("GROUP_COUNTS", [1, 3], "a non-empty list of 1, 2, 4 and 8"), ("LR_TEST_MIN", -1e-3, "a number above 0"),
    ("LR_TEST_SEEDS", 0, "a whole number from 1"), ("GROUP_TRAIN_SIZE", 0, "a whole number from 1 to 60,000"),
])
def test_a_wrong_parameter_is_named_with_its_value_and_what_is_allowed(name, value, allowed):
    values = dict(good_parameters(), **{name: value})
    with pytest.raises(ValueError) as error:
        params.check_parameters(values)
    assert f"parameter {name} = {value!r} is not allowed" in str(error.value) and allowed in str(error.value)


def test_parameters_that_only_clash_with_each_other_are_caught():
    with pytest.raises(ValueError, match=r"SWEEP_MICRO_BATCHES = \[2, 256\] .* cannot exceed BATCH_SIZE = 128"):
        params.check_parameters(dict(good_parameters(), SWEEP_MICRO_BATCHES=[2, 256]))
    with pytest.raises(ValueError, match="SWEEP_TRAIN_SIZE = 100 .* at least one batch of BATCH_SIZE = 128"):
        params.check_parameters(dict(good_parameters(), SWEEP_TRAIN_SIZE=100))
    with pytest.raises(ValueError, match="LR_TEST_TRAIN_SIZE = 64 .* at least one batch of BATCH_SIZE = 128"):
        params.check_parameters(dict(good_parameters(), LR_TEST_TRAIN_SIZE=64))
    with pytest.raises(ValueError, match="LR_TEST_MIN = 1.0 .* must be below LR_TEST_MAX = 0.5"):
        params.check_parameters(dict(good_parameters(), LR_TEST_MIN=1.0, LR_TEST_MAX=0.5))
    params.check_parameters(good_parameters())


@pytest.mark.parametrize("text, default, value", [("3", 20, 3), ("2,8", [1], [2, 8]), ("0.05,0.2", [0.1], [0.05, 0.2]),
                                                  ("1", False, True),
                                                  ("false", True, False), ("0.2", 0.1, 0.2), ("out", "images", "out")])
def test_environment_values_are_parsed_like_the_default_and_recorded(monkeypatch, text, default, value):
    monkeypatch.setenv("SOME_PARAMETER", text)
    monkeypatch.setattr(params, "FROM_ENVIRONMENT", {})
    assert params.from_env("SOME_PARAMETER", default) == value
    assert params.from_env("UNSET_PARAMETER", default) == default
    assert params.FROM_ENVIRONMENT == {"SOME_PARAMETER": value}  # what a run prints as "not the defaults"


@pytest.mark.parametrize("text, default, kind", [("abc", 20, "a whole number"), ("2,x", [1], "comma-separated whole"),
                                                 ("0.1,x", [0.1], "comma-separated numbers"),
                                                 ("yes", False, "0, 1, true or false")])
def test_an_environment_value_that_does_not_parse_names_the_variable(monkeypatch, text, default, kind):
    monkeypatch.setenv("EPOCHS", text)
    with pytest.raises(ValueError, match=f"environment variable EPOCHS='{text}' is not {kind}"):
        params.from_env("EPOCHS", default)


def notebook_cells():
    return [c for c in json.loads((ROOT / "experiments.ipynb").read_text())["cells"] if c["cell_type"] == "code"]


def run_the_notebook_up_to_its_check():
    """Execute the parameters cell and the next cell up to its check_parameters line, which must come before the data
    loads or a device is chosen."""
    cells = notebook_cells()
    parameters = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    setup = "".join(cells[cells.index(parameters) + 1]["source"])
    check = setup.index("params.check_parameters(")
    assert check < setup.index("get_device")
    assert not any("cached_mnist" in "".join(c["source"]) for c in cells[:cells.index(parameters) + 2])
    namespace = {}
    exec("".join(parameters["source"]), namespace)
    exec(setup[:check] + setup[check:].split("\n")[0], namespace)


@pytest.mark.parametrize("env, message", [({"EPOCHS": "0"}, "parameter EPOCHS = 0"),
                                          ({"SWEEP_MICRO_BATCHES": "2,-8"}, "parameter SWEEP_MICRO_BATCHES = [2, -8]")])
def test_the_notebook_stops_on_a_wrong_parameter_before_loading_data(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_the_notebook_up_to_its_check()


@pytest.mark.parametrize("name, value, repeated", [("SWEEP_MICRO_BATCHES", [2, 2, 128, 128], "2, 128"),
                                                   ("GROUP_COUNTS", [4, 1, 4], "4")])
def test_a_list_parameter_with_a_repeated_value_is_refused_naming_the_value(name, value, repeated):
    with pytest.raises(ValueError, match=rf"parameter {name} = .* it repeats {repeated}, and each repeat would count"):
        params.check_parameters(dict(good_parameters(), **{name: value}))


CANDIDATES = [0, -1, 2.5, 0.0, 1.0, 1e9, 3, True, "", "yes", [], [0], [3], [2, 256], None]


@pytest.mark.parametrize("name", list(params.PARAMETER_RULES))
def test_every_rule_in_the_table_rejects_some_value_and_the_check_names_the_parameter(name):
    ok, _ = params.PARAMETER_RULES[name]
    rejected = [value for value in CANDIDATES if not ok(value)]
    assert rejected, f"the rule of {name} accepts everything"
    with pytest.raises(ValueError, match=f"parameter {name} = "):
        params.check_parameters(dict(good_parameters(), **{name: rejected[0]}))


def test_every_parameter_of_the_notebook_has_a_rule():
    """A parameter without a rule (or a rule dropped from the table) would let a value like SWEEP_EPOCHS=0 through."""
    cells = notebook_cells()
    parameters = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])
    names = set(re.findall(r'^([A-Z_0-9]+) = from_env\("\1"', parameters, re.M))
    assert names and names == set(params.PARAMETER_RULES) == set(good_parameters())


@pytest.mark.parametrize("name", ["RUNS_DIR", "OUTPUT_DIR"])
def test_a_folder_parameter_that_cannot_be_written_is_refused_before_anything_runs(tmp_path, name):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(ValueError, match=f"parameter {name} = '{a_file}/runs' is not allowed: {a_file} is a file"):
        params.check_parameters(dict(good_parameters(), **{name: str(a_file / "runs")}))
    with pytest.raises(ValueError, match=f"parameter {name} = '/proc/bn-ln-gn' is not allowed: /proc is not writable"):
        params.check_parameters(dict(good_parameters(), **{name: "/proc/bn-ln-gn"}))
    params.check_parameters(dict(good_parameters(), **{name: str(tmp_path / "new" / "folder")}))  # creatable: fine
    assert not (tmp_path / "new").exists()  # the check creates nothing


def test_the_notebook_stops_on_an_unwritable_run_store_before_loading_data(monkeypatch, tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="parameter RUNS_DIR = .* is a file, not a folder"):
        run_the_notebook_up_to_its_check()
