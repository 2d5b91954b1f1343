"""The text the bundled models were trained on: English every CPython install already has.

Two sources, both read from the running interpreter (so the text depends on its version, which
the bundled model cards record):

- ``pydoc_data.topics``: the documentation topics behind ``help()`` (≈465 KB), one document per
  topic, named ``topics/<key>``;
- the standard library's docstrings, read with ``ast`` from the ``.py`` sources (nothing is
  imported, so no module's import side effects run), one document per source file, named
  ``stdlib/<relative path>``; each docstring is preceded by the dotted name it documents.

Held-out split: a document is held out when the sha256 of its *name*, read as a fraction of
2**64, is below ``HELDOUT_THRESHOLD``. The threshold was set once, on CPython 3.11.7, where it
holds out 5.1% of the characters (52 of 719 documents). Deciding by a fixed threshold on the
name, not by position or size, keeps the split stable when another Python version adds or removes
modules: a document held out here is held out everywhere, so an evaluation on another version
never scores text the bundled models were trained on.
Identical docstrings (``Return self+value.``) are kept once, in the first document in sorted
order, so no docstring is in both splits.

>>> names = [name for name, _ in documents("heldout")]
>>> all(is_heldout(name) for name in names)
True
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import sysconfig
from pathlib import Path

# Test suites, generated data and bundled wheels: not prose, and some are not valid Python 3.
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "_bundled"})

# Between the name-hash fractions of stdlib/ipaddress.py (0.06302, the last document held out) and
# the next document (0.06334) on CPython 3.11.7: the smallest threshold holding out >= 5% of the text.
HELDOUT_THRESHOLD = 0.0632


def is_heldout(name: str) -> bool:
    """Whether the document called ``name`` belongs to the held-out split (by its name's hash).

    >>> is_heldout("topics/assert") in (True, False)
    True
    """
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_THRESHOLD


def _docstrings(path: Path, module: str) -> list[tuple[str, str]]:
    """(dotted name, cleaned docstring) of a module and every class and function in it, in source order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    found = []

    def visit(node, prefix):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            found.append((prefix, doc))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{prefix}.{child.name}")

    visit(tree, module)
    return found


@functools.lru_cache(maxsize=1)
def _all_documents() -> tuple[tuple[str, str], ...]:
    # Imported on use: Python's documentation topics are ~1 MB of text, read only when this corpus is asked for.
    from pydoc_data.topics import topics

    docs = [(f"topics/{key}", topics[key]) for key in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set(text for _, text in docs)
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith("config-"))
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            path = Path(directory) / file
            relative = path.relative_to(root).as_posix()
            module = relative[: -len(".py")].replace("/", ".").removesuffix(".__init__")
            blocks = []
            for dotted, doc in _docstrings(path, module):
                if doc in seen:
                    continue
                seen.add(doc)
                blocks.append(f"{dotted}\n{doc}")
            if blocks:
                docs.append((f"stdlib/{relative}", "\n\n".join(blocks)))
    return tuple(docs)


def documents(split: str = "all") -> list[tuple[str, str]]:
    """(name, text) of every document of ``split``: ``"train"``, ``"heldout"`` or ``"all"``, in a fixed order."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown split {split!r}: choose train, heldout or all")
    docs = _all_documents()
    if split == "all":
        return list(docs)
    want = split == "heldout"
    return [(name, text) for name, text in docs if is_heldout(name) == want]
