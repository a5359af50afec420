"""Which of the package's source files a module runs: its import closure inside ``textclf``.

One answer to "what code decides this stage's output", used twice: tests/test_dvc_yaml.py checks
that each dvc.yaml stage's deps cover its closure (so DVC re-runs a stage whenever code it uses
changes), and the train stage fingerprints its closure (so a checkpoint written by other code is
never resumed). Imports are read from the source (every ``import`` statement, those inside
functions included), not executed, so nothing heavy is loaded to answer.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "textclf"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def import_closure(module: str) -> tuple[Path, ...]:
    """Sorted source files of ``module`` and every package module it imports, transitively.

    A package's ``__init__.py`` is included when it holds code: importing a submodule runs it.
    One that holds only its docstring runs nothing and is left out.
    """
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(_imports_of(name))
    files = {_source(name) for name in seen}
    return tuple(sorted(path for path in files if path is not None and _runs_code(path)))


@functools.cache
def _imports_of(module: str) -> tuple[str, ...]:
    path = _source(module)
    if path is None:
        return ()
    found: list[str] = []
    parts = module.split(".")
    if len(parts) > 1:
        found.append(".".join(parts[:-1]))  # importing a submodule imports its package first
    package = module if path.name == "__init__.py" else ".".join(parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append(base)
            # `from textclf.x import y` may name a submodule y as well as an attribute.
            found.extend(f"{base}.{alias.name}" for alias in node.names)
    return tuple(name for name in found
                 if name.split(".")[0] == PACKAGE and _source(name) is not None)


@functools.cache
def _source(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runs_code(path: Path) -> bool:
    if path.name != "__init__.py":
        return True
    body = ast.parse(path.read_text(encoding="utf-8")).body
    first = body[0] if body else None
    docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                 and isinstance(first.value.value, str))
    return len(body) > (1 if docstring else 0)
