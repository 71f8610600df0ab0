"""Build the API reference of the ``ncsn`` package with pdoc, and check that it is complete.

    python docs/build_api.py [OUT]      (default OUT: build/api; ``make docs``)

Two checks, either of which fails the build (exit status 1):

* every public module, function, class, method and property of ``ncsn`` (names without a leading
  underscore, in modules whose path has none) has a docstring: :func:`missing_docstrings`;
* pdoc renders the whole package without a single warning (warnings are turned into errors).

Docstrings are reStructuredText: ``:func:`` and ``:class:`` roles become links, and ``:math:`...```
and ``.. math::`` blocks are rendered by MathJax (pdoc's ``--math``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import warnings
from pathlib import Path

PACKAGE = "ncsn"


def public_modules(package: str = PACKAGE) -> list[str]:
    """The importable names of ``package`` and of every submodule without a private part (``_name``)."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def _members(cls: type):
    """Public methods and properties defined in the body of ``cls`` (inherited docstrings count)."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            yield name, getattr(cls, name) if inspect.isfunction(value) else value


def missing_docstrings(package: str = PACKAGE) -> list[str]:
    """Qualified names of the public modules, functions, classes, methods and properties without a docstring."""
    missing = []
    for module_name in public_modules(package):
        module = importlib.import_module(module_name)
        if not (module.__doc__ or "").strip():
            missing.append(module_name)
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module_name:
                continue
            if not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            if not (value.__doc__ or "").strip():  # a class's own docstring, not a base class's
                missing.append(f"{module_name}.{name}")
            if inspect.isclass(value):
                missing += [f"{module_name}.{name}.{member}" for member, obj in _members(value)
                            if not (inspect.getdoc(obj) or "").strip()]
    return missing


def _resolve_lazy_exports(module_names: list[str]) -> None:
    """Bind names a package exports lazily (through a module ``__getattr__``), so pdoc finds them in ``__all__``."""
    for module_name in module_names:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            if name not in vars(module):
                setattr(module, name, getattr(module, name))


def build(out: str | Path, package: str = PACKAGE) -> Path:
    """Render the HTML reference of ``package`` into ``out`` (pdoc, reStructuredText docstrings, MathJax math).

    Raises ``RuntimeError`` naming what lacks a docstring, and turns any warning pdoc emits into an error.
    """
    import pdoc
    import pdoc.extract
    import pdoc.render

    missing = missing_docstrings(package)
    if missing:
        raise RuntimeError(f"{len(missing)} public name(s) without a docstring: {', '.join(missing)}")
    modules = public_modules(package)
    _resolve_lazy_exports(modules)
    out = Path(out)
    pdoc.render.configure(docformat="restructuredtext", math=True, show_source=True,
                          footer_text=f"{package} API reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # pdoc walks only the submodules a package's __all__ names (ncsn.sampling's names none): add the others
        walked = set(pdoc.extract.walk_specs([package]))
        pdoc.pdoc(package, *[name for name in modules if name not in walked], output_directory=out)
    return out


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "build" / "api"
    try:
        build(out)
    except (RuntimeError, Warning) as err:
        print(f"docs: {err}", file=sys.stderr)
        return 1
    print(f"API reference written to {out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
