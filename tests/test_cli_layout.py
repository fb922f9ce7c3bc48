"""The CLI stays thin: no zmq in enrgdaq_cli, and no subcommand module imports another.

Read from the source (AST), so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parent.parent / "src" / "enrgdaq_cli"
SHARED = {"enrgdaq_cli._common", "enrgdaq_cli.main", "enrgdaq_cli"}  # what any module may use
MODULES = sorted(p for p in CLI.glob("*.py") if p.name != "__init__.py")


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (`from a import b` gives a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against enrgdaq_cli
                base = "enrgdaq_cli" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _subcommands() -> set[str]:
    return {f"enrgdaq_cli.{p.stem}" for p in MODULES} - SHARED


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("def f():\n    import zmq.asyncio\n    from . import tap\n")
    assert {"zmq.asyncio", "enrgdaq_cli.tap"} <= _imports(p)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_cli_module_imports_zmq(path: Path) -> None:
    bad = sorted(m for m in _imports(path) if m == "zmq" or m.startswith("zmq."))
    assert not bad, f"{path.name} imports {bad}: sockets belong in enrgdaq_core"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_subcommand_module_imports_another(path: Path) -> None:
    me = f"enrgdaq_cli.{path.stem}"
    if me == "enrgdaq_cli.main":
        return  # the app registers every subcommand
    others = _subcommands() - {me}
    bad = sorted(m for m in _imports(path) if m in others)
    assert not bad, f"{path.name} imports {bad}: shared code goes in _common or the core"
