"""Promises tested as properties, for every case at once rather than one example each (what mutation testing found
unguarded): each parameter rule at its first failing value, each run-store check by damage only it catches, the key's
coverage of the training code function by function, every keyed setting reaching the net, and the cases the study's
own sizes never make happen."""
import json
import math

import pytest
import torch
import torch.nn as nn

import params
import store
from helpers import job_of, key_of, load_run
import utils
from model import GhostBatchNorm2d, Net
from helpers import good_parameters

TINY = math.ulp(0.0)  # the smallest positive float: the first value past 0

# name: (values at the edge that pass, the first values past it that fail)
EDGES = {
    "EPOCHS": ([1], [0]), "SEEDS": ([1], [0]), "BATCH_SIZE": ([1, 60_000], [0, 60_001]),
    "MAX_LR": ([TINY], [0.0, math.inf]), "L1_LAMBDA": ([0.0], [-TINY, math.inf]), "L2_LAMBDA": ([0.0], [-TINY, math.inf]),
    "GN_GROUPS": ([1, 2, 4, 8], [0, 3, 16, True]), "DROPOUT": ([0.0, math.nextafter(1.0, 0.0)], [-TINY, 1.0]),
    "SWEEP_MICRO_BATCHES": ([[1]], [[0], []]), "SWEEP_TRAIN_SIZE": ([60_000], [60_001]), "SWEEP_EPOCHS": ([1], [0]),
    "SWEEP_SEEDS": ([1], [0]), "LR_TEST_SEEDS": ([1], [0]), "LR_TEST_TRAIN_SIZE": ([60_000], [60_001]),
    "LR_TEST_MIN": ([TINY], [0.0]), "LR_TEST_MAX": ([1000.0], [math.inf]), "GROUP_COUNTS": ([[1, 2, 4, 8]], [[16], []]),
    "GROUP_EPOCHS": ([1], [0]), "GROUP_SEEDS": ([1], [0]), "GROUP_TRAIN_SIZE": ([60_000], [60_001]),
    "CONTROL_LRS": ([[TINY]], [[0.0], []]), "CONTROL_LR_EPOCHS": ([1], [0]), "VALIDATION_SIZE": ([1], [0]),
    "CONTROL_SEEDS": ([1], [0]),
    "BUDGET_EPOCHS": ([[1]], [[0], []]), "BUDGET_SEEDS": ([1], [0]), "BUDGET_TRAIN_SIZE": ([60_000], [60_001]),
    "WORKERS": ([0], [-1]), "RETRAIN": ([False, True], [0, 1]), "VERBOSE": ([False, True], [0, 1]),
    "RUNS_DIR": (["runs"], [""]), "DATA_DIR": (["data"], [""]), "OUTPUT_DIR": (["images"], [""]),
}


def test_every_parameter_rule_has_its_edges_listed():
    assert set(EDGES) == set(params.PARAMETER_RULES)


@pytest.mark.parametrize("name", sorted(EDGES))
def test_each_parameter_rule_passes_its_edge_and_fails_the_first_value_past_it(name, tmp_path):
    good, bad = EDGES[name]
    base = dict(good_parameters(), RUNS_DIR=str(tmp_path / "runs"), OUTPUT_DIR=str(tmp_path / "out"),
                SWEEP_MICRO_BATCHES=[1], SWEEP_TRAIN_SIZE=60_000, LR_TEST_TRAIN_SIZE=60_000, GROUP_TRAIN_SIZE=60_000)
    for value in good:  # the rule itself: rules between parameters may bound an edge further (BATCH_SIZE 60,000)
        assert params.PARAMETER_RULES[name][0](value), (name, value)
    for value in bad:
        with pytest.raises(ValueError, match=rf"parameter {name} = {repr(value).replace('[', '.').replace(']', '.')} "):
            params.check_parameters(dict(base, **{name: value}))


@pytest.mark.parametrize("name, allowed", [("EPOCHS", "a whole number from 1"),
                                           ("BATCH_SIZE", "a whole number from 1 to 60,000")])
def test_a_whole_number_rule_says_its_range_exactly(name, allowed):
    with pytest.raises(ValueError, match=f"^parameter {name} = 0 is not allowed: it must be {allowed}$"):
        params.check_parameters(dict(good_parameters(), **{name: 0}))


