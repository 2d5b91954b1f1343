"""funnel_tl: does attention contract what it reads in every layer, and only a late MLP expand?

Measure per-layer attention, MLP and block gains of transformer language models through
TransformerLens, test the "Funnel Model" hypothesis, and compare models.

>>> import funnel_tl
>>> funnel_tl.SEED_PROMPTS[0]
'The capital of France is Paris, which is known for the Eiffel Tower.'
"""

__version__ = "0.1.0"

import warnings

# tqdm.auto warns on import in a notebook kernel without ipywidgets, then falls back to text bars,
# which work: the warning only tells the user to install a widget library they did not ask for.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

from .cache import gains_from_cache
from .compare import PYTHIA_SUITE, Comparison, compare
from .errors import FunnelError
from .funnel import PYTHIA_1_4B_REFERENCE, FunnelTest, comparison_1_4b, format_analysis, funnel_test
from .gains import measure_gains
from .heads import HeadResult, head_gains
from .models import bundled_checkpoints, bundled_models, default_model_name, load_model
from .plots import plot_attention_mlp, plot_cumulative, plot_funnel, plot_mlp_depth, plot_net_gain, write_html, write_png
from .prompts import SEED_PROMPTS, load_prompts
from .results import GainResult
from .stats import Intervals, bootstrap_intervals, robust_funnel_test

__all__ = [
    "FunnelError", "FunnelTest", "GainResult", "PYTHIA_1_4B_REFERENCE", "SEED_PROMPTS",
    "bundled_checkpoints", "bundled_models", "comparison_1_4b", "default_model_name", "format_analysis", "funnel_test",
    "gains_from_cache", "load_model", "load_prompts", "measure_gains",
    "HeadResult", "head_gains",
    "Intervals", "bootstrap_intervals", "plot_funnel", "robust_funnel_test", "write_html", "write_png",
    "plot_attention_mlp", "plot_mlp_depth", "plot_net_gain", "plot_cumulative",
]
__all__ += ["Comparison", "PYTHIA_SUITE", "compare"]

from .effect_plots import plot_effects  # noqa: E402
from .effect_results import EffectResult  # noqa: E402
from .effects import measure_effects  # noqa: E402

__all__ += ["EffectResult", "measure_effects", "plot_effects"]
