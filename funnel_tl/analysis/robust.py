"""The robust Funnel verdict: the seed's four criteria, counting a layer only where its whole
interval over prompts lies on one side of 1.

The robust verdict repeats the seed's hypothesis test, counting a layer as contracting only when
its whole interval lies below 1 and as expanding only when it lies wholly above 1; a layer whose
interval straddles 1 is "undetermined" and supports neither side. The intervals are a result's
``Intervals`` (``funnel_tl.analysis.stats.bootstrap_intervals``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from funnel_tl.analysis.criteria import mlp_expanding_allowed, require_all_layers
from funnel_tl.analysis.intervals import INTERVAL_KEYS, Intervals
from funnel_tl.errors import FunnelError

if TYPE_CHECKING:
    from funnel_tl.results.gains import GainResult


@dataclass(frozen=True)
class RobustFunnelTest:
    """The seed's four criteria, counting only layers whose whole interval lies on one side of 1.

    ``counts[key]`` holds ``n_contracting`` (interval wholly below 1), ``n_expanding`` (wholly
    above 1) and ``n_undetermined`` (straddles 1) for key in attention, mlp, combined, block.
    """

    attention_always_contracts: bool
    mlp_mostly_contracts: bool
    last_layer_expands: bool
    last_layer_is_max: bool
    funnel_confirmed: bool
    counts: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        """The ``"robust_funnel_test"`` block: the same boolean keys as ``"funnel_test"`` plus counts."""
        data = asdict(self)
        return {**{key: bool(value) for key, value in data.items() if key != "counts"}, "counts": data["counts"]}


def classify(intervals: np.ndarray) -> np.ndarray:
    """Per layer: -1 contracting (hi < 1), +1 expanding (lo > 1), 0 undetermined (straddles 1)."""
    intervals = np.asarray(intervals, dtype=np.float64)  # [layer, 2]
    return np.where(intervals[:, 1] < 1, -1, np.where(intervals[:, 0] > 1, 1, 0))


def interval_counts(intervals: np.ndarray) -> dict[str, int]:
    kinds = classify(intervals)
    return {
        "n_contracting": int(np.sum(kinds == -1)),
        "n_expanding": int(np.sum(kinds == 1)),
        "n_undetermined": int(np.sum(kinds == 0)),
    }


def robust_funnel_test(result: GainResult, intervals: Intervals | None = None) -> RobustFunnelTest:
    """The seed's hypothesis test on the intervals instead of the point estimates.

    1. attention always contracts: every layer's attention interval lies below 1;
    2. MLP mostly contracts: at most ``max(1, floor(n_layers / 8))`` layers lack an MLP interval
       wholly below 1 (the seed's 3 of 24 scaled with depth, ``funnel_tl.analysis.criteria``: the seed's
       literal "at most three" cannot fail for a model of three layers or fewer);
    3. the last layer's MLP expands: its interval lies wholly above 1;
    4. the last layer has the max MLP gain: its interval lies above every other layer's
       (reported, not required, as in the seed).

    A result measured on some layers only is refused, as by ``funnel.funnel_test``.

    Args:
        result: a ``GainResult`` measured on every layer.
        intervals: the intervals to test, ``[layer, 2]`` per gain; None takes the result's own
            (``result.with_intervals()`` draws them).

    Returns:
        The four criteria, the verdict and ``counts``: per gain the layers whose interval lies
        wholly below 1, wholly above it, or straddles it.

    Raises:
        FunnelError: the result was measured on some layers only, or carries no intervals.
    """
    require_all_layers(result, "the robust Funnel test")
    intervals = intervals if intervals is not None else getattr(result, "intervals", None)
    if intervals is None:
        raise FunnelError(f"{result.model}: no bootstrap intervals: compute them with result.with_intervals()")
    n_layers = result.n_layers
    counts = {
        key: interval_counts(intervals.of(component))
        for component, key in INTERVAL_KEYS.items()
        if component != "cumulative"
    }
    mlp = intervals.mlp  # [layer, 2]
    attention_contracts = counts["attention"]["n_contracting"] == n_layers
    mlp_mostly = counts["mlp"]["n_contracting"] >= n_layers - mlp_expanding_allowed(n_layers)
    last_expands = bool(mlp[-1, 0] > 1)
    last_is_max = bool(n_layers == 1 or mlp[-1, 0] > mlp[:-1, 1].max())
    return RobustFunnelTest(
        attention_always_contracts=attention_contracts,
        mlp_mostly_contracts=mlp_mostly,
        last_layer_expands=last_expands,
        last_layer_is_max=last_is_max,
        funnel_confirmed=attention_contracts and mlp_mostly and last_expands,
        counts=counts,
    )
