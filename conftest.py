"""Test-run settings: the notebook under nbval runs at a tiny size and writes into a temporary folder.

The kernel that nbval starts inherits this process's environment, so these variables reach the notebook's
parameters cell: one epoch and one seed for the main study and the regularizer runs, and a sweep of two micro-batch
sizes on 1,024 training images, one small range test per network and two GroupNorm runs on 1,024 images. OUTPUT_DIR
and RUNS_DIR are always replaced: a test run must never write over the committed images/ nor read or write the
committed run store runs/. They, pytest's own temporary folders and every other temporary file of the run (the
kernels' connection files, in this process and in the run.py processes the tests start) live in one folder that is
removed at the end.
"""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

from run import SMALL

for name, value in SMALL.items():  # run.py --small: the same tiny size
    os.environ.setdefault(name, value)
TEST_FOLDER = Path(tempfile.mkdtemp(prefix="bn-ln-gn-test-"))
atexit.register(shutil.rmtree, TEST_FOLDER, ignore_errors=True)
(TEST_FOLDER / "tmp").mkdir()
os.environ["TMPDIR"] = tempfile.tempdir = str(TEST_FOLDER / "tmp")
os.environ["OUTPUT_DIR"] = str(TEST_FOLDER / "images")
os.environ["RUNS_DIR"] = str(TEST_FOLDER / "runs")


def pytest_configure(config):
    if not config.option.basetemp:
        config.option.basetemp = str(TEST_FOLDER / "pytest")  # tmp_path folders too, instead of /tmp/pytest-of-*
