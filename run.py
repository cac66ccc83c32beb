"""Execute experiments.ipynb as "Run all" does and save it with its outputs; a line per cell as it finishes.

On an error, the first thing printed is the reason (the error's one-line message, e.g. where to put MNIST), then the
cell it came from, not a page of Jupyter's own traceback; the notebook is then left as it was. Parameters come from
the environment as in the notebook; --small sets the tiny size the test suite runs the notebook at and writes
everything under small/ (the notebook, its images and its run store), a run of a few minutes.
Usage: python run.py [--output experiments.ipynb] [--small]
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK = Path(__file__).resolve().parent / "experiments.ipynb"
SMALL = {  # one epoch and one seed for the main study, the regularizer and the control runs; the sweep, range tests,
    # groups, the control's learning rates and the budgets on about 1,000 images
    "EPOCHS": "1", "SEEDS": "1", "SWEEP_MICRO_BATCHES": "1,64", "SWEEP_TRAIN_SIZE": "1024", "SWEEP_EPOCHS": "1",
    "SWEEP_SEEDS": "1", "LR_TEST_SEEDS": "1", "LR_TEST_TRAIN_SIZE": "1024", "GROUP_COUNTS": "1,4", "GROUP_EPOCHS": "1",
    "GROUP_SEEDS": "1", "GROUP_TRAIN_SIZE": "1024", "CONTROL_LRS": "0.05,0.1", "CONTROL_LR_EPOCHS": "1",
    "CONTROL_SEEDS": "1", "VALIDATION_SIZE": "59000", "BUDGET_EPOCHS": "2", "BUDGET_SEEDS": "1",
    "BUDGET_TRAIN_SIZE": "1024"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help="where to write the executed notebook (default: in place)")
    parser.add_argument("--small", action="store_true", help="the tiny size of the tests, into small/")
    args = parser.parse_args(argv)
    if args.small:  # the kernel inherits this environment
        small = NOTEBOOK.parent / "small"
        os.environ.update({**SMALL, "OUTPUT_DIR": str(small / "images"), "RUNS_DIR": str(small / "runs")})
    args.output = args.output or str(NOTEBOOK.parent / "small" / NOTEBOOK.name if args.small else NOTEBOOK)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    start = time.perf_counter()

    def done(cell, cell_index, **_):
        if not any(output.get("output_type") == "error" for output in cell.get("outputs", [])):  # reported below
            print(f"cell {code.index(cell_index) + 1}/{len(code)} ran, {time.perf_counter() - start:.0f} s", flush=True)

    client = NotebookClient(notebook, timeout=None, kernel_name="python3", on_cell_executed=done,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute(stderr=subprocess.DEVNULL)  # the kernel process's own notices; cells' output is kept
    except CellExecutionError as error:
        failed = next(i for i in code if any(o.get("output_type") == "error" for o in notebook.cells[i].outputs))
        print(f"{error.ename}: {error.evalue}\n\n(cell {code.index(failed) + 1}/{len(code)} failed; {args.output} was "
              f"not written)\n{notebook.cells[failed].source}", file=sys.stderr)
        return 1
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(settled(notebook), args.output)
    print(f"executed in {time.perf_counter() - start:.0f} s: {args.output}")
    return 0


def settled(notebook):
    """The executed notebook without what differs between two executions of the same runs: execution timestamps, and
    the chunks a cell's printed text happened to arrive in (each cell's consecutive stream outputs joined into one)."""
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        outputs = []
        for output in cell.get("outputs", []):
            if (output.output_type == "stream" and outputs and outputs[-1].output_type == "stream"
                    and outputs[-1].name == output.name):
                outputs[-1].text += output.text
            else:
                outputs.append(output)
        if cell.cell_type == "code":
            cell.outputs = outputs
    return notebook


if __name__ == "__main__":
    sys.exit(main())
