"""Sweeps over many models or training checkpoints: targets planned, measured in turn or over
torchrun ranks, one table and one page (``compare``).

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "compare": "runner",
    "kept_rows": "comparison",
    "finish_sweep": "comparison",
    "Comparison": "comparison",
    "PYTHIA_SUITE": "plan",
    "PRESETS": "plan",
    "PYTHIA_STEPS": "plan",
    "Target": "plan",
    "PYTHIA_NAME": "plan",
    "expand_models": "plan",
    "model_identity": "plan",
    "parse_steps": "plan",
    "checkpoint_targets": "plan",
    "plan_targets": "plan",
    "assign_targets": "plan",
    "COMPARE_SCHEMA_VERSION": "rows",
    "ComparisonRow": "rows",
    "row_from_results": "rows",
    "one_line": "rows",
    "TABLE_WRITE_SECONDS": "rows",
    "TABLE_WRITE_SHARE": "rows",
    "TableWriter": "rows",
    "ordered_rows": "rows",
    "TABLE_SETTINGS": "rows",
    "read_compare_json": "rows",
    "earlier_rows": "rows",
    "row_identity": "rows",
    "setting_differences": "rows",
    "compare_dict": "rows",
    "WARM_UP_PROMPT": "one_target",
    "resumed_row": "one_target",
    "measured_row": "one_target",
    "finished_result": "one_target",
    "gains_at": "one_target",
    "sweep_sharded": "torchrun",
    "count_parameters": "memory",
    "release_memory": "memory",
    "collecting_per_target": "memory",
    "reset_peak_memory": "memory",
    "peak_memory": "memory",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.sweep.comparison import Comparison, finish_sweep, kept_rows
    from funnel_tl.sweep.memory import (
        collecting_per_target,
        count_parameters,
        peak_memory,
        release_memory,
        reset_peak_memory,
    )
    from funnel_tl.sweep.one_target import WARM_UP_PROMPT, finished_result, gains_at, measured_row, resumed_row
    from funnel_tl.sweep.plan import (
        PRESETS,
        PYTHIA_NAME,
        PYTHIA_STEPS,
        PYTHIA_SUITE,
        Target,
        assign_targets,
        checkpoint_targets,
        expand_models,
        model_identity,
        parse_steps,
        plan_targets,
    )
    from funnel_tl.sweep.rows import (
        COMPARE_SCHEMA_VERSION,
        TABLE_SETTINGS,
        TABLE_WRITE_SECONDS,
        TABLE_WRITE_SHARE,
        ComparisonRow,
        TableWriter,
        compare_dict,
        earlier_rows,
        one_line,
        ordered_rows,
        read_compare_json,
        row_from_results,
        row_identity,
        setting_differences,
    )
    from funnel_tl.sweep.runner import compare
    from funnel_tl.sweep.torchrun import sweep_sharded


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
