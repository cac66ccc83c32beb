"""The committed notebook renders on GitHub/nbviewer and holds a complete, error-free run."""
import contextlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import nbformat
import psutil
import pytest

from helpers import NOTEBOOK, ROOT
OUTPUTS = [o for c in NOTEBOOK["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def test_notebook_has_no_widget_state_and_stays_small():
    assert "widgets" not in NOTEBOOK["metadata"]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in OUTPUTS)
    assert (ROOT / "experiments.ipynb").stat().st_size < 3_000_000


def test_committed_notebook_holds_an_executed_run_without_errors():
    code_cells = [c for c in NOTEBOOK["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code_cells)
    assert not any(o["output_type"] == "error" for o in OUTPUTS)
    # the normalization axes, 3 graphs, the 3 grids in one figure, sweep, weights, per-seed pairs, activations, range
    # test, group count
    assert sum("image/png" in o.get("data", {}) for o in OUTPUTS) == 12


def test_the_first_cell_and_the_readme_state_the_answer_of_the_committed_execution():
    """The notebook and the README lead with their result, the very sentence findings.answer builds from the committed
    histories: each configuration's final test accuracy, each pair's interval and verdict."""
    import findings
    import store
    answer = findings.answer(store.load_histories(ROOT / "images" / "history.json"))
    first = " ".join("".join(NOTEBOOK["cells"][0]["source"]).split())
    assert answer in first[:first.index("One small convolutional net")]
    assert answer in " ".join((ROOT / "README.md").read_text().split())


def test_outputs_are_text_and_png_only():
    kinds = {k for o in OUTPUTS for k in o.get("data", {})}
    assert kinds <= {"text/plain", "image/png", "text/markdown"}


def test_readme_images_exist():
    readme = (ROOT / "README.md").read_text()
    for name in ("test_loss", "test_accuracy", "train_curves", "misclassified", "normalization_axes", "micro_batch_sweep",
                 "weight_histograms", "per_seed", "activation_statistics", "lr_range", "group_sweep", "budget"):
        assert f"images/{name}.png" in readme and (ROOT / "images" / f"{name}.png").stat().st_size > 10_000


SETUP = next("".join(c["source"]) for c in NOTEBOOK["cells"] if "REPOSITORY = " in "".join(c["source"]))
OPENED_FROM_GITHUB = "fileId=https%3A%2F%2Fgithub.com%2Fsomeone%2Fbn-ln-gn%2Fblob%2Fdev%2Fexperiments.ipynb"
OPENED_FROM_DRIVE = "fileId=1AbCdEfGhIjKlMnOpQrStUvWxYz"


@contextlib.contextmanager
def jupyter_sessions(path):
    """A real HTTP server on 127.0.0.1 answering /api/sessions as Colab's Jupyter server does for a notebook opened
    from `path`; its address in the environment variables Colab sets."""
    answer = json.dumps([{"id": "1", "name": "experiments.ipynb", "path": path, "type": "notebook",
                          "kernel": {"id": "2", "name": "python3"}, "notebook": {"name": "experiments.ipynb",
                                                                                  "path": path}}]).encode()

    class Sessions(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/sessions" else 404)
            self.end_headers()
            self.wfile.write(answer if self.path == "/api/sessions" else b"")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Sessions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"COLAB_JUPYTER_IP": "127.0.0.1", "KMP_TARGET_PORT": str(server.server_port)}
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """google.colab simulated (drive.mount recorded), git and pip recorded, not run: a clone makes a folder holding
    model.py and a committed run store. Runs in an empty folder, as Colab opens a notebook alone."""
    recorded = types.SimpleNamespace(calls=[], mounts=[], drive=tmp_path / "drive")
    module = types.ModuleType("google.colab")
    module.drive = recorded.drive_module = types.SimpleNamespace(mount=recorded.mounts.append)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", module)
    monkeypatch.delenv("RUNS_DIR", raising=False)
    monkeypatch.setenv("KMP_TARGET_PORT", "9")  # nothing listens there: no sessions API unless a test serves one

    def run(command, check):
        recorded.calls.append(command)
        if command[:2] == ["git", "clone"]:
            (tmp_path / command[-1] / "runs").mkdir(parents=True)
            shutil.copy(ROOT / "model.py", tmp_path / command[-1])
            (tmp_path / command[-1] / "runs" / "entry.json").write_text("{}")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.chdir(tmp_path)
    recorded.setup = SETUP.replace('"/content/drive', f'"{recorded.drive}')
    yield recorded
    os.environ.pop("RUNS_DIR", None)


def test_opened_from_github_in_colab_it_clones_that_branch_installs_nothing_present_and_uses_drive(colab, tmp_path,
                                                                                                  monkeypatch):
    with jupyter_sessions(OPENED_FROM_GITHUB) as address:
        for name, value in address.items():
            monkeypatch.setenv(name, value)
        exec(colab.setup, {})
    assert colab.calls == [["git", "clone", "--depth", "1", "--branch", "dev",
                            "https://github.com/someone/bn-ln-gn.git", "bn-ln-gn"]]  # no pip: all installed
    assert Path.cwd() == tmp_path / "bn-ln-gn" and colab.mounts == [str(colab.drive)]
    assert os.environ["RUNS_DIR"] == f"{colab.drive}/MyDrive/bn-ln-gn-runs"
    assert [p.name for p in Path(os.environ["RUNS_DIR"]).iterdir()] == ["entry.json"]  # seeded from the committed store


def test_a_branch_with_slashes_is_cloned_whole(colab, monkeypatch):
    with jupyter_sessions(OPENED_FROM_GITHUB.replace("%2Fdev%2F", "%2Ffeature%2Fgroup-count%2Fv2%2F")) as address:
        for name, value in address.items():
            monkeypatch.setenv(name, value)
        exec(colab.setup, {})
    assert colab.calls[0] == ["git", "clone", "--depth", "1", "--branch", "feature/group-count/v2",
                              "https://github.com/someone/bn-ln-gn.git", "bn-ln-gn"]


@pytest.mark.parametrize("message", ["mount failed: user declined", "credential propagation was unsuccessful"])
def test_a_failing_drive_mount_is_one_line_and_the_store_stays_local(colab, capsys, message):
    def refuse(path):
        raise ValueError(message)

    colab.drive_module.mount = refuse
    exec(colab.setup.replace('REPOSITORY = ""', 'REPOSITORY = "someone/bn-ln-gn"'), {})  # no exception: Run all goes on
    [line] = capsys.readouterr().out.splitlines()
    assert line == (f"Google Drive not mounted (ValueError: {message}); the run store stays in runs/ on this runtime, "
                    "so finished runs are lost when it is recycled.")
    assert "RUNS_DIR" not in os.environ and not colab.drive.exists()


def test_the_setup_cell_is_a_collapsed_form_in_colab():
    cell = next(c for c in NOTEBOOK["cells"] if "REPOSITORY = " in "".join(c["source"]))
    assert cell["metadata"].get("cellView") == "form"
    assert re.match(r'# @title .+ \{ display-mode: "form" \}\n', SETUP)


@pytest.mark.parametrize("served", [OPENED_FROM_DRIVE, None], ids=["opened from Drive", "no sessions API"])
def test_where_colab_names_no_github_notebook_repository_is_used_or_one_line_says_what_to_set(colab, monkeypatch,
                                                                                              served):
    with contextlib.ExitStack() as stack:
        for name, value in (stack.enter_context(jupyter_sessions(served)) if served else {}).items():
            monkeypatch.setenv(name, value)
        with pytest.raises(Exception, match="model.py is not beside this notebook and ") as error:
            exec(colab.setup, {})
        found = "it was opened from 1AbCdEfGhIjKlMnOpQrStUvWxYz" if served else "no GitHub address was found for it"
        assert error.value._render_traceback_() == [f"SetupError: {error.value}"]  # one line in Jupyter
        assert found in str(error.value) and "set REPOSITORY in this cell" in str(error.value) and not colab.calls
        exec(colab.setup.replace('REPOSITORY = ""', 'REPOSITORY = "someone/bn-ln-gn"'), {})
    assert colab.calls[0] == ["git", "clone", "--depth", "1", "https://github.com/someone/bn-ln-gn.git", "bn-ln-gn"]


def test_in_colab_only_what_is_missing_is_installed(colab, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "torchsummary" else find_spec(name))
    exec(colab.setup.replace('REPOSITORY = ""', 'REPOSITORY = "someone/bn-ln-gn"'), {})
    assert colab.calls[1][1:] == ["-m", "pip", "install", "-q", "torchsummary"]


def test_the_setup_cell_outside_colab_without_the_repository_says_in_one_line_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # only the notebook: no model.py beside it
    with pytest.raises(Exception, match="model.py is not beside this notebook and no GitHub address was found for it: "
                                        "set REPOSITORY in this cell") as error:
        exec(SETUP, {})
    assert error.value._render_traceback_() == [f"SetupError: {error.value}"]


def test_readme_tables_equal_what_the_committed_histories_give():
    """Every results table in the README is recomputed here from the committed JSON of the same execution."""
    import budget
    import probes
    import stats
    import store

    readme = (ROOT / "README.md").read_text()
    images = ROOT / "images"
    tables = {"history.json": [stats.seed_table, stats.comparison_table, stats.per_seed_table],
              "micro_batch_sweep.json": [stats.sweep_table], "regularizer_report.json": [probes.regularizer_table],
              "activation_statistics.json": [probes.activation_table], "lr_range.json": [probes.divergence_table],
              "group_sweep.json": [lambda histories: probes.group_table(histories, study_groups=4)],
              "normalizations.json": [stats.seed_table], "control_lr_grid.json": [budget.lr_grid_table]}
    if (images / "budget_history.json").exists():
        norm, main = (store.load_histories(images / name) for name in ("normalizations.json", "history.json"))
        budget_runs = store.load_histories(images / "budget_history.json")
        assert budget.budget_table(budget_runs + norm) in readme
        assert stats.family_table(budget.normalization_comparisons(norm, main)) in readme
    checked = 0
    for name, make_tables in tables.items():
        if (images / name).exists():  # all three once the full-size execution is committed
            for make_table in make_tables:
                table = make_table(store.load_histories(images / name))
                assert table in readme, f"README lacks this table from images/{name}:\n{table}"
                checked += 1
    assert checked >= 2


def run_the_notebook(tmp_path, data_dir):
    """run.py on the notebook with MNIST from `data_dir` and no network (a proxy that refuses): (returncode, stderr)."""
    env = dict(os.environ, DATA_DIR=str(data_dir), OUTPUT_DIR=str(tmp_path / "out"), RUNS_DIR=str(tmp_path / "runs"),
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--output", str(tmp_path / "out.ipynb")], env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


def test_without_mnist_the_first_line_a_user_sees_is_the_reason_and_the_fix(tmp_path):
    returncode, stderr = run_the_notebook(tmp_path, tmp_path / "data")
    first = stderr.splitlines()[0]
    assert returncode == 1 and first.startswith(f"MnistMissingError: MNIST is not in {tmp_path / 'data'}/MNIST/raw/")
    assert "Offline, put the four decompressed files train-images-idx3-ubyte" in first
    assert len(stderr.splitlines()) < 12 and "Traceback" not in stderr  # the reason, the cell; no chained traceback
    assert not (tmp_path / "data" / "MNIST").exists()  # no empty folder left behind
    assert not (tmp_path / "out.ipynb").exists()  # nothing written over


def test_a_damaged_mnist_file_stops_the_notebook_with_one_line_naming_it(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(ROOT / "data" / "MNIST" / "raw", raw)
    with open(raw / "t10k-labels-idx1-ubyte", "r+b") as f:
        f.truncate(5000)
    returncode, stderr = run_the_notebook(tmp_path, tmp_path / "data")
    first = stderr.splitlines()[0]
    assert returncode == 1 and first.startswith(f"MnistDamagedError: {raw / 't10k-labels-idx1-ubyte'} is damaged")
    assert "Delete it so that torchvision downloads it again" in first


def test_the_readme_has_no_dead_colab_link_before_publishing_and_the_badge_after():
    import publish
    repository = re.search(r'^REPOSITORY = "([^"]*)"', SETUP, re.M).group(1)
    readme = (ROOT / "README.md").read_text()
    [line] = publish.COLAB_LINE.findall(readme)
    if repository:
        assert line == publish.colab_badge(repository)
    else:  # how to open it from GitHub in Colab, and no link to a placeholder anywhere
        assert "File → Open notebook → GitHub" in line and "colab.research.google.com/github/" not in readme
    assert "<owner>" not in readme and "<name>" not in readme


def test_a_killed_execution_executed_again_loads_the_finished_runs_and_trains_only_the_rest(tmp_path):
    """The parameters, setup and data cells and the sweep's training cell, at a tiny size: killed (with its kernel)
    once a run is stored, then executed again with the same run store."""
    cells = [c for c in NOTEBOOK["cells"] if c["cell_type"] == "code"]
    start = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    sweep = next(c for c in cells if "sweep_specs = " in "".join(c["source"]))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("".join(c["source"]))
                                               for c in cells[start:start + 3] + [sweep]])
    nbformat.write(notebook, tmp_path / "partial.ipynb")
    runs = tmp_path / "runs"
    env = dict(os.environ, RUNS_DIR=str(runs), OUTPUT_DIR=str(tmp_path / "out"), DATA_DIR=str(ROOT / "data"),
               WORKERS="1", VERBOSE="1", SWEEP_MICRO_BATCHES="8,64", SWEEP_SEEDS="2", SWEEP_EPOCHS="1", SWEEP_TRAIN_SIZE="1024",
               PYTHONPATH=str(ROOT))
    execute = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output",
               str(tmp_path / "out.ipynb"), str(tmp_path / "partial.ipynb")]
    first = subprocess.Popen(execute, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list(runs.glob("*.json")) and first.poll() is None:
        time.sleep(0.05)
    for process in psutil.Process(first.pid).children(recursive=True) + [psutil.Process(first.pid)]:
        process.kill()  # the kernel too: it would go on training
    first.wait()
    finished = len(list(runs.glob("*.json")))
    assert 1 <= finished < 8  # 8 runs: BN at micro-batches 8 and 64, LN and GN at 128, 2 seeds each
    subprocess.run(execute, env=env, cwd=ROOT, check=True, capture_output=True, timeout=600)
    out = "".join("".join(o.get("text", "")) for c in nbformat.read(tmp_path / "out.ipynb", 4).cells
                  for o in c.get("outputs", []))
    assert out.count("loaded from the store") == finished and out.count("trained now") == 8 - finished
    assert len(list(runs.glob("*.json"))) == 8


@pytest.mark.parametrize("remote", ["https://github.com/someone/bn-ln-gn.git", "git@github.com:someone/bn-ln-gn.git",
                                    "https://github.com/someone/bn-ln-gn"])
def test_publish_points_repository_and_the_badge_at_the_github_remote(tmp_path, remote):
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("publish.py", "experiments.ipynb", "README.md"):
        shutil.copy(ROOT / name, clone)
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    subprocess.run(["git", "remote", "add", "origin", remote], cwd=clone, check=True)
    done = subprocess.run([sys.executable, "publish.py"], cwd=clone, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    notebook = json.loads((clone / "experiments.ipynb").read_text())
    setup = next("".join(c["source"]) for c in notebook["cells"] if "REPOSITORY = " in "".join(c["source"]))
    assert re.search(r'^REPOSITORY = "someone/bn-ln-gn"', setup, re.M)
    assert setup.replace('"someone/bn-ln-gn"', '""', 1) == SETUP  # nothing else changed
    readme = (clone / "README.md").read_text()
    assert set(re.findall(r"colab\.research\.google\.com/github/([^)]+)\)", readme)) == {
        "someone/bn-ln-gn/blob/main/experiments.ipynb"}


def test_publish_refuses_a_remote_that_is_not_on_github(tmp_path):
    import publish
    with pytest.raises(ValueError, match="remote 'https://gitlab.com/a/b.git' is not a GitHub repository"):
        publish.github_repository("https://gitlab.com/a/b.git")
    assert publish.github_repository("ssh://git@github.com/a/b.c.git\n") == "a/b.c"


def test_executing_twice_from_a_complete_store_writes_the_same_bytes(tmp_path):
    """What run.py writes from a complete run store is the same at every execution, and with another thread count (as
    on another machine) but for the printed device line: no execution timestamps, printed text not split by timing,
    nothing recomputed that float noise could change (no signed zeros). A first execution fills the store."""
    env = dict(os.environ, RUNS_DIR=str(tmp_path / "runs"), DATA_DIR=str(ROOT / "data"), SWEEP_MICRO_BATCHES="64",
               LR_TEST_TRAIN_SIZE="256", GROUP_COUNTS="4", GROUP_TRAIN_SIZE="256", SWEEP_TRAIN_SIZE="256")
    written = []
    for execution, threads in enumerate(("2", "2", "1")):
        out = tmp_path / "out"  # the same folders each time: the notebook prints them
        done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--output", str(out / "executed.ipynb")],
                              env=dict(env, OUTPUT_DIR=str(out / "images"), OMP_NUM_THREADS=threads),
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        written.append({p.relative_to(out): re.sub(rb"device: CPU \(\d threads?\)", b"device: CPU", p.read_bytes())
                        for p in sorted(out.rglob("*")) if p.is_file()})
        shutil.rmtree(out)
    printed = [json.dumps([c.get("outputs") for c in json.loads(files[Path("executed.ipynb")])["cells"]])
               for files in written]
    assert "trained now" in printed[0] and "trained now" not in printed[1] and "loaded from the store" in printed[1]
    assert written[1].keys() == written[2].keys() and len(written[1]) > 10
    for path in written[1]:
        differs = next((i for i, (a, b) in enumerate(zip(written[1][path], written[2][path])) if a != b), None)
        assert written[1][path] == written[2][path], (f"{path} differs between two executions: "
                                                      f"{written[1][path][differs - 200:differs + 50]}")
    assert b'"iopub.execute_input"' not in written[1][Path("executed.ipynb")]
