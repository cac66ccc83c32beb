"""The committed notebook renders on GitHub/nbviewer and holds a complete, error-free run."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = json.loads((ROOT / "experiments.ipynb").read_text())
OUTPUTS = [o for c in NOTEBOOK["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def test_notebook_has_no_widget_state_and_stays_small():
    assert "widgets" not in NOTEBOOK["metadata"]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in OUTPUTS)
    assert (ROOT / "experiments.ipynb").stat().st_size < 3_000_000


def test_committed_notebook_holds_an_executed_run_without_errors():
    code_cells = [c for c in NOTEBOOK["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code_cells)
    assert not any(o["output_type"] == "error" for o in OUTPUTS)
    # 3 graphs, 3 grids, sweep, weights, per-seed pairs, activations, range test, group count
    assert sum("image/png" in o.get("data", {}) for o in OUTPUTS) == 12


def test_outputs_are_text_and_png_only():
    kinds = {k for o in OUTPUTS for k in o.get("data", {})}
    assert kinds <= {"text/plain", "image/png", "text/markdown"}


def test_readme_images_exist():
    readme = (ROOT / "README.md").read_text()
    for name in ("test_loss", "test_accuracy", "train_curves", "misclassified_bn_l1", "misclassified_ln",
                 "misclassified_gn", "micro_batch_sweep", "weight_histograms", "per_seed", "activation_statistics", "lr_range",
                 "group_sweep"):
        assert f"images/{name}.png" in readme and (ROOT / "images" / f"{name}.png").stat().st_size > 10_000


def test_colab_cell_without_model_py_or_repo_url_says_what_to_do(tmp_path, monkeypatch):
    setup = "".join(NOTEBOOK["cells"][1]["source"])
    assert "REPO_URL" in setup
    monkeypatch.chdir(tmp_path)  # an empty folder: no model.py beside the notebook
    with pytest.raises(RuntimeError, match="model.py and utils.py are not beside this notebook. Set REPO_URL"):
        exec(setup, {})


def test_readme_tables_equal_what_the_committed_histories_give():
    """Every results table in the README is recomputed here from the committed JSON of the same execution."""
    import probes
    import stats
    import store

    readme = (ROOT / "README.md").read_text()
    images = ROOT / "images"
    tables = {"history.json": [stats.seed_table, stats.comparison_table, stats.per_seed_table],
              "micro_batch_sweep.json": [stats.sweep_table], "regularizer_report.json": [probes.regularizer_table],
              "activation_statistics.json": [probes.activation_table], "lr_range.json": [probes.divergence_table],
              "group_sweep.json": [lambda histories: probes.group_table(histories, study_groups=4)]}
    checked = 0
    for name, make_tables in tables.items():
        if (images / name).exists():  # all three once the full-size execution is committed
            for make_table in make_tables:
                table = make_table(store.load_histories(images / name))
                assert table in readme, f"README lacks this table from images/{name}:\n{table}"
                checked += 1
    assert checked >= 2
