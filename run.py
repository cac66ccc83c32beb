"""Execute experiments.ipynb as "Run all" does and save it with its outputs; a line per cell as it finishes.

On an error, the first thing printed is the reason (the error's one-line message, e.g. where to put MNIST), then the
cell it came from, not a page of Jupyter's own traceback; the notebook is then left as it was. Parameters come from
the environment as in the notebook.
Usage: python run.py [--output experiments.ipynb]
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK = Path(__file__).resolve().parent / "experiments.ipynb"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(NOTEBOOK), help="where to write the executed notebook")
    args = parser.parse_args(argv)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    start = time.perf_counter()

    def done(cell, cell_index, **_):
        print(f"cell {code.index(cell_index) + 1}/{len(code)} ran, {time.perf_counter() - start:.0f} s", flush=True)

    client = NotebookClient(notebook, timeout=None, kernel_name="python3", on_cell_executed=done,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute(stderr=subprocess.DEVNULL)  # the kernel process's own notices; cells' output is kept
    except CellExecutionError as error:
        failed = next(i for i in code if any(o.get("output_type") == "error" for o in notebook.cells[i].outputs))
        print(f"{error.ename}: {error.evalue}\n\n(in cell {code.index(failed) + 1}/{len(code)}; {args.output} was "
              f"not written)\n{notebook.cells[failed].source}", file=sys.stderr)
        return 1
    nbformat.write(notebook, args.output)
    print(f"executed in {time.perf_counter() - start:.0f} s: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