def test_the_rules_between_parameters_fail_at_their_first_value_too():
    base = good_parameters()
    params.check_parameters(dict(base, SWEEP_MICRO_BATCHES=[128]))  # a micro-batch may be the whole batch ...
    with pytest.raises(ValueError, match="cannot exceed BATCH_SIZE"):
        params.check_parameters(dict(base, SWEEP_MICRO_BATCHES=[129]))  # ... and not one more
    for name in ("SWEEP_TRAIN_SIZE", "LR_TEST_TRAIN_SIZE", "GROUP_TRAIN_SIZE", "BUDGET_TRAIN_SIZE"):
        params.check_parameters(dict(base, **{name: 128}))  # one batch is enough ...
        with pytest.raises(ValueError, match=f"parameter {name} = 127 .* at least one batch"):
            params.check_parameters(dict(base, **{name: 127}))
    params.check_parameters(dict(base, VALIDATION_SIZE=60_000 - 128))  # the images left hold one batch ...
    with pytest.raises(ValueError, match="VALIDATION_SIZE = 59873 .* at least one batch"):
        params.check_parameters(dict(base, VALIDATION_SIZE=60_000 - 127))  # ... and not one image less
    params.check_parameters(dict(base, LR_TEST_MIN=math.nextafter(100.0, 0.0), LR_TEST_MAX=100.0))
    with pytest.raises(ValueError, match="LR_TEST_MIN = 100.0 .* must be below LR_TEST_MAX = 100.0"):
        params.check_parameters(dict(base, LR_TEST_MIN=100.0, LR_TEST_MAX=100.0))


@pytest.mark.parametrize("text, value", [("0", False), ("false", False), ("FALSE", False), ("1", True), ("true", True),
                                         ("True", True)])
def test_every_spelling_of_a_truth_value_is_read_and_nothing_else(monkeypatch, text, value):
    monkeypatch.setenv("VERBOSE", text)
    assert params.from_env("VERBOSE", not value) is value
    monkeypatch.setenv("VERBOSE", text + "x")
    with pytest.raises(ValueError, match=f"VERBOSE='{text}x' is not 0, 1, true or false"):
        params.from_env("VERBOSE", not value)


def test_a_number_that_does_not_parse_is_named_as_a_number(monkeypatch):
    monkeypatch.setenv("MAX_LR", "fast")
    with pytest.raises(ValueError, match="^environment variable MAX_LR='fast' is not a number$"):
        params.from_env("MAX_LR", 0.1)


def test_missing_parameters_are_all_named():
    values = {k: v for k, v in good_parameters().items() if k not in ("SEEDS", "DROPOUT")}
    with pytest.raises(ValueError, match="^parameters missing: SEEDS, DROPOUT$"):
        params.check_parameters(values)


def test_an_unwritable_folder_is_named_with_what_could_not_be_created():
    with pytest.raises(ValueError, match="^parameter RUNS_DIR = '/proc' is not allowed: /proc is not writable$"):
        params.check_writable_folder("RUNS_DIR", "/proc")
    with pytest.raises(ValueError, match="^parameter RUNS_DIR = '/proc/a/b' is not allowed: /proc is not writable, so "
                                         "/proc/a/b cannot be created there$"):
        params.check_writable_folder("RUNS_DIR", "/proc/a/b")


# ------------------------------------------------------------------ the run store's checks, each alone

SPEC = store.run_spec({"name": "GN", "model": {"norm": "gn"}}, seed=1, epochs=1, batch_size=64, train_size=256)


@pytest.mark.usefixtures("tiny_store")
def test_weights_that_load_but_are_another_run_s_are_caught_by_their_hash_alone(tmp_path, capsys):
    """Another run's weights file under this entry's name loads without error into the right layout: only the hash
    in the JSON tells it apart."""
    other = dict(SPEC, seed=2)
    store.train_or_load([SPEC, other], tmp_path)
    entry = json.loads((tmp_path / f"{key_of(SPEC, tmp_path)}.json").read_text())
    theirs = json.loads((tmp_path / f"{key_of(other, tmp_path)}.json").read_text())["weights_file"]
    (tmp_path / entry["weights_file"]).write_bytes((tmp_path / theirs).read_bytes())
    swapped = Net(**SPEC["model"])
    swapped.load_state_dict(torch.load(tmp_path / entry["weights_file"], weights_only=True))  # nothing else objects
    capsys.readouterr()
    assert load_run(tmp_path, SPEC) is None
    assert f"its weights file {entry['weights_file']} does not match the hash" in capsys.readouterr().out


@pytest.mark.usefixtures("tiny_store")
def test_an_entry_renamed_to_another_key_is_caught_by_the_key_check_alone(tmp_path, capsys):
    """The JSON and its weights are whole and belong together; only the key inside says the file name lies."""
    store.train_or_load([SPEC], tmp_path)
    key, other = key_of(SPEC, tmp_path), key_of(dict(SPEC, seed=2), tmp_path)
    (tmp_path / f"{key}.json").rename(tmp_path / f"{other}.json")
    capsys.readouterr()
    assert load_run(tmp_path, dict(SPEC, seed=2)) is None
    assert f"it holds the run of key {key}, not {other}" in capsys.readouterr().out


# ------------------------------------------------------------------ what the key covers

# ------------------------------------------------------------------ every keyed setting reaches the net

