"""Helpers the test files share (no test file imports another): the project's folders and committed notebook, a
history made by hand, the notebook's parameters at good values, and a spec's job, key and entry in a run store."""
import json
from pathlib import Path

import store

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = json.loads((ROOT / "experiments.ipynb").read_text())


def fake_history(name, test_acc):
    n = len(test_acc)
    return {"name": name, "params": 9752, "epoch": list(range(1, n + 1)), "seconds": [1.5] * n,
            "train_loss": [0.5 / e for e in range(1, n + 1)], "train_acc": [90.0 + e for e in range(n)],
            "test_loss": [0.1 / e for e in range(1, n + 1)], "test_acc": test_acc}


def good_parameters():
    return {"EPOCHS": 20, "SEEDS": 5, "BATCH_SIZE": 128, "MAX_LR": 0.1, "L1_LAMBDA": 5e-5, "L2_LAMBDA": 5e-4,
            "GN_GROUPS": 4, "DROPOUT": 0.05, "SWEEP_MICRO_BATCHES": [2, 128], "SWEEP_TRAIN_SIZE": 60_000,
            "SWEEP_EPOCHS": 2, "SWEEP_SEEDS": 3, "LR_TEST_SEEDS": 3, "LR_TEST_MIN": 1e-3, "LR_TEST_MAX": 100.0,
            "LR_TEST_TRAIN_SIZE": 60_000, "GROUP_COUNTS": [1, 2, 4, 8], "GROUP_EPOCHS": 5, "GROUP_SEEDS": 5,
            "GROUP_TRAIN_SIZE": 60_000, "CONTROL_LRS": [0.01, 0.1], "CONTROL_LR_EPOCHS": 8, "VALIDATION_SIZE": 10_000,
            "CONTROL_SEEDS": 5,
            "BUDGET_EPOCHS": [1, 2, 4, 8], "BUDGET_SEEDS": 5, "BUDGET_TRAIN_SIZE": 60_000, "WORKERS": 0,
            "RUNS_DIR": "runs", "RETRAIN": False, "VERBOSE": False, "DATA_DIR": "data", "OUTPUT_DIR": "images"}


def job_of(spec, folder):
    """(spec, key, code) of `spec` in the run store `folder`, as train_or_load keys it."""
    return store.keyed([spec], folder)[0]


def key_of(spec, folder):
    return job_of(spec, folder)[1]


def save_run(folder, spec, model, history, trained_on):
    """Save `model` and `history` as the run `spec` in `folder`, as train_and_store does after training."""
    return store.save_entry(folder, job_of(spec, folder), {"history": history}, trained_on=trained_on,
                            seconds=sum(history["seconds"]), model=model)


def load_run(folder, spec, device="cpu"):
    return store.load_entry(folder, job_of(spec, folder), device)
