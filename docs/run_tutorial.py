"""Execute the tutorial (docs/tutorial.ipynb) top to bottom in a fresh kernel and write the executed copy.

    python docs/run_tutorial.py [OUT] [--no-demo]     (default OUT: build/tutorial.ipynb; ``make tutorial``)

The committed notebook carries no outputs; the executed copy, with every figure, goes to OUT (``build/``
is not tracked). The kernel runs in ``docs/``, as when the notebook is opened there, and is this
interpreter's. A ``make demo`` run in ``demo/`` is sampled instead of the notebook's short training
unless ``--no-demo`` is given. An error in any cell stops the run with the cell and its traceback
(exit status 1).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.ipynb"
TIMEOUT = 600  # seconds per cell


def execute(out: str | Path | None = None, work: str | Path | None = None, use_demo: bool = True,
            timeout: int = TIMEOUT):
    """Run every cell of the tutorial; returns ``(notebook, seconds)`` and writes it to ``out`` when given.

    ``work`` is where the notebook writes its files (``$NCSN_TUTORIAL_WORK``; default ``build/tutorial``).
    """
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(TUTORIAL, as_version=4)
    env = dict(os.environ, NCSN_TUTORIAL_DEMO="1" if use_demo else "0")
    if work is not None:
        env["NCSN_TUTORIAL_WORK"] = str(work)
    # the kernel's own log would only warn that it talks over local TCP without encryption
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(TUTORIAL.parent)}})
    start = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - start
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out)
    return notebook, seconds


def main(argv: list[str]) -> int:
    from nbclient.exceptions import CellExecutionError

    use_demo = "--no-demo" not in argv
    paths = [a for a in argv if a != "--no-demo"]
    out = Path(paths[0]) if paths else ROOT / "build" / "tutorial.ipynb"
    try:
        _, seconds = execute(out, use_demo=use_demo)
    except CellExecutionError as err:
        print(f"tutorial: a cell failed\n{err}", file=sys.stderr)
        return 1
    print(f"tutorial executed in {seconds:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
