"""Analysis: the Funnel Model's verdicts, the readings beside the seed's numbers, intervals over
prompts, the sink reading, gain beside effect.

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "PYTHIA_1_4B_REFERENCE": "funnel",
    "LayerSummary": "funnel",
    "summarize": "funnel",
    "FunnelTest": "funnel",
    "funnel_test": "funnel",
    "comparison_1_4b": "funnel",
    "FEW_PROMPTS": "report",
    "DOMINANT_SHOWN": "report",
    "format_analysis": "report",
    "MLP_EXPANDING_ALLOWED": "criteria",
    "SEED_N_LAYERS": "criteria",
    "mlp_expanding_allowed": "criteria",
    "seed_rule_cannot_fail": "criteria",
    "not_testable": "criteria",
    "require_all_layers": "criteria",
    "DEFAULT_RESAMPLES": "stats",
    "DEFAULT_SEED": "stats",
    "DEFAULT_CONFIDENCE": "stats",
    "METHODS": "intervals",
    "DEFAULT_METHOD": "stats",
    "INTERVAL_KEYS": "intervals",
    "Intervals": "intervals",
    "MAX_RESAMPLES": "stats",
    "CHUNK_FLOATS": "stats",
    "bootstrap_bytes": "stats",
    "available_memory": "stats",
    "check_bootstrap": "stats",
    "resample_weight_chunks": "stats",
    "resample_weights": "stats",
    "bootstrap_intervals": "stats",
    "MIN_STUDENTIZED": "stats",
    "t_critical": "stats",
    "Dominance": "stats",
    "dominant_prompts": "stats",
    "RobustFunnelTest": "robust",
    "classify": "robust",
    "interval_counts": "robust",
    "robust_funnel_test": "robust",
    "mean_intervals": "stats",
    "NOTABLE_FACTOR": "readings",
    "WITHOUT": "readings",
    "headlines": "readings",
    "add_readings": "readings",
    "input_norms": "readings",
    "factor": "readings",
    "notable": "readings",
    "extreme_change": "readings",
    "CRITERIA": "readings",
    "changed_criteria": "readings",
    "definition_lines": "readings",
    "post_norm_lines": "readings",
    "SinkEffect": "sink",
    "sink_effect": "sink",
    "sink_unavailable": "sink",
    "cached_sink_effect": "sink",
    "format_sink_analysis": "sink",
    "NAMES": "effects",
    "TOP": "effects",
    "MIN_LAYERS_FOR_RANKS": "effects",
    "Sublayer": "effects",
    "Correlation": "effects",
    "LastMLP": "effects",
    "GainVersusEffect": "effects",
    "reading_intervention": "effects",
    "spearman": "effects",
    "gain_versus_effect": "effects",
    "format_effects": "effects",
    "summary_lines": "effects",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.analysis.criteria import (
        MLP_EXPANDING_ALLOWED,
        SEED_N_LAYERS,
        mlp_expanding_allowed,
        not_testable,
        require_all_layers,
        seed_rule_cannot_fail,
    )
    from funnel_tl.analysis.effects import (
        MIN_LAYERS_FOR_RANKS,
        NAMES,
        TOP,
        Correlation,
        GainVersusEffect,
        LastMLP,
        Sublayer,
        format_effects,
        gain_versus_effect,
        reading_intervention,
        spearman,
        summary_lines,
    )
    from funnel_tl.analysis.funnel import (
        PYTHIA_1_4B_REFERENCE,
        FunnelTest,
        LayerSummary,
        comparison_1_4b,
        funnel_test,
        summarize,
    )
    from funnel_tl.analysis.intervals import INTERVAL_KEYS, METHODS, Intervals
    from funnel_tl.analysis.readings import (
        CRITERIA,
        NOTABLE_FACTOR,
        WITHOUT,
        add_readings,
        changed_criteria,
        definition_lines,
        extreme_change,
        factor,
        headlines,
        input_norms,
        notable,
        post_norm_lines,
    )
    from funnel_tl.analysis.report import DOMINANT_SHOWN, FEW_PROMPTS, format_analysis
    from funnel_tl.analysis.robust import RobustFunnelTest, classify, interval_counts, robust_funnel_test
    from funnel_tl.analysis.sink import (
        SinkEffect,
        cached_sink_effect,
        format_sink_analysis,
        sink_effect,
        sink_unavailable,
    )
    from funnel_tl.analysis.stats import (
        CHUNK_FLOATS,
        DEFAULT_CONFIDENCE,
        DEFAULT_METHOD,
        DEFAULT_RESAMPLES,
        DEFAULT_SEED,
        MAX_RESAMPLES,
        MIN_STUDENTIZED,
        Dominance,
        available_memory,
        bootstrap_bytes,
        bootstrap_intervals,
        check_bootstrap,
        dominant_prompts,
        mean_intervals,
        resample_weight_chunks,
        resample_weights,
        t_critical,
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
