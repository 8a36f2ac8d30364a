"""The package's layout: no import cycles, and a protocol core without I/O.

The imports are read from the source (every ``import`` anywhere in a module,
function-local ones included, except those under ``if TYPE_CHECKING:``,
which never run), so a cycle cannot hide in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "trio_dtlsmux"

#: The protocol core: code that does no I/O and reads no clock. It may use
#: the exceptions (_errors subclasses Trio's, so errors speak Trio) but
#: nothing else of Trio, and no socket.
CORE = {
    "_addresses",
    "_association",
    "_config",
    "_cookies",
    "_demux",
    "_events",
    "_reassembly",
    "_sessions",
    "_psk",
    "_recordio",
    "_records",
    "_statistics",
    "_waiting",
    "_identity",
    "_verification",
    "contexts",
}
CORE_MAY_ALSO_USE = {"_errors"}
IO_MODULES = {"trio", "socket", "selectors", "asyncio", "threading"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(modules of this package, other top-level modules) that ``module`` imports."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(), filename=module)
    internal: set[str] = set()
    external: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("trio_dtlsmux."):
                    internal.add(alias.name.split(".")[1])
                else:
                    external.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                name = node.module or ""
                if name.startswith("trio_dtlsmux."):
                    internal.add(name.split(".")[1])
                elif name == "trio_dtlsmux":
                    internal.update(alias.name for alias in node.names)
                else:
                    external.add(name.split(".")[0])
            elif node.module:
                internal.add(node.module.split(".")[0])
            else:  # from . import x
                internal.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    modules = all_modules()
    internal &= modules | {"__init__"}
    internal.discard(module)
    return internal, external


def all_modules() -> set[str]:
    return {path.stem for path in PACKAGE.glob("*.py")}


def test_the_core_modules_exist() -> None:
    assert all_modules() >= CORE | CORE_MAY_ALSO_USE


def test_no_import_cycles() -> None:
    graph = {module: imports_of(module)[0] for module in all_modules()}
    # __init__ imports everything public; a module that imports the package
    # itself (``from . import __version__``) is fine as long as the package
    # does not import it back.
    done: set[str] = set()
    path: list[str] = []

    def walk(module: str) -> None:
        if module in done:
            return
        if module in path:
            cycle = [*path[path.index(module):], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        path.append(module)
        for target in sorted(graph.get(module, ())):
            walk(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        walk(module)


@pytest.mark.parametrize("module", sorted(CORE))
def test_the_core_does_no_io(module: str) -> None:
    internal, external = imports_of(module)
    assert not external & IO_MODULES, f"{module} imports {external & IO_MODULES}"
    assert internal <= CORE | CORE_MAY_ALSO_USE, (
        f"{module} imports {internal - CORE - CORE_MAY_ALSO_USE}, outside the core"
    )


def test_the_connection_does_not_know_the_endpoint() -> None:
    internal, _ = imports_of("_connection")
    assert "_endpoint" not in internal


def test_the_command_line_modules_do_not_import_each_other() -> None:
    assert "_cli" not in imports_of("_demo")[0]
    assert "_demo" not in imports_of("_console")[0]


def test_the_walker_sees_cycles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The test above can fail: a made-up package with a cycle through a
    # function-local import is caught; a TYPE_CHECKING import is not a cycle.
    (tmp_path / "_a.py").write_text("from ._b import x\n")
    (tmp_path / "_b.py").write_text("def f():\n    from . import _a\n")
    (tmp_path / "_c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._a import y\n"
    )
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path)
    assert imports_of("_b")[0] == {"_a"}
    assert imports_of("_c")[0] == set()
    with pytest.raises(pytest.fail.Exception, match="_a -> _b -> _a"):
        test_no_import_cycles()
