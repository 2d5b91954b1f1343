"""The package's layout as the architecture it claims: subpackages that read as the pipeline, no
import cycle, no module too long to read, no private name shared across modules (issue 24).

Read from the source with ``ast``, nothing imported: a cycle hidden behind a function-local
import counts as one (only ``if TYPE_CHECKING:`` imports are left out: they never run).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "funnel_tl"
SUBPACKAGES = {"models", "prompts", "measure", "results", "analysis", "plots", "sweep", "cli", "testing"}
# The top level: the package, its `python -m`, and the two small modules every subpackage shares.
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py", "components.py"}
# A module a reader takes in at one sitting; past it, a module holds more than one concept.
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def type_checking_nodes(tree: ast.Module) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def imports(name: str) -> set[str]:
    """The package modules ``name`` imports anywhere in its body (function-local ones included)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {module for module in found if module in MODULES and module != name}


def test_no_import_cycle():
    graph = {name: imports(name) for name in MODULES}
    done, on_path = set(), []

    def visit(name: str) -> None:
        on_path.append(name)
        for dependency in sorted(graph[name]):
            if dependency in on_path:
                cycle = on_path[on_path.index(dependency) :] + [dependency]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dependency not in done:
                visit(dependency)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name)
    assert len(graph) > 40  # the walk found the subpackages' modules, not only the top level


def test_no_module_over_600_lines():
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_the_top_level_holds_only_subpackages_and_shared_modules():
    files = {path.name for path in PACKAGE.glob("*.py")}
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert files == TOP_LEVEL
    assert folders == SUBPACKAGES
    for folder in folders:
        init = PACKAGE / folder / "__init__.py"
        assert init.is_file(), folder
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{folder}/__init__.py says its concern"


def test_runtime_code_never_imports_the_test_helpers():
    """funnel_tl.testing (the seed's reference method, toy checkpoints) is for tests, benchmarks
    and notebooks: a measurement that imported it could lean on the reference it is checked by."""
    runtime = [name for name in MODULES if name.split(".")[1:2] != ["testing"]]
    leaning = {name: sorted(m for m in imports(name) if m.startswith("funnel_tl.testing")) for name in runtime}
    assert {name: found for name, found in leaning.items() if found} == {}
    assert any(m.startswith("funnel_tl.testing.") for m in MODULES)  # the walk sees the subpackage


def test_no_private_name_is_imported_across_modules():
    shared = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("funnel_tl")):
                shared += [
                    f"{name}: {alias.name} from {node.module}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert shared == []


@pytest.mark.parametrize("subpackage", sorted(SUBPACKAGES))
def test_every_subpackage_reexports_its_public_names(subpackage):
    package = importlib.import_module(f"funnel_tl.{subpackage}")
    assert package.__all__, subpackage
    for name in package.__all__:
        assert getattr(package, name) is not None, f"funnel_tl.{subpackage}.{name}"


def test_top_level_exports_point_at_their_homes():
    """Each lazy export names the module that defines it, and the TYPE_CHECKING block imports every one
    (type checkers and the API reference read that block; the lazy table is what runs)."""
    import funnel_tl

    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    checked = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for alias in statement.names
    }
    assert checked == set(funnel_tl._EXPORTS) == set(funnel_tl.__all__)
    for name, home in funnel_tl._EXPORTS.items():
        value = getattr(funnel_tl, name)
        assert not callable(value) or value.__module__ == f"funnel_tl.{home}", name  # constants have no __module__


def function_local_imports_without_a_reason() -> list[str]:
    """Imports inside a function with no comment saying why: a comment on the line just above its
    block of consecutive imports (``# Imported on use: keeps torch out of --help``) or within it."""
    found = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        bodies = [
            getattr(node, field)
            for function in functions
            for node in ast.walk(function)
            for field in ("body", "orelse", "finalbody", "handlers")
            if isinstance(getattr(node, field, None), list)
        ]
        for body in bodies:
            block: list[ast.stmt] = []
            for statement in [*body, None]:
                if isinstance(statement, (ast.Import, ast.ImportFrom)):
                    block.append(statement)
                    continue
                if block:
                    text = lines[block[0].lineno - 2 : block[-1].end_lineno]  # the line above, and the block
                    if not any("#" in line for line in text):
                        found += [f"{name}:{node.lineno}: {lines[node.lineno - 1].strip()}" for node in block]
                block = []
    return sorted(set(found))


def test_every_function_local_import_says_why():
    """Issue 24: a function-local import only where it buys something (import time, an optional
    dependency, a test's patch point), each with its reason; the rest belong at the top."""
    missing = function_local_imports_without_a_reason()
    assert not missing, "function-local imports without a reason:\n" + "\n".join(missing)


# The functions that build a bridge, and may give it its funnel_* attributes before returning it.
BRIDGE_BUILDERS = {"funnel_tl.models.loading", "funnel_tl.models.huggingface"}


def test_nothing_is_changed_after_it_was_built():
    """Issue 24: results and TransformerLens objects are built complete. A result's provenance is
    never written into (``x.provenance[...] = ``, ``x.provenance.update(...)``: a command or sweep
    adds to a copy, ``results.provenance.with_provenance``), and a model gets its ``funnel_*``
    attributes only where funnel_tl builds it (the sweep once renamed the user's model)."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.value, ast.Attribute)
                    and target.value.attr == "provenance"
                ):
                    found.append(f"{name}:{node.lineno}: {ast.unparse(target)} =")
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr.startswith("funnel_")
                    and name not in BRIDGE_BUILDERS
                ):
                    found.append(f"{name}:{node.lineno}: {ast.unparse(target)} =")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("update", "setdefault", "pop")
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "provenance"
            ):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node.func)}(...)")
    assert found == []
