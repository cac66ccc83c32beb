"""Test-run settings: the notebook under nbval trains for one epoch and writes into a temporary folder.

The kernel that nbval starts inherits this process's environment, so these variables reach the notebook's
parameters cell. OUTPUT_DIR is always replaced: a test run must never write over the committed images/.
"""
import os
import tempfile

os.environ.setdefault("EPOCHS", "1")
os.environ["OUTPUT_DIR"] = tempfile.mkdtemp(prefix="bn-ln-gn-test-")
