"""The tutorial (docs/tutorial.ipynb) runs top to bottom in a fresh kernel, within its budget, and every
section's figure comes from its executed cells (the committed notebook carries no outputs)."""

from pathlib import Path

import nbformat
import pytest
import run_tutorial

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = 9
BUDGET_SECONDS = 600  # the limit on a 2-core CPU; it takes about two minutes


def _images_per_section(notebook) -> dict[int, int]:
    """PNG outputs under each numbered section heading (``## N. ...``)."""
    counts, section = {}, 0
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("## ") and line[3:].split(".")[0].isdigit():
                    section = int(line[3:].split(".")[0])
                    counts.setdefault(section, 0)
        elif section:
            counts[section] += sum("image/png" in output.get("data", {}) for output in cell.outputs)
    return counts


def test_committed_tutorial_has_no_outputs():
    notebook = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    stale = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not stale, f"code cells {stale} carry outputs: clear them before committing (see the README)"
    assert sorted(_images_per_section(notebook)) == list(range(1, SECTIONS + 1))


@pytest.mark.slow
def test_tutorial_executes_with_a_figure_in_every_section(tmp_path):
    notebook, seconds = run_tutorial.execute(tmp_path / "tutorial.ipynb", work=tmp_path / "work", use_demo=False)
    assert seconds < BUDGET_SECONDS
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors
    stderr = [output.text for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "stream" and output.name == "stderr"]
    assert not stderr, f"the tutorial wrote to stderr: {stderr}"
    counts = _images_per_section(notebook)
    assert all(counts[section] >= 1 for section in range(1, SECTIONS + 1)), counts
    assert (tmp_path / "work" / "digits" / "checkpoints").is_dir()  # trained here, not taken from demo/
    assert (tmp_path / "tutorial.ipynb").is_file()
