"""A result's provenance grown by what its caller knows: on a new result, never on one already built.

The measurement writes what it ran on and with (``measure.gains.run_provenance``); a command or a
sweep knows more (where the prompts came from, the hub revision, the seconds a model took) and
adds it here, to a copy: a result handed out is never changed under its holder.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

Result = TypeVar("Result")


def with_provenance(result: Result, **entries: Any) -> Result:
    """A copy of ``result`` (a ``GainResult``, ``HeadResult`` or ``EffectResult``) whose provenance
    also holds ``entries``; an entry of the same key replaces the measurement's.

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Measured:
    ...     provenance: dict = field(default_factory=dict)
    >>> first = Measured({"device": "cpu"})
    >>> second = with_provenance(first, revision="step1000")
    >>> first.provenance, second.provenance
    ({'device': 'cpu'}, {'device': 'cpu', 'revision': 'step1000'})
    """
    provenance = dict(result.provenance)  # type: ignore[attr-defined]  # every result type carries one
    provenance.update(entries)
    return dataclasses.replace(result, provenance=provenance)  # type: ignore[type-var]