CHANGES = {  # a field of the spec: another value of it
    "model.norm": ("model", {"norm": "bn"}), "model.groups": ("model", {"norm": "gn", "groups": 2}),
    "model.dropout": ("model", {"norm": "gn", "dropout": 0.3}), "l1": ("l1", 1e-3), "l2": ("l2", 5e-2),
    "seed": ("seed", 2), "epochs": ("epochs", 2), "batch_size": ("batch_size", 32), "max_lr": ("max_lr", 0.3),
    "train_size": ("train_size", 192),
}


def _trained(spec, tmp_path):
    [key] = store.train_and_store([job_of(spec, tmp_path)], tmp_path, "data")
    model, entry = load_run(tmp_path, spec)
    return torch.cat([p.flatten() for p in model.state_dict().values() if p.is_floating_point()]), entry["history"]


def test_every_field_of_the_spec_is_covered_here():
    keyed = set(SPEC) - {"name", "device"}  # the display name keys nothing; one device type can be tested here
    keyed = (keyed - {"model"}) | {f"model.{k}" for k in ("norm", "groups", "dropout", "micro_batch")}
    assert keyed == set(CHANGES) | {"micro_batch_size", "model.micro_batch"}


@pytest.mark.usefixtures("tiny_store")
@pytest.mark.parametrize("field", sorted(CHANGES))
def test_every_setting_a_run_is_keyed_by_changes_what_it_computes(tmp_path, field):
    name, value = CHANGES[field]
    base = dict(SPEC, model={"norm": "gn", "groups": 4, "dropout": 0.05})
    changed = dict(base, **{name: value}, **({"micro_batch_size": value} if name == "batch_size" else {}))
    (weights, history), (other, other_history) = _trained(base, tmp_path / "a"), _trained(changed, tmp_path / "b")
    assert weights.shape != other.shape or not torch.equal(weights, other), field
    assert history["train_loss"] != other_history["train_loss"], field


@pytest.mark.usefixtures("tiny_store")
def test_the_micro_batch_size_reaches_batchnorm_and_changes_what_it_computes(tmp_path):
    base = dict(SPEC, model={"norm": "bn", "dropout": 0.0})
    runs = [_trained(dict(base, micro_batch_size=size), tmp_path / str(size)) for size in (64, 16)]
    assert not torch.equal(runs[0][0], runs[1][0]) and runs[0][1]["train_loss"] != runs[1][1]["train_loss"]
    assert runs[1][1]["micro_batch_size"] == 16


# ------------------------------------------------------------------ cases the study's sizes never make happen

def test_ghost_batchnorm_s_last_group_of_fewer_samples_is_a_pass_of_its_own():
    """128 samples in micro-batches of 48: groups of 48, 48 and 32, each normalized by its own statistics, the running
    averages updated once per group in order, as three passes through nn.BatchNorm2d would."""
    x = torch.randn(128, 4, 5, 5, dtype=torch.float64)
    ghost, plain = GhostBatchNorm2d(4, 48).double().train(), nn.BatchNorm2d(4).double().train()
    with torch.no_grad():
        for layer in (ghost, plain):
            layer.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
            layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    out = ghost(x)
    expected = torch.cat([plain(part) for part in (x[:48], x[48:96], x[96:])])
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.allclose(ghost.running_mean, plain.running_mean, atol=1e-12)
    assert torch.allclose(ghost.running_var, plain.running_var, atol=1e-12)
    assert ghost.num_batches_tracked.item() == plain.num_batches_tracked.item() == 3


def test_range_test_seeds_that_diverge_at_different_steps_keep_their_own_curves(mnist):
    """One training image is made NaN, so each seed's loss stops being a number at the step its own batch order
    reaches that image (by construction, on any processor): each curve ends at its own first NaN, the other goes on,
    and the epoch stops once both have."""
    (train_x, train_y), test = mnist
    n, batch = 64 * 60, 64
    orders = [torch.randperm(n, generator=utils.seed_stream(seed, "cpu")) for seed in (2, 3)]
    step_of = [{int(image): position // batch for position, image in enumerate(order)} for order in orders]
    poisoned = next(i for i in range(n) if step_of[0][i] != step_of[1][i] and max(step_of[0][i], step_of[1][i]) < 59)
    images = train_x[:n].clone()
    images[poisoned] = float("nan")
    data = ((images, train_y[:n]), test)
    specs = [store.lr_range_spec({"name": "no norm", "model": {"norm": "none"}}, seed, batch_size=batch, lr_min=1e-3,
                                  lr_max=1e-2, train_size=n) for seed in (2, 3)]
    together = utils.lr_range_test(specs, data)
    assert [len(c["loss"]) for c in together] == [step_of[0][poisoned] + 1, step_of[1][poisoned] + 1]
    for curve in together:
        assert math.isnan(curve["loss"][-1]) and all(map(math.isfinite, curve["loss"][:-1]))
        assert len(curve["lr"]) == len(curve["loss"])
    alone = utils.lr_range_test(specs[:1], data)[0]  # float32: packing regroups the sums, so equal within rounding
    assert alone["loss"] == pytest.approx(together[0]["loss"], rel=1e-4, nan_ok=True)
