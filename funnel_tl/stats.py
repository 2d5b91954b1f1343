"""Uncertainty over prompts: bootstrap intervals for every per-layer gain, and a robust verdict.

The seed notebook averaged eight prompts and read "gain < 1" off the point estimate. Eight
prompts are few: a layer whose gain is 0.98 may just as well be 1.03 on another eight. Here the
prompts are resampled with replacement and every aggregated gain recomputed from the per-prompt
norm sums that ``GainResult`` keeps, exactly as the point estimate is computed:

- attn, mlp, block: the mean over the resampled prompts of the per-prompt gains;
- combined: the resample's attn gain × its MLP gain (the product of the aggregates, as the seed);
- cumulative: the running product over layers of the resample's combined gains (over the
  measured prefix 0..k only, ``GainResult.cumulative_layers``, when some layers were measured).

The interval is the percentile interval of those resampled statistics (``confidence`` = 0.95 gives
the 2.5th and 97.5th percentiles). With few prompts the percentile bootstrap is known to be a bit
too narrow (it cannot see variation that the prompts at hand do not show), so read it as a lower
bound on the uncertainty; more prompts (``--prompts FILE``) shrink it roughly as 1/√n_prompts.

The robust verdict repeats the seed's hypothesis test, counting a layer as contracting only when
its whole interval lies below 1 and as expanding only when it lies wholly above 1; a layer whose
interval straddles 1 is "undetermined" and supports neither side.

>>> import numpy as np
>>> from funnel_tl.results import GainResult
>>> sums = {c: np.array([[1.0, 4.0], [1.2, 5.0], [0.8, 3.0]]) for c in ("attn", "mlp", "block")}
>>> ins = {c: np.full((3, 2), 2.0) for c in ("attn", "mlp", "block")}
>>> result = GainResult(model="toy", definition="seed", n_layers=2, d_model=8, parallel_blocks=True,
...                     prompts=("a", "b", "c"), n_tokens=[1, 1, 1], out_sums=sums, in_sums=ins)
>>> intervals = bootstrap_intervals(result, n_resamples=1000, seed=0)
>>> lo, hi = intervals.attn[0]            # layer 0: per-prompt gains 0.5, 0.6, 0.4
>>> bool(lo < 0.5 < hi), bool(hi < 1)
(True, True)
>>> robust_funnel_test(result.with_intervals(intervals)).counts["attention"]["n_contracting"]
1
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import einops
import numpy as np

from .criteria import mlp_expanding_allowed, require_all_layers
from .errors import FunnelError

# 2,000 resamples put the Monte Carlo error of a 2.5th/97.5th percentile well below the width of
# the interval itself at eight prompts; the whole bootstrap is a [resample, prompt] × [prompt,
# layer] product, milliseconds even for thousands of prompts.
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95

# What each interval is of, by its key in results.json (the key "attention" is the seed's name).
INTERVAL_KEYS = {"attn": "attention", "mlp": "mlp", "combined": "combined", "block": "block",
                 "cumulative": "cumulative"}


@dataclass(frozen=True)
class Intervals:
    """Bootstrap intervals over prompts, one ``[lo, hi]`` row per layer for each gain.

    Shapes: ``attn``, ``mlp``, ``combined``, ``block`` and ``cumulative`` are ``[layer, 2]``
    (column 0 the lower bound, column 1 the upper); ``cumulative`` may have fewer rows (a result
    measured on some layers: its measured prefix 0..k, possibly none). ``confidence``, ``n_resamples`` and ``seed``
    say how they were drawn; the same three on the same result give the same intervals.
    """

    confidence: float
    n_resamples: int
    seed: int
    attn: np.ndarray
    mlp: np.ndarray
    combined: np.ndarray
    block: np.ndarray
    cumulative: np.ndarray

    def __post_init__(self):
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

    def of(self, component: str) -> np.ndarray:
        """``[layer, 2]`` intervals of ``attn``, ``mlp``, ``combined``, ``block`` or ``cumulative``."""
        if component not in INTERVAL_KEYS:
            raise FunnelError(f"no intervals for {component!r}: choose one of {', '.join(INTERVAL_KEYS)}")
        return getattr(self, component)

    def to_dict(self) -> dict[str, Any]:
        """The ``"intervals"`` block of results.json."""
        return {
            "confidence": float(self.confidence),
            "n_resamples": int(self.n_resamples),
            "seed": int(self.seed),
            "method": "percentile bootstrap over prompts",
            **{key: self.of(component).tolist() for component, key in INTERVAL_KEYS.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "results") -> "Intervals":
        try:
            return cls(confidence=float(data["confidence"]), n_resamples=int(data["n_resamples"]),
                       seed=int(data["seed"]),
                       **{component: np.asarray(data[key], dtype=np.float64) for component, key in INTERVAL_KEYS.items()})
        except FunnelError as error:
            raise FunnelError(f"{source}: {error}: rerun `funnel-tl report --bootstrap N` to redraw them") from None
        except (KeyError, TypeError, ValueError) as error:
            raise FunnelError(f"{source} has incomplete bootstrap intervals (missing or bad {error}): "
                              "rerun `funnel-tl run`, or `funnel-tl report --bootstrap N` to redraw them") from None


# Past a million resamples the Monte Carlo error of a percentile (~1/sqrt(resamples)) is far below
# any digit reported, while the draw alone takes minutes: a larger number is a typo, refused early.
MAX_RESAMPLES = 1_000_000
# Resamples drawn at a time: the [resample, prompt] weights of one chunk stay near this many floats.
CHUNK_FLOATS = 2**24


def bootstrap_bytes(n_resamples: int, n_layers: int) -> int:
    """Memory the bootstrap holds at its peak: six [resample, layer] float64 arrays (the chunked
    weights add at most ``CHUNK_FLOATS`` floats)."""
    return 6 * 8 * n_resamples * n_layers + 8 * CHUNK_FLOATS


def available_memory() -> int | None:
    """Bytes of memory the system can still give (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_bootstrap(n_resamples: int, n_prompts: int | None = None, n_layers: int | None = None) -> None:
    """Refuse, in one line and before any work, a bootstrap that is not a number, too large, or
    would not fit in memory (``n_layers`` unknown: only the count is checked)."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise FunnelError(f"the number of bootstrap resamples must be an integer, got {n_resamples!r}")
    if n_resamples < 0:
        raise FunnelError(f"--bootstrap must be 0 (no intervals) or a number of resamples, got {n_resamples}")
    if n_resamples > MAX_RESAMPLES:
        raise FunnelError(f"--bootstrap {n_resamples} is more than {MAX_RESAMPLES:,} resamples, which add no "
                          "precision: use 2000 (the default) to 100000")
    if n_layers is not None and n_resamples:
        needed, free = bootstrap_bytes(n_resamples, n_layers), available_memory()
        if free is not None and needed > free // 2:
            raise FunnelError(f"--bootstrap {n_resamples} over {n_layers} layers needs about {needed / 2**30:.1f} GiB "
                              f"of memory, {free / 2**30:.1f} GiB is free: use fewer resamples")


def resample_weight_chunks(n_prompts: int, n_resamples: int, seed: int):
    """``(start, stop, weights)`` for consecutive chunks of resamples; ``weights`` is ``[resample, prompt]``.

    How often each prompt is drawn in each resample, divided by n_prompts: drawing n_prompts
    prompts with replacement is a multinomial count per prompt, and a resample's mean of any
    per-prompt statistic is then ``weights @ statistic``. Drawn in chunks so that the weights never
    need resamples x prompts floats at once; one generator drawn chunk after chunk gives the same
    counts as one draw of all of them, so the chunking changes no interval.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_FLOATS // n_prompts)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        counts = rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=stop - start)
        yield start, stop, counts / n_prompts


def resample_weights(n_prompts: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[resample, prompt]``: every chunk of ``resample_weight_chunks`` at once (for small draws and tests)."""
    return np.concatenate([weights for _, _, weights in resample_weight_chunks(n_prompts, n_resamples, seed)])


def bootstrap_intervals(result, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                        confidence: float = DEFAULT_CONFIDENCE) -> Intervals:
    """Percentile bootstrap intervals over prompts for every per-layer gain of ``result``.

    ``result`` is a ``GainResult``; the intervals derive from its per-prompt norm sums alone, so
    ``funnel-tl report`` can redraw them from results.json without a model.
    """
    if n_resamples < 1:
        raise FunnelError(f"the bootstrap needs at least one resample, got {n_resamples}")
    if not 0 < confidence < 1:
        raise FunnelError(f"confidence must lie between 0 and 1 (0.95 for 95%), got {confidence}")
    if result.n_prompts < 2:
        raise FunnelError(f"{result.model}: a bootstrap over prompts needs at least 2 prompts, got "
                          f"{result.n_prompts}: give more prompts, or --bootstrap 0 to skip intervals")
    n_layers = len(result.layers)  # the measured ones
    check_bootstrap(n_resamples, result.n_prompts, n_layers)
    per_prompt = {component: result.per_prompt_gains(component) for component in ("attn", "mlp", "block")}
    resampled = {component: np.empty((n_resamples, n_layers)) for component in per_prompt}
    for start, stop, weights in resample_weight_chunks(result.n_prompts, n_resamples, seed):  # [resample, prompt]
        for component, gains in per_prompt.items():
            resampled[component][start:stop] = einops.einsum(weights, gains,
                                                             "resample prompt, prompt layer -> resample layer")
    resampled["combined"] = resampled["attn"] * resampled["mlp"]  # [resample, layer]
    prefix = len(result.cumulative_layers)  # a running product from layer 0 is exact over these only
    resampled["cumulative"] = np.cumprod(resampled["combined"][:, :prefix], axis=1)  # [resample, layer]
    tail = 100 * (1 - confidence) / 2
    bounds = {
        # [2, layer] -> [layer, 2] (np.percentile of a [resample, 0] array is [2, 0]: no prefix measured)
        component: einops.rearrange(np.percentile(values, [tail, 100 - tail], axis=0), "bound layer -> layer bound")
        for component, values in resampled.items()
    }
    return Intervals(confidence=confidence, n_resamples=n_resamples, seed=seed, **bounds)


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
    return {"n_contracting": int(np.sum(kinds == -1)), "n_expanding": int(np.sum(kinds == 1)),
            "n_undetermined": int(np.sum(kinds == 0))}


def robust_funnel_test(result, intervals: Intervals | None = None) -> RobustFunnelTest:
    """The seed's hypothesis test on the intervals instead of the point estimates.

    1. attention always contracts: every layer's attention interval lies below 1;
    2. MLP mostly contracts: at most ``max(1, floor(n_layers / 8))`` layers lack an MLP interval
       wholly below 1 (the seed's 3 of 24 scaled with depth, ``funnel_tl.criteria``: the seed's
       literal "at most three" cannot fail for a model of three layers or fewer);
    3. the last layer's MLP expands: its interval lies wholly above 1;
    4. the last layer has the max MLP gain: its interval lies above every other layer's
       (reported, not required, as in the seed).

    A result measured on some layers only is refused, as by ``funnel.funnel_test``.
    """
    require_all_layers(result, "the robust Funnel test")
    intervals = intervals if intervals is not None else getattr(result, "intervals", None)
    if intervals is None:
        raise FunnelError(f"{result.model}: no bootstrap intervals: compute them with result.with_intervals()")
    n_layers = result.n_layers
    counts = {key: interval_counts(intervals.of(component))
              for component, key in INTERVAL_KEYS.items() if component != "cumulative"}
    mlp = intervals.mlp  # [layer, 2]
    attention_contracts = counts["attention"]["n_contracting"] == n_layers
    mlp_mostly = counts["mlp"]["n_contracting"] >= n_layers - mlp_expanding_allowed(n_layers)
    last_expands = bool(mlp[-1, 0] > 1)
    last_is_max = bool(n_layers == 1 or mlp[-1, 0] > mlp[:-1, 1].max())
    return RobustFunnelTest(
        attention_always_contracts=attention_contracts, mlp_mostly_contracts=mlp_mostly,
        last_layer_expands=last_expands, last_layer_is_max=last_is_max,
        funnel_confirmed=attention_contracts and mlp_mostly and last_expands, counts=counts,
    )


# What ``mean_intervals`` draws, named in every file that stores its intervals.
MEAN_INTERVAL_METHOD = "percentile bootstrap over prompts"


def mean_intervals(values: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                   confidence: float = DEFAULT_CONFIDENCE) -> np.ndarray:
    """``[..., 2]`` intervals of the mean over prompts of per-prompt ``values`` ``[prompt, ...]``.

    The interval a per-layer gain has (``bootstrap_intervals`` for attn, mlp and block), for any
    statistic that is a mean of per-prompt values: the effects' Δloss and KL, and paired
    differences of them. Drawn the same way (the same resample weights for the same
    ``n_resamples`` and ``seed``), so it changes with the gains' method.

    >>> values = np.array([[0.5, 2.0], [0.6, 2.2], [0.4, 1.8]])   # [prompt, layer]
    >>> bounds = mean_intervals(values, n_resamples=1000, seed=0)
    >>> bounds.shape, bool(bounds[0, 0] < 0.5 < bounds[0, 1])
    ((2, 2), True)
    """
    values = np.asarray(values, dtype=np.float64)
    n_prompts = values.shape[0]
    if n_prompts < 2:
        raise FunnelError(f"an interval over prompts needs at least 2 prompts, got {n_prompts}: give more prompts, "
                          "or --bootstrap 0 to skip intervals")
    if n_resamples < 1:
        raise FunnelError(f"the bootstrap needs at least one resample, got {n_resamples}")
    if not 0 < confidence < 1:
        raise FunnelError(f"confidence must lie between 0 and 1 (0.95 for 95%), got {confidence}")
    flat = values.reshape(n_prompts, -1)  # [prompt, statistic]
    resampled = np.empty((n_resamples, flat.shape[1]))
    for start, stop, weights in resample_weight_chunks(n_prompts, n_resamples, seed):  # [resample, prompt]
        resampled[start:stop] = weights @ flat
    tail = 100 * (1 - confidence) / 2
    bounds = np.percentile(resampled, [tail, 100 - tail], axis=0)  # [2, statistic]
    return einops.rearrange(bounds, "bound statistic -> statistic bound").reshape(*values.shape[1:], 2)
