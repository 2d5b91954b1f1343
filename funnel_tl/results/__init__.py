"""Results: one frozen type per measurement (gains, heads, positions, effects), the files they are
written to and read back from, and the output folders.

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "GainResult": "gains",
    "SCHEMA_VERSION": "gains_file",
    "result_dict": "gains_file",
    "position_block": "gains_file",
    "result_from_dict": "gains_file",
    "gain_frame": "gains_file",
    "TIDY_COMPONENTS": "gains_file",
    "gain_rows": "gains_file",
    "HEADS_SCHEMA_VERSION": "heads",
    "HEADS_KIND": "heads",
    "HeadStat": "heads",
    "HeadResult": "heads",
    "VALUES": "head_names",
    "norm_decimals": "head_names",
    "shown_heads": "head_names",
    "label": "head_names",
    "SINGLE_POSITIONS": "positions",
    "bucket_edges": "positions",
    "bucket_labels": "positions",
    "HeadPositionSums": "positions",
    "PositionIntervals": "positions",
    "PositionSums": "positions",
    "bootstrap_position_intervals": "positions",
    "position_rows": "positions",
    "EFFECTS_SCHEMA_VERSION": "effects",
    "MEASURES": "effects",
    "EffectIntervals": "effects",
    "EffectResult": "effects",
    "subset_index": "files",
    "prompts_subset": "files",
    "prompts_block": "files",
    "prompt_texts": "files",
    "require_pandas": "files",
    "read_json": "files",
    "write_text_atomic": "files",
    "write_json_atomic": "files",
    "Bad": "schema",
    "kind": "schema",
    "Spec": "schema",
    "string": "schema",
    "integer": "schema",
    "number": "schema",
    "boolean": "schema",
    "literal": "schema",
    "nullable": "schema",
    "either": "schema",
    "list_of": "schema",
    "obj": "schema",
    "array": "schema",
    "COMPONENT_SUMS": "schema",
    "POSITION_SUMS": "schema",
    "INTERVALS": "schema",
    "POSITION_INTERVALS": "schema",
    "PROMPTS": "schema",
    "MAX_TOKENS": "schema",
    "PROVENANCE": "schema",
    "POSITIONS": "schema",
    "HEAD_POSITIONS": "schema",
    "RESULTS": "schema",
    "HEADS": "schema",
    "COMPARE_SETTINGS": "schema",
    "HINTS": "schema",
    "check_results": "schema",
    "check_heads": "schema",
    "check_compare": "schema",
    "compare_row": "schema",
    "LOCK_NAME": "folders",
    "TEMPORARY_SUFFIX": "folders",
    "OUTPUT_NAMES": "folders",
    "MIN_FREE_BYTES": "folders",
    "MAX_SLUG_LENGTH": "folders",
    "short_name": "folders",
    "check_label": "folders",
    "slug": "folders",
    "check_output_folder": "folders",
    "describe_os_error": "folders",
    "output_lock": "folders",
    "temporary_beside": "folders",
    "remove_temporaries": "folders",
    "claim_output": "folders",
    "save_elsewhere": "folders",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.results.effects import EFFECTS_SCHEMA_VERSION, MEASURES, EffectIntervals, EffectResult
    from funnel_tl.results.files import (
        prompt_texts,
        prompts_block,
        prompts_subset,
        read_json,
        require_pandas,
        subset_index,
        write_json_atomic,
        write_text_atomic,
    )
    from funnel_tl.results.folders import (
        LOCK_NAME,
        MAX_SLUG_LENGTH,
        MIN_FREE_BYTES,
        OUTPUT_NAMES,
        TEMPORARY_SUFFIX,
        check_label,
        check_output_folder,
        claim_output,
        describe_os_error,
        output_lock,
        remove_temporaries,
        save_elsewhere,
        short_name,
        slug,
        temporary_beside,
    )
    from funnel_tl.results.gains import GainResult
    from funnel_tl.results.gains_file import (
        SCHEMA_VERSION,
        TIDY_COMPONENTS,
        gain_frame,
        gain_rows,
        position_block,
        result_dict,
        result_from_dict,
    )
    from funnel_tl.results.head_names import VALUES, label, norm_decimals, shown_heads
    from funnel_tl.results.heads import HEADS_KIND, HEADS_SCHEMA_VERSION, HeadResult, HeadStat
    from funnel_tl.results.positions import (
        SINGLE_POSITIONS,
        HeadPositionSums,
        PositionIntervals,
        PositionSums,
        bootstrap_position_intervals,
        bucket_edges,
        bucket_labels,
        position_rows,
    )
    from funnel_tl.results.schema import (
        COMPARE_SETTINGS,
        COMPONENT_SUMS,
        HEAD_POSITIONS,
        HEADS,
        HINTS,
        INTERVALS,
        MAX_TOKENS,
        POSITION_INTERVALS,
        POSITION_SUMS,
        POSITIONS,
        PROMPTS,
        PROVENANCE,
        RESULTS,
        Bad,
        Spec,
        array,
        boolean,
        check_compare,
        check_heads,
        check_results,
        compare_row,
        either,
        integer,
        kind,
        list_of,
        literal,
        nullable,
        number,
        obj,
        string,
    )


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
