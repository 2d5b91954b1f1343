"""Every runnable example in a docstring runs and prints what it shows (``# doctest: +SKIP`` marks
the ones that need a hub model or a GPU): a stale example is a wrong document."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import funnel_tl

# Recursive: every module of every subpackage (iter_modules would stop at the first level).
MODULES = sorted(
    info.name.removeprefix("funnel_tl.")
    for info in pkgutil.walk_packages(funnel_tl.__path__, "funnel_tl.")
    if not info.name.rpartition(".")[2].startswith("_")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"funnel_tl.{name}")
    outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert outcome.failed == 0, f"{outcome.failed} of {outcome.attempted} docstring examples of funnel_tl.{name} fail"
