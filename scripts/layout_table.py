"""The package layout table (module or subpackage → concern), generated from the tree.

Walks ``funnel_tl/`` recursively and reads, without importing anything, the summary (the first
paragraph) of each module's and each subpackage's docstring; a data folder (no ``__init__.py``)
is described by the first line of its README.md, or else by the folders it holds. The docs page
``docs/layout.md`` shows the result: mkdocs.yml names this file as a hook, and ``on_page_markdown``
replaces the marker line ``<!-- LAYOUT_TABLE -->`` with the table, so the table cannot drift from
the tree (no hand-written copy exists). ``python scripts/layout_table.py`` prints it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

MARKER = "<!-- LAYOUT_TABLE -->"
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "funnel_tl"
SKIPPED = {"__pycache__"}


def _summary(docstring: str | None) -> str:
    """The first paragraph of a docstring on one line, reST literals as Markdown code."""
    if not docstring:
        return ""
    paragraph = docstring.strip().split("\n\n")[0]
    return re.sub(r"``([^`]+)``", r"`\1`", " ".join(line.strip() for line in paragraph.splitlines()))


def _module_summary(path: Path) -> str:
    return _summary(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))))


def _folder_summary(folder: Path) -> str:
    readme = folder / "README.md"
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.strip():
                return line.lstrip("# ").strip()
    held = sorted(child.name for child in folder.iterdir() if child.is_dir() and child.name not in SKIPPED)
    return "data: " + ", ".join(f"`{name}/`" for name in held) if held else "data"


def rows(package: Path = PACKAGE) -> list[tuple[str, str]]:
    """(path relative to the repository, concern) for every module, subpackage and data folder under package."""
    found: list[tuple[str, str]] = []

    def walk(folder: Path) -> None:
        for child in sorted(folder.iterdir()):
            name = child.relative_to(package.parent).as_posix()
            if child.name in SKIPPED or child.name.startswith("."):
                continue
            if child.is_file() and child.suffix == ".py" and child.name != "__init__.py":
                found.append((name, _module_summary(child)))
            elif child.is_dir() and (child / "__init__.py").is_file():
                found.append((name + "/", _module_summary(child / "__init__.py")))
                walk(child)
            elif child.is_dir() and any(child.iterdir()):
                found.append((name + "/", _folder_summary(child)))

    found.append((package.name + "/", _module_summary(package / "__init__.py")))
    walk(package)
    return found


def table(package: Path = PACKAGE) -> str:
    """The layout as a Markdown table."""
    lines = ["| module | concern |", "|---|---|"]
    lines += [f"| `{name}` | {concern.replace('|', '&#124;')} |" for name, concern in rows(package)]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, **kwargs) -> str:
    """mkdocs hook: the marker line becomes the table generated from the tree."""
    return markdown.replace(MARKER, table()) if MARKER in markdown else markdown


if __name__ == "__main__":
    print(table(), end="")
