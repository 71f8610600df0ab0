"""The API reference: every public name has a docstring, and pdoc renders the package without a warning."""

import re
import sys
import textwrap

import build_api
import pytest


def test_every_public_name_has_a_docstring():
    assert build_api.missing_docstrings() == []


def test_a_missing_docstring_fails_the_build(tmp_path, monkeypatch):
    package = tmp_path / "undocumented"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "shapes.py").write_text(textwrap.dedent('''
        """Shapes."""


        def area(r):
            return 3.14 * r * r


        class Square:
            """A square."""

            def side(self):
                return 1.0

            def _private(self):
                return 0
        '''))
    (package / "_hidden.py").write_text("def internal():\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "undocumented", raising=False)
    assert build_api.missing_docstrings("undocumented") == ["undocumented.shapes.area",
                                                             "undocumented.shapes.Square.side"]
    with pytest.raises(RuntimeError, match="without a docstring: undocumented.shapes.area"):
        build_api.build(tmp_path / "api", "undocumented")


def test_api_reference_builds_without_warnings_with_math(tmp_path):
    out = build_api.build(tmp_path / "api")
    pages = {path.relative_to(out).with_suffix("").as_posix().replace("/", ".") for path in out.rglob("*.html")}
    missing = [name for name in build_api.public_modules() if name not in pages]
    assert not missing, f"modules without a page: {missing}"
    losses = (out / "ncsn" / "losses.html").read_text()
    assert "MathJax" in losses and "$$" in losses and r"\nabla_x" in losses
    docstrings = re.findall(r'<div class="docstring">(.*?)</div>', losses, flags=re.S)
    assert len(docstrings) > 6 and not any(":math:" in text for text in docstrings)  # rendered, not left as reST
    for name in ("explicit_sm", "exact_sm", "sliced_sm", "dsm", "ncsn_loss", "ddpm_loss"):
        assert f'id="{name}"' in losses
