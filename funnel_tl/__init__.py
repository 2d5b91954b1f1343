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
import sys
import types
import warnings
from typing import TYPE_CHECKING

# tqdm.auto warns on import in a notebook kernel without ipywidgets, then falls back to text bars,
# which work: the warning only tells the user to install a widget library they did not ask for.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

# Each public name and the submodule it lives in.
_EXPORTS = {
    "gains_from_cache": "cache",
    "PYTHIA_SUITE": "compare", "Comparison": "compare", "compare": "compare",
    "FunnelError": "errors",
    "PYTHIA_1_4B_REFERENCE": "funnel", "FunnelTest": "funnel", "comparison_1_4b": "funnel",
    "format_analysis": "funnel", "funnel_test": "funnel",
    "measure_gains": "gains",
    "HeadResult": "heads", "head_gains": "heads",
    "bundled_checkpoints": "models", "bundled_models": "models", "default_model_name": "models", "load_model": "models",
    "plot_attention_mlp": "plots", "plot_cumulative": "plots", "plot_funnel": "plots", "plot_mlp_depth": "plots",
    "plot_net_gain": "plots", "plot_seed_product": "plots", "write_html": "plots", "write_image": "plots",
    "write_png": "plots",
    "SEED_PROMPTS": "prompts", "load_prompts": "prompts",
    "GainResult": "results",
    "Intervals": "stats", "bootstrap_intervals": "stats", "robust_funnel_test": "stats",
    "EffectResult": "effect_results", "measure_effects": "effects", "plot_effects": "effect_plots",
}


if TYPE_CHECKING:
    # What griffe (mkdocstrings) and type checkers read: the lazily exported names, statically.
    # Never executed, so `import funnel_tl` still imports no torch.
    from .cache import gains_from_cache
    from .compare import Comparison, PYTHIA_SUITE, compare
    from .effect_plots import plot_effects
    from .effect_results import EffectResult
    from .effects import measure_effects
    from .errors import FunnelError
    from .funnel import (
        FunnelTest,
        PYTHIA_1_4B_REFERENCE,
        comparison_1_4b,
        format_analysis,
        funnel_test,
    )
    from .gains import measure_gains
    from .heads import HeadResult, head_gains
    from .models import bundled_checkpoints, bundled_models, default_model_name, load_model
    from .plots import (
        plot_attention_mlp,
        plot_cumulative,
        plot_funnel,
        plot_mlp_depth,
        plot_net_gain,
        plot_seed_product,
        write_html,
        write_image,
        write_png,
    )
    from .prompts import SEED_PROMPTS, load_prompts
    from .results import GainResult
    from .stats import Intervals, bootstrap_intervals, robust_funnel_test

__all__ = [
    "FunnelError", "FunnelTest", "GainResult", "PYTHIA_1_4B_REFERENCE", "SEED_PROMPTS",
    "bundled_checkpoints", "bundled_models", "comparison_1_4b", "default_model_name", "format_analysis", "funnel_test",
    "gains_from_cache", "load_model", "load_prompts", "measure_gains",
    "HeadResult", "head_gains",
    "Intervals", "bootstrap_intervals", "plot_funnel", "robust_funnel_test", "write_html", "write_png",
    "plot_attention_mlp", "plot_mlp_depth", "plot_net_gain", "plot_cumulative", "plot_seed_product",
]
__all__ += ["Comparison", "PYTHIA_SUITE", "compare", "write_image"]
__all__ += ["EffectResult", "measure_effects", "plot_effects"]


def __getattr__(name: str):
    """A public name, imported from its submodule on first use; else a submodule (``funnel_tl.stats``)."""
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


class _Package(types.ModuleType):
    """The package module: importing the submodule ``funnel_tl.compare`` leaves the package's
    attribute ``compare`` the function, as it was when ``__init__`` imported every name."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # the submodule stays in sys.modules; __getattr__ gives the public name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
