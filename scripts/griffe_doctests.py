"""A griffe extension for the docs site: doctest examples in docstrings rendered as code.

funnel_tl's docstrings carry bare doctests (``>>> ...`` lines and their output, run by
tests/test_docstrings.py). Markdown reads ``>>>`` as three nested quotes; this wraps each run of
doctest lines in a ``pycon`` fence, once, when griffe loads the object, so the API reference shows
them as code. Named in mkdocs.yml under the python handler's ``extensions``.
"""

from __future__ import annotations

import re

import griffe

_PROMPT = re.compile(r"^(\s*)>>> ")
_FLAG = re.compile(r"\s*# doctest:.*$")


def fence_doctests(text: str) -> str:
    """Each doctest (a ``>>>`` line, its ``...`` continuations and output up to a blank line) fenced, flags dropped."""
    lines, out, index = text.splitlines(), [], 0
    while index < len(lines):
        match = _PROMPT.match(lines[index])
        if not match:
            out.append(lines[index])
            index += 1
            continue
        indent, block = match.group(1), []
        while index < len(lines) and lines[index].strip():
            block.append(_FLAG.sub("", lines[index]))  # the flags are for the test runner
            index += 1
        out += [f"{indent}```pycon", *block, f"{indent}```"]
    return "\n".join(out)


class FencedDoctests(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ">>> " in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
