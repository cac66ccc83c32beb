"""Test-run settings: the notebook under nbval runs at a tiny size and writes into a temporary folder.

The kernel that nbval starts inherits this process's environment, so these variables reach the notebook's
parameters cell: one epoch and one seed for the main study and the regularizer runs, and a sweep of two micro-batch
sizes on 1,024 training images, one small range test per network and two
GroupNorm runs on 1,024 images. OUTPUT_DIR and RUNS_DIR are always replaced: a test run must never write over the
committed images/ nor read or write the committed run store runs/.
"""
import os
import tempfile

for name, value in {"EPOCHS": "1", "SEEDS": "1", "SWEEP_MICRO_BATCHES": "1,64", "SWEEP_TRAIN_SIZE": "1024",
                    "SWEEP_EPOCHS": "1", "SWEEP_SEEDS": "1", "LR_TEST_SEEDS": "1", "LR_TEST_TRAIN_SIZE": "1024",
                    "GROUP_COUNTS": "1,4", "GROUP_EPOCHS": "1", "GROUP_SEEDS": "1", "GROUP_TRAIN_SIZE": "1024"}.items():
    os.environ.setdefault(name, value)
os.environ["OUTPUT_DIR"] = tempfile.mkdtemp(prefix="bn-ln-gn-test-")
os.environ["RUNS_DIR"] = tempfile.mkdtemp(prefix="bn-ln-gn-runs-")
