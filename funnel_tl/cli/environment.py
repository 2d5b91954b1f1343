"""The ``FUNNEL_TL_*`` environment variables: one table, each read and checked here.

``VARIABLES`` names every variable funnel_tl reads and how its value is checked. The CLI calls
``check()`` before anything loads, so a bad value (or a misspelt name) is one line and exit 2
instead of a ValueError deep inside a torchrun job; the code that uses a value reads it through
``value(name)``, checked the same way.

>>> value("FUNNEL_TL_TIMEOUT_MINUTES", {"FUNNEL_TL_TIMEOUT_MINUTES": "90"})
90.0
>>> value("FUNNEL_TL_TIMEOUT_MINUTES", {"FUNNEL_TL_TIMEOUT_MINUTES": "soon"})
Traceback (most recent call last):
funnel_tl.errors.FunnelError: FUNNEL_TL_TIMEOUT_MINUTES='soon' is not a number of minutes: give one above 0 and at most 525600 (a year), or unset it
"""  # noqa: E501 -- a doctest expects the whole exception message on one line

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from funnel_tl.errors import FunnelError

PREFIX = "FUNNEL_TL_"
# How long a collective waits for the slowest rank under torchrun, when the variable is unset:
# a sweep's ranks wait at the end for the rank with the most work, which on a Pythia sweep is hours.
DEFAULT_TIMEOUT_MINUTES = 24 * 60
MAX_TIMEOUT_MINUTES = 365 * 24 * 60


def _minutes(name: str, text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and 0 < minutes <= MAX_TIMEOUT_MINUTES):
        raise FunnelError(
            f"{name}={text!r} is not a number of minutes: give one above 0 and at most "
            f"{MAX_TIMEOUT_MINUTES} (a year), or unset it"
        )
    return minutes


def _folder(name: str, text: str) -> Path | None:
    if not text:
        return None  # empty counts as unset
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise FunnelError(f"{name}={text!r} is a file, not a folder: give a folder for funnel_tl's cache, or unset it")
    return path


# name -> (parse(name, text) -> value, the value when unset, what it is for)
VARIABLES: dict[str, tuple[Callable[[str, str], Any], Any, str]] = {
    "FUNNEL_TL_TIMEOUT_MINUTES": (
        _minutes,
        float(DEFAULT_TIMEOUT_MINUTES),
        "minutes a torchrun collective waits for the slowest rank",
    ),
    "FUNNEL_TL_CACHE": (_folder, None, "where models fetched from PyPI are kept (funnel_tl.models.pypi)"),
}


def value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The checked value of variable ``name`` (its default when unset); a bad one is a FunnelError."""
    environ = os.environ if environ is None else environ
    parse, default, _ = VARIABLES[name]
    return default if name not in environ else parse(name, environ[name])


def check(environ: Mapping[str, str] | None = None) -> None:
    """Every ``FUNNEL_TL_*`` variable set: a known name, with a good value."""
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        if not name.startswith(PREFIX):
            continue
        if name not in VARIABLES:
            raise FunnelError(
                f"unknown environment variable {name}: funnel_tl reads {', '.join(VARIABLES)}; unset it or fix its name"
            )
        value(name, environ)
