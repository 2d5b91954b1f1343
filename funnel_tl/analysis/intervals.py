"""``Intervals``: the intervals over prompts of every per-layer gain, how they were drawn, and
their ``"intervals"`` block of results.json.

What each interval is of, and the two methods (``"t"``, ``"percentile"``) that draw them, are
described in ``funnel_tl.analysis.stats``, which draws them (``bootstrap_intervals``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from funnel_tl.errors import FunnelError

if TYPE_CHECKING:  # jaxtyping's shapes for type checkers and the API reference; importing it costs ~0.1 s
    from jaxtyping import Float

# How intervals are drawn (see ``funnel_tl.analysis.stats``' docstring); the key is what results.json names.
METHODS = {
    "t": "t intervals over prompts (attention, mlp, block: of the mean of per-prompt gains); combined, "
    "cumulative: studentized bootstrap of the log of the product, delta-method standard error",
    "percentile": "percentile bootstrap over prompts",
}

# What each interval is of, by its key in results.json (the key "attention" is the seed's name).
INTERVAL_KEYS = {
    "attn": "attention",
    "mlp": "mlp",
    "combined": "combined",
    "block": "block",
    "cumulative": "cumulative",
}


@dataclass(frozen=True)
class Intervals:
    """Bootstrap intervals over prompts, one ``[lo, hi]`` row per layer for each gain.

    Shapes: ``attn``, ``mlp``, ``combined``, ``block`` and ``cumulative`` are ``[layer, 2]``
    (column 0 the lower bound, column 1 the upper); ``cumulative`` may have fewer rows (a result
    measured on some layers: its measured prefix 0..k, possibly none). ``method`` (a key of
    ``METHODS``: ``"t"`` or ``"percentile"``) and ``confidence`` say how they were drawn, and
    ``n_resamples`` and ``seed`` the resampling (the percentile bootstrap's; under ``"t"`` the
    products' studentized bootstrap); the same arguments on the same result give the same intervals.
    """

    confidence: float
    n_resamples: int
    seed: int
    attn: Float[np.ndarray, "layer 2"]
    mlp: Float[np.ndarray, "layer 2"]
    combined: Float[np.ndarray, "layer 2"]
    block: Float[np.ndarray, "layer 2"]
    cumulative: Float[np.ndarray, "layer 2"]
    # Last and with a default, so Intervals built before methods existed (and files without the
    # key) read as what they were: percentile bootstrap intervals.
    method: str = "percentile"

    def __post_init__(self):
        if self.method not in METHODS:
            raise FunnelError(f"unknown interval method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not 0 < self.confidence < 1:
            raise FunnelError(f"confidence must lie between 0 and 1, got {self.confidence}")
        shape = None
        for component in INTERVAL_KEYS:
            array = np.asarray(getattr(self, component), dtype=np.float64)
            if component == "cumulative" and array.size == 0:
                array = array.reshape(0, 2)  # no measured prefix (read back from JSON as [])
            if array.ndim != 2 or array.shape[1] != 2:
                raise FunnelError(f"{component} intervals have shape {array.shape}, expected [layer, 2]")
            if component == "cumulative" and shape is not None and array.shape[0] <= shape[0]:
                pass  # a measured prefix of the layers (the ones before it, when all were measured)
            elif shape is not None and array.shape != shape:
                raise FunnelError(f"{component} intervals have {array.shape[0]} layers, others {shape[0]}")
            if not np.all(np.isfinite(array)):
                raise FunnelError(f"{component} intervals hold NaN or inf")
            if not np.all(array[:, 0] <= array[:, 1]):
                raise FunnelError(f"{component} intervals have a lower bound above the upper one")
            shape = array.shape
            object.__setattr__(self, component, array)

    @property
    def n_layers(self) -> int:
        return self.attn.shape[0]

    def describe(self, n_prompts: int | None = None) -> str:
        """How the intervals were drawn, in a few words for titles and the printed analysis.

        Args:
            n_prompts: how many prompts they are over, named when given (a result's ``n_prompts``).

        >>> ok = np.ones((1, 2))
        >>> Intervals(0.95, 2000, 0, ok, ok, ok, ok, ok, method="t").describe(8)
        '95% t intervals over 8 prompts (products: studentized bootstrap, 2000 resamples, seed 0)'
        """
        percent, over = f"{100 * self.confidence:g}%", f"over {n_prompts} prompts" if n_prompts else "over prompts"
        if self.method == "t":
            return (
                f"{percent} t intervals {over} (products: studentized bootstrap, {self.n_resamples} resamples, "
                f"seed {self.seed})"
            )
        return f"{percent} percentile-bootstrap intervals {over} ({self.n_resamples} resamples, seed {self.seed})"

    def of(self, component: str) -> Float[np.ndarray, "layer 2"]:
        """``[layer, 2]`` intervals of ``attn``, ``mlp``, ``combined``, ``block`` or ``cumulative``.

        Args:
            component: ``"attn"``, ``"mlp"``, ``"combined"``, ``"block"`` or ``"cumulative"`` (the
                keys of ``INTERVAL_KEYS``).

        Returns:
            ``[layer, 2]``: per measured layer the lower and the upper bound of the gain
            (``"cumulative"``: over ``GainResult.cumulative_layers`` only, maybe no row).
        """
        if component not in INTERVAL_KEYS:
            raise FunnelError(f"no intervals for {component!r}: choose one of {', '.join(INTERVAL_KEYS)}")
        return getattr(self, component)

    def to_dict(self) -> dict[str, Any]:
        """The ``"intervals"`` block of results.json."""
        return {
            "confidence": float(self.confidence),
            "n_resamples": int(self.n_resamples),
            "seed": int(self.seed),
            "method": self.method,
            "method_description": METHODS[self.method],
            **{key: self.of(component).tolist() for component, key in INTERVAL_KEYS.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "results") -> Intervals:
        """Intervals read back from their ``"intervals"`` block of results.json (``to_dict``).

        Args:
            data: the block, parsed; a file from before the t intervals reads as percentile ones.
            source: what ``data`` was read from, named in the ``FunnelError`` raised when the
                block is incomplete or its bounds are not intervals.
        """
        try:
            # Files written before the t intervals say "percentile bootstrap over prompts".
            renamed: dict[str | None, str] = {METHODS["percentile"]: "percentile"}
            method = renamed.get(data.get("method"), data.get("method", "percentile"))
            return cls(
                confidence=float(data["confidence"]),
                n_resamples=int(data["n_resamples"]),
                seed=int(data["seed"]),
                method=method,
                **{component: np.asarray(data[key], dtype=np.float64) for component, key in INTERVAL_KEYS.items()},
            )
        except FunnelError as error:
            raise FunnelError(f"{source}: {error}: rerun `funnel-tl report --bootstrap N` to redraw them") from None
        except (KeyError, TypeError, ValueError) as error:
            raise FunnelError(
                f"{source} has incomplete bootstrap intervals (missing or bad {error}): "
                "rerun `funnel-tl run`, or `funnel-tl report --bootstrap N` to redraw them"
            ) from None
