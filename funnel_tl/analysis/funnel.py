"""The Funnel Model hypothesis test and the seed notebook's printed analysis.

The hypothesis (from Pythia-1.4B): attention contracts in every layer, the MLP contracts in
nearly all, and only a late MLP expands. The test, the counts and the reference numbers are the
seed notebook's, criterion for criterion.

The verdicts are about every layer ("attention contracts in *every* layer", "the *last* MLP
expands"), so a result measured on some layers only (``measure_gains(..., layers=...)``) is not
testable: ``funnel_test`` and ``robust.robust_funnel_test`` refuse it with the reason
``not_testable`` gives, which results.json (``"not_testable"``), the printed analysis and the
figure's subtitle show in place of the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from funnel_tl.analysis.criteria import MLP_EXPANDING_ALLOWED, require_all_layers

if TYPE_CHECKING:
    from funnel_tl.results.gains import GainResult

# Measured on Pythia-1.4B by the seed notebook's method (definition="seed"), copied from it.
PYTHIA_1_4B_REFERENCE = {
    "n_layers": 24,
    "attn_min_gain": 0.083,
    "attn_max_gain": 0.527,
    "attn_contracting": 24,
    "mlp_min_gain": 0.261,
    "mlp_max_gain": 3.604,
    "mlp_contracting": 22,
    "mlp_expanding": 2,
    "last_layer_mlp_gain": 3.604,
    "combined_max_gain": 1.338,
}


@dataclass(frozen=True)
class LayerSummary:
    """Counts and extremes of one component's per-layer gains (a gain < 1 contracts)."""

    n_contracting: int
    n_expanding: int
    min_gain: float
    min_layer: int
    max_gain: float
    max_layer: int


def summarize(gains, layers=None) -> LayerSummary:
    """``layers``: the true index of each gain's layer (a result's ``layers``); default 0, 1, ..."""
    gains = np.asarray(gains, dtype=np.float64)
    layers = np.arange(len(gains)) if layers is None else np.asarray(layers)
    return LayerSummary(
        n_contracting=int(np.sum(gains < 1)),
        n_expanding=int(np.sum(gains >= 1)),
        min_gain=float(gains.min()),
        min_layer=int(layers[gains.argmin()]),
        max_gain=float(gains.max()),
        max_layer=int(layers[gains.argmax()]),
    )


@dataclass(frozen=True)
class FunnelTest:
    """The seed's four criteria and its verdict (the fourth is reported, not required)."""

    attention_always_contracts: bool
    mlp_mostly_contracts: bool
    last_layer_expands: bool
    last_layer_is_max: bool
    funnel_confirmed: bool

    def to_dict(self) -> dict[str, bool]:
        return {key: bool(value) for key, value in asdict(self).items()}


def funnel_test(result: GainResult) -> FunnelTest:
    """Test the Funnel Model on a ``GainResult`` exactly as the seed notebook does.

    Criterion 2 is the seed's literal ``mlp_contracting >= n_layers - 3``, which cannot fail for a
    model of three layers or fewer (``format_analysis`` says so); the robust verdict
    (``funnel_tl.analysis.robust``) scales the allowance with depth (``funnel_tl.analysis.criteria``). A result
    measured on some layers only is refused (FunnelError; see ``not_testable``).

    Args:
        result: a ``GainResult`` measured on every layer; its ``[layer]`` attention and MLP gains
            (point estimates, no intervals) are tested.

    Returns:
        The four criteria and the verdict: attention contracts (gain < 1) in every layer, the MLP
        in all but at most 3, the last layer's MLP expands (gain > 1); that layer's MLP gain being
        the largest is reported, not required.
    """
    require_all_layers(result)
    n_layers = result.n_layers
    attn, mlp = summarize(result.attn_gains), summarize(result.mlp_gains)
    attention_contracts = attn.n_contracting == n_layers
    mlp_mostly = mlp.n_contracting >= n_layers - MLP_EXPANDING_ALLOWED
    last_expands = bool(result.mlp_gains[-1] > 1.0)
    return FunnelTest(
        attention_always_contracts=attention_contracts,
        mlp_mostly_contracts=mlp_mostly,
        last_layer_expands=last_expands,
        last_layer_is_max=mlp.max_layer == n_layers - 1,
        funnel_confirmed=attention_contracts and mlp_mostly and last_expands,
    )


def comparison_1_4b(result: GainResult) -> dict[str, bool]:
    """The seed's ``comparison_1_4b`` block: does the pattern match Pythia-1.4B's?

    Args:
        result: a ``GainResult`` measured on every layer.

    Returns:
        ``attn_contraction_match`` (attention contracts in more than 95% of the layers),
        ``mlp_expansion_in_last`` (the last MLP gain > 1) and ``pattern_match`` (``funnel_test``'s
        verdict).
    """
    require_all_layers(result, "the Pythia-1.4B comparison")
    attn = summarize(result.attn_gains)
    return {
        "attn_contraction_match": bool(abs(100 * attn.n_contracting / result.n_layers - 100) < 5),
        "mlp_expansion_in_last": bool(result.mlp_gains[-1] > 1.0),
        "pattern_match": funnel_test(result).funnel_confirmed,
    }
