"""funnel_tl: does attention contract what it reads in every layer, and only a late MLP expand?

Measure per-layer attention, MLP and block gains of transformer language models through
TransformerLens, test the "Funnel Model" hypothesis, and compare models.

>>> import funnel_tl
>>> funnel_tl.SEED_PROMPTS[0]
'The capital of France is Paris, which is known for the Eiffel Tower.'

Every public name is imported on first use (PEP 562): ``import funnel_tl`` and ``funnel-tl
--help`` import no torch; ``from funnel_tl import measure_gains`` imports what it needs.
"""

__version__ = "0.1.0"

import importlib
import warnings
from typing import TYPE_CHECKING

# tqdm.auto warns on import in a notebook kernel without ipywidgets, then falls back to text bars,
# which work: the warning only tells the user to install a widget library they did not ask for.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

# Each public name and the module it lives in (its subpackage: models, prompts, measure, results,
# analysis, plots, sweep, cli).
_EXPORTS = {
    "gains_from_cache": "measure.cache",
    "PYTHIA_SUITE": "sweep.plan",
    "Comparison": "sweep.comparison",
    "compare": "sweep.runner",
    "FunnelError": "errors",
    "PYTHIA_1_4B_REFERENCE": "analysis.funnel",
    "FunnelTest": "analysis.funnel",
    "comparison_1_4b": "analysis.funnel",
    "funnel_test": "analysis.funnel",
    "format_analysis": "analysis.report",
    "measure_gains": "measure.gains",
    "MeasureOptions": "measure.options",
    "HeadResult": "results.heads",
    "head_gains": "measure.heads",
    "bundled_checkpoints": "models.loading",
    "bundled_models": "models.loading",
    "default_model_name": "models.loading",
    "load_model": "models.loading",
    "plot_attention_mlp": "plots.panels",
    "plot_cumulative": "plots.panels",
    "plot_funnel": "plots.panels",
    "plot_mlp_depth": "plots.panels",
    "plot_net_gain": "plots.panels",
    "plot_seed_product": "plots.panels",
    "write_html": "plots.pages",
    "write_image": "plots.pages",
    "write_png": "plots.pages",
    "SEED_PROMPTS": "prompts.sets",
    "load_prompts": "prompts.sets",
    "GainResult": "results.gains",
    "Intervals": "analysis.intervals",
    "bootstrap_intervals": "analysis.stats",
    "robust_funnel_test": "analysis.robust",
    "EffectResult": "results.effects",
    "measure_effects": "measure.effects",
    "plot_effects": "plots.effects",
}


__all__ = [
    "FunnelError",
    "FunnelTest",
    "GainResult",
    "PYTHIA_1_4B_REFERENCE",
    "SEED_PROMPTS",
    "bundled_checkpoints",
    "bundled_models",
    "comparison_1_4b",
    "default_model_name",
    "format_analysis",
    "funnel_test",
    "gains_from_cache",
    "load_model",
    "load_prompts",
    "measure_gains",
    "HeadResult",
    "head_gains",
    "Intervals",
    "bootstrap_intervals",
    "plot_funnel",
    "robust_funnel_test",
    "write_html",
    "write_png",
    "plot_attention_mlp",
    "plot_mlp_depth",
    "plot_net_gain",
    "plot_cumulative",
    "plot_seed_product",
]
__all__ += ["Comparison", "PYTHIA_SUITE", "compare", "write_image"]
__all__ += ["EffectResult", "measure_effects", "plot_effects"]
__all__ += ["MeasureOptions"]

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and the API reference (griffe)
    from funnel_tl.analysis.funnel import PYTHIA_1_4B_REFERENCE, FunnelTest, comparison_1_4b, funnel_test
    from funnel_tl.analysis.intervals import Intervals
    from funnel_tl.analysis.report import format_analysis
    from funnel_tl.analysis.robust import robust_funnel_test
    from funnel_tl.analysis.stats import bootstrap_intervals
    from funnel_tl.errors import FunnelError
    from funnel_tl.measure.cache import gains_from_cache
    from funnel_tl.measure.effects import measure_effects
    from funnel_tl.measure.gains import measure_gains
    from funnel_tl.measure.heads import head_gains
    from funnel_tl.measure.options import MeasureOptions
    from funnel_tl.models.loading import bundled_checkpoints, bundled_models, default_model_name, load_model
    from funnel_tl.plots.effects import plot_effects
    from funnel_tl.plots.pages import write_html, write_image, write_png
    from funnel_tl.plots.panels import (
        plot_attention_mlp,
        plot_cumulative,
        plot_funnel,
        plot_mlp_depth,
        plot_net_gain,
        plot_seed_product,
    )
    from funnel_tl.prompts.sets import SEED_PROMPTS, load_prompts
    from funnel_tl.results.effects import EffectResult
    from funnel_tl.results.gains import GainResult
    from funnel_tl.results.heads import HeadResult
    from funnel_tl.sweep.comparison import Comparison
    from funnel_tl.sweep.plan import PYTHIA_SUITE
    from funnel_tl.sweep.runner import compare


def __getattr__(name: str):
    """A public name, imported from its module on first use; else a subpackage (``funnel_tl.plots``)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
