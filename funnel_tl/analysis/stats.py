"""Uncertainty over prompts: drawing the intervals of every per-layer gain, and the means one prompt dominates.

The seed notebook averaged eight prompts and read "gain < 1" off the point estimate. Eight
prompts are few: a layer whose gain is 0.98 may just as well be 1.03 on another eight. Every
interval here derives from the per-prompt norm sums that ``GainResult`` keeps, for the gains as
the point estimate computes them:

- attn, mlp, block: the mean over prompts of the per-prompt gains;
- combined: the attn gain × the MLP gain (the product of the two means, as the seed);
- cumulative: the running product over layers of the combined gains (over the measured prefix
  0..k only, ``GainResult.cumulative_layers``, when some layers were measured).

Two methods (``method=``), named in results.json (``intervals.method``):

- ``"t"`` (the default): for attn, mlp and block the Student-t interval of a mean,
  mean ± t(n−1) · sd / √n over the n per-prompt gains (the lower end kept ≥ 0: no gain is
  negative). For combined and cumulative, products of means, a studentized bootstrap of the
  *log* of the product: its standard error by the delta method (each prompt's influence on
  log(ā · m̄) is aᵢ/ā + mᵢ/m̄, summed over the layers up to L for the cumulative gain, so the
  correlation between a prompt's attention and MLP gains, and between layers, is counted), and
  the quantiles of (θ* − θ̂) / se* over ``n_resamples`` resamples (``seed``) in place of t's, so
  the skew of a product of many means is followed; below 5 prompts, t's quantiles.
- ``"percentile"``: the percentile bootstrap (``n_resamples`` resamples of the prompts with
  replacement, ``seed``; ``confidence`` = 0.95 takes the 2.5th and 97.5th percentiles), the
  method before the t intervals.

Why the t intervals: on SmolLM2-135M's per-prompt gains over the 300 passages of the ``varied``
prompt set, drawn as sets of 8, 16 and 32 prompts (``tests/test_coverage.py``), the 95% percentile
bootstrap covered the true gain 86–90% of the time at 8 prompts (the seed's number), 92% at 16,
94–95% at 32: it plugs the sample's own spread, narrower than the population's with few prompts,
into a normal quantile. The t interval corrects both (the n−1 divisor and the t quantile) and
covered 94–95% at 8, 16 and 32 prompts (worst layer 90–93%); for the products a t interval of
the log covered 93–94% at 8 prompts (the cumulative gain, a product of 60 means, is skewed), the
studentized bootstrap 94–95%. No interval can cover a mean that a rare prompt dominates when the
prompts at hand include no such prompt; when they do, ``dominant_prompts`` flags the layer.

``Intervals``, the record of the intervals, lives in ``funnel_tl.analysis.intervals``. The robust
verdict (``funnel_tl.analysis.robust``) repeats the seed's hypothesis test, counting a layer as
contracting only when its whole interval lies below 1 and as expanding only when it lies wholly
above 1; a layer whose interval straddles 1 is "undetermined" and supports neither side.

>>> import numpy as np
>>> from funnel_tl.results.gains import GainResult
>>> sums = {c: np.array([[1.0, 4.0], [1.2, 5.0], [0.8, 3.0]]) for c in ("attn", "mlp", "block")}
>>> ins = {c: np.full((3, 2), 2.0) for c in ("attn", "mlp", "block")}
>>> result = GainResult(model="toy", definition="seed", n_layers=2, d_model=8, parallel_blocks=True,
...                     prompts=("a", "b", "c"), n_tokens=[1, 1, 1], out_sums=sums, in_sums=ins)
>>> intervals = bootstrap_intervals(result)  # t intervals: layer 0's gains are 0.5, 0.6, 0.4
>>> [round(float(bound), 3) for bound in intervals.attn[0]]  # 0.5 ± t(2) · 0.1 / √3
[0.252, 0.748]
>>> robust_funnel_test(result.with_intervals(intervals)).counts["attention"]["n_contracting"]
1
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import einops
import numpy as np

from funnel_tl.analysis.intervals import INTERVAL_KEYS, METHODS, Intervals

# Re-exported (they were defined here before the robust verdict had a module of its own).
from funnel_tl.analysis.robust import RobustFunnelTest, classify, interval_counts, robust_funnel_test  # noqa: F401
from funnel_tl.errors import FunnelError

if TYPE_CHECKING:  # jaxtyping's shapes for type checkers and the API reference; importing it costs ~0.1 s
    from jaxtyping import Float

    from funnel_tl.results.gains import GainResult

# 2,000 resamples put the Monte Carlo error of a 2.5th/97.5th percentile well below the width of
# the interval itself at eight prompts; the whole bootstrap is a [resample, prompt] × [prompt,
# layer] product, milliseconds even for thousands of prompts.
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
# How intervals are drawn by default (``METHODS``, in ``funnel_tl.analysis.intervals``).
DEFAULT_METHOD = "t"


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


def check_bootstrap(
    n_resamples: int, n_prompts: int | None = None, n_layers: int | None = None, seed: int | None = None
) -> None:
    """Refuse, in one line and before any work, a bootstrap that is not a number, too large, or
    would not fit in memory (``n_layers`` unknown: only the count is checked), or a ``seed`` that
    numpy's generator would refuse only once the measurement is done."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise FunnelError(f"the bootstrap seed must be a whole number, 0 or more, got {seed!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise FunnelError(f"the number of bootstrap resamples must be an integer, got {n_resamples!r}")
    if n_resamples < 0:
        raise FunnelError(f"--bootstrap must be 0 (no intervals) or a number of resamples, got {n_resamples}")
    if n_resamples > MAX_RESAMPLES:
        raise FunnelError(
            f"--bootstrap {n_resamples} is more than {MAX_RESAMPLES:,} resamples, which add no "
            "precision: use 2000 (the default) to 100000"
        )
    if n_layers is not None and n_resamples:
        needed, free = bootstrap_bytes(n_resamples, n_layers), available_memory()
        if free is not None and needed > free // 2:
            raise FunnelError(
                f"--bootstrap {n_resamples} over {n_layers} layers needs about {needed / 2**30:.1f} GiB "
                f"of memory, {free / 2**30:.1f} GiB is free: use fewer resamples"
            )


def resample_weight_chunks(n_prompts: int, n_resamples: int, seed: int, floats_per_resample: int | None = None):
    """``(start, stop, weights)`` for consecutive chunks of resamples; ``weights`` is ``[resample, prompt]``.

    How often each prompt is drawn in each resample, divided by n_prompts: drawing n_prompts
    prompts with replacement is a multinomial count per prompt, and a resample's mean of any
    per-prompt statistic is then ``weights @ statistic``. Drawn in chunks so that the weights never
    need resamples x prompts floats at once; one generator drawn chunk after chunk gives the same
    counts as one draw of all of them, so the chunking changes no interval.
    """
    rng = np.random.default_rng(seed)
    # ``floats_per_resample``: what a caller holds per resample ([prompt, layer] for the products).
    chunk = max(1, CHUNK_FLOATS // (floats_per_resample or n_prompts))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        counts = rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=stop - start)
        yield start, stop, counts / n_prompts


def resample_weights(n_prompts: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[resample, prompt]``: every chunk of ``resample_weight_chunks`` at once (for small draws and tests)."""
    return np.concatenate([weights for _, _, weights in resample_weight_chunks(n_prompts, n_resamples, seed)])


def bootstrap_intervals(
    result: GainResult,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    method: str = DEFAULT_METHOD,
) -> Intervals:
    """Intervals over prompts for every per-layer gain of ``result``: t intervals (the default) or
    the percentile bootstrap (``method="percentile"``, drawing ``n_resamples`` with ``seed``).

    The intervals derive from the result's per-prompt norm sums alone, so ``funnel-tl report``
    can redraw them from results.json without a model.

    Args:
        result: a ``GainResult`` over at least 2 prompts; its ``[prompt, layer]`` per-prompt gains
            are what is resampled.
        n_resamples: resamples of the prompts with replacement: the percentile bootstrap's, or
            under ``"t"`` the products' studentized bootstrap (up to ``MAX_RESAMPLES``, and what
            memory allows: ``check_bootstrap``).
        seed: the random seed of the resamples; the same seed gives the same intervals.
        confidence: the intervals' coverage, between 0 and 1 (0.95: the 2.5th to 97.5th percentile).
        method: ``"t"`` or ``"percentile"`` (``METHODS``; the module docstring says how each draws).

    Returns:
        ``Intervals``: ``[layer, 2]`` bounds of the attn, mlp, block and combined gains over
        ``result.layers``, and of the cumulative gain over ``result.cumulative_layers``.

    Raises:
        FunnelError: an unknown method, no resample, a confidence outside (0, 1), fewer than 2
            prompts, or a bootstrap too large for memory.
    """
    if method not in METHODS:
        raise FunnelError(f"unknown interval method {method!r}: choose one of {', '.join(METHODS)}")
    if n_resamples < 1:
        raise FunnelError(f"the bootstrap needs at least one resample, got {n_resamples}")
    if not 0 < confidence < 1:
        raise FunnelError(f"confidence must lie between 0 and 1 (0.95 for 95%), got {confidence}")
    if result.n_prompts < 2:
        raise FunnelError(
            f"{result.model}: intervals over prompts need at least 2 prompts, got "
            f"{result.n_prompts}: give more prompts, or --bootstrap 0 to skip intervals"
        )
    n_layers = len(result.layers or ())  # the measured ones (None only before a result is built)
    check_bootstrap(n_resamples, result.n_prompts, n_layers, seed=seed)
    per_prompt = {component: result.per_prompt_gains(component) for component in ("attn", "mlp", "block")}
    prefix = len(result.cumulative_layers)  # a running product from layer 0 is exact over these only
    draw = _t_bounds if method == "t" else _percentile_bounds
    bounds = draw(per_prompt, prefix, confidence, n_resamples, seed)
    return Intervals(confidence=confidence, n_resamples=n_resamples, seed=seed, method=method, **bounds)


def _percentile_bounds(
    per_prompt: dict[str, np.ndarray], prefix: int, confidence: float, n_resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """``[layer, 2]`` percentile-bootstrap bounds of each gain from ``[prompt, layer]`` per-prompt gains."""
    n_prompts, n_layers = per_prompt["attn"].shape
    resampled: dict[str, np.ndarray] = {component: np.empty((n_resamples, n_layers)) for component in per_prompt}
    for start, stop, weights in resample_weight_chunks(n_prompts, n_resamples, seed):  # [resample, prompt]
        for component, gains in per_prompt.items():
            resampled[component][start:stop] = einops.einsum(
                weights, gains, "resample prompt, prompt layer -> resample layer"
            )
    resampled["combined"] = resampled["attn"] * resampled["mlp"]  # [resample, layer]
    resampled["cumulative"] = np.cumprod(resampled["combined"][:, :prefix], axis=1)  # [resample, layer]
    tail = 100 * (1 - confidence) / 2
    return {
        # [2, layer] -> [layer, 2] (np.percentile of a [resample, 0] array is [2, 0]: no prefix measured)
        component: einops.rearrange(np.percentile(values, [tail, 100 - tail], axis=0), "bound layer -> layer bound")
        for component, values in resampled.items()
    }


def _t_bounds(
    per_prompt: dict[str, np.ndarray], prefix: int, confidence: float, n_resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """``[layer, 2]`` bounds of each gain from ``[prompt, layer]`` per-prompt gains: t intervals
    of the means; studentized-bootstrap intervals of the log of the products (``_log_products``)."""
    n_prompts = per_prompt["attn"].shape[0]
    critical = t_critical(confidence, n_prompts - 1)
    bounds = {}
    for component, gains in per_prompt.items():
        mean = gains.mean(axis=0)  # [layer]
        half = critical * gains.std(axis=0, ddof=1) / math.sqrt(n_prompts)
        bounds[component] = np.stack([np.maximum(mean - half, 0.0), mean + half], axis=1)
    attn, mlp = per_prompt["attn"], per_prompt["mlp"]
    positive = (attn.mean(axis=0) > 0) & (mlp.mean(axis=0) > 0)  # a zero mean has no log: its product is 0
    zero = {"combined": ~positive, "cumulative": ~np.minimum.accumulate(positive)[:prefix]}
    # A zero mean is taken as 1 in the logs below (its bounds are set to 0 at the end).
    attn, mlp = np.where(positive, attn, 1.0), np.where(positive, mlp, 1.0)
    point = _log_products(attn, mlp, np.full((1, n_prompts), 1.0 / n_prompts), prefix)
    tail = (1 - confidence) / 2
    if n_prompts < MIN_STUDENTIZED:
        quantiles = {component: (-critical, critical) for component in point}  # the delta-method t interval
    else:
        draws = {component: np.empty((n_resamples, logs.shape[1])) for component, (logs, _) in point.items()}
        chunks = resample_weight_chunks(n_prompts, n_resamples, seed, floats_per_resample=n_prompts * max(prefix, 1))
        for start, stop, weights in chunks:  # [resample, prompt]
            for component, (logs, errors) in _log_products(attn, mlp, weights, prefix).items():
                # The resample's statistic studentized by its own standard error (floored: a resample of
                # one prompt repeated has none, and lands in the far tail, as it should).
                draws[component][start:stop] = (logs - point[component][0]) / np.maximum(errors, 1e-300)
        quantiles = {
            component: tuple(np.quantile(values, [tail, 1 - tail], axis=0)) for component, values in draws.items()
        }
    for component, (logs, errors) in point.items():
        low, high = quantiles[component]
        # The studentized bootstrap: θ̂ − q(1−α/2)·se to θ̂ − q(α/2)·se, on the log, then exp.
        interval = np.exp(np.stack([logs[0] - high * errors[0], logs[0] - low * errors[0]], axis=1))
        bounds[component] = np.where(zero[component][:, None], 0.0, interval)  # [layer, 2]
    return bounds


# Below this many prompts the products' intervals are delta-method t intervals: a studentized
# bootstrap draws one prompt repeated (no standard error, an infinite statistic) in 1/n**(n-1)
# of its resamples, more than its 2.5% tails at 2 or 3 prompts.
MIN_STUDENTIZED = 5


def _log_products(attn: np.ndarray, mlp: np.ndarray, weights: np.ndarray, prefix: int) -> dict:
    """``{component: (log, standard error)}``, each ``[resample, layer]``, of combined (log ā + log m̄)
    and cumulative (their running sum over the first ``prefix`` layers), for each row of
    ``weights`` (``[resample, prompt]``, rows summing to 1: a resample's prompt weights).

    The standard error is the delta method's: prompt i's influence on log(ā·m̄) is aᵢ/ā + mᵢ/m̄
    (on the running sum, its sum over the layers up to L), and the error is the weighted sd of the
    influences over √n, with the n − 1 divisor.
    """
    n_prompts = attn.shape[0]
    attn_mean, mlp_mean = weights @ attn, weights @ mlp  # [resample, layer]
    logs = np.log(attn_mean) + np.log(mlp_mean)

    def error(influence, centre):  # influence [resample, prompt, layer]; its weighted mean is centre
        variance = einops.einsum(
            weights, (influence - centre) ** 2, "resample prompt, resample prompt layer -> resample layer"
        )
        return np.sqrt(variance * n_prompts / (n_prompts - 1) / n_prompts)

    # Σᵢ wᵢ aᵢ/ā = 1 for each factor: the influences' weighted mean is 2 per layer, 2(L + 1) summed.
    influence = attn[None] / attn_mean[:, None] + mlp[None] / mlp_mean[:, None]  # [resample, prompt, layer]
    combined = (logs, error(influence, 2.0))
    running = np.cumsum(influence[:, :, :prefix], axis=2)
    cumulative = (np.cumsum(logs[:, :prefix], axis=1), error(running, 2.0 * np.arange(1, prefix + 1)))
    return {"combined": combined, "cumulative": cumulative}


@functools.lru_cache(maxsize=256)
def t_critical(confidence: float, df: int) -> float:
    """The two-sided Student-t critical value: P(|T| ≤ t) = ``confidence`` for T ~ t(``df``).

    Exact for whole ``df``: P(|T| ≤ √df·tan θ) is a finite series in sin θ and cos θ (Abramowitz
    and Stegun 26.7.3–4), solved for θ by bisection to float precision.

    >>> round(t_critical(0.95, 7), 4), round(t_critical(0.95, 10**5), 4)  # the t table; the normal 1.96
    (2.3646, 1.96)
    """
    if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or df < 1:
        raise FunnelError(f"a t interval needs at least one degree of freedom (2 prompts), got {df!r}")
    if not 0 < confidence < 1:
        raise FunnelError(f"confidence must lie between 0 and 1, got {confidence}")
    df = int(df)
    odd = df % 2
    # Terms of the series: even df, Π (2k-1)/(2k) cos²θ for k = 1..df/2-1; odd, Π 2k/(2k+1) cos²θ up to (df-3)/2.
    k = np.arange(1, (df - 1) // 2 if odd else df // 2, dtype=np.float64)
    ratios = 2 * k / (2 * k + 1) if odd else (2 * k - 1) / (2 * k)

    def inside(theta: float) -> float:  # P(|T| <= sqrt(df) tan theta)
        sine, cosine = math.sin(theta), math.cos(theta)
        series = 1.0 + float(np.cumprod(ratios * cosine**2).sum()) if k.size else 1.0
        if not odd:
            return sine * series
        return 2 / math.pi * (theta + (sine * cosine * series if df > 1 else 0.0))

    low, high = 0.0, math.pi / 2
    for _ in range(64):  # halves the bracket to below one float spacing of pi/2
        middle = (low + high) / 2
        low, high = (middle, high) if inside(middle) < confidence else (low, middle)
    return math.sqrt(df) * math.tan((low + high) / 2)


@dataclass(frozen=True)
class Dominance:
    """A layer's mean that one prompt dominates (``dominant_prompts``): the gain over all prompts
    lies outside the interval of the gain over the others, so it is that prompt's, not the set's."""

    component: str  # attn, mlp or block
    layer: int  # the true layer index
    prompt: int  # the prompt's index in the result
    gain: float  # the layer's gain, over all prompts
    prompt_gain: float  # that prompt's own gain
    gain_without: float  # the mean over the other prompts
    interval_without: tuple[float, float]  # their t interval

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": INTERVAL_KEYS[self.component],
            "layer": self.layer,
            "prompt": self.prompt,
            "gain": self.gain,
            "prompt_gain": self.prompt_gain,
            "gain_without": self.gain_without,
            "interval_without": list(self.interval_without),
        }

    def describe(self) -> str:
        """``MLP L11: prompt 85 (gain 184.2); the other prompts 9.41 [8.10, 10.72]``"""
        name = {"attn": "attention", "mlp": "MLP", "block": "block"}[self.component]
        low, high = self.interval_without
        return (
            f"{name} L{self.layer} {self.gain:.4g}: prompt {self.prompt} alone {self.prompt_gain:.4g}, the "
            f"others {self.gain_without:.4g} [{low:.4g}, {high:.4g}]"
        )


def dominant_prompts(result: GainResult, confidence: float = DEFAULT_CONFIDENCE) -> list[Dominance]:
    """The layers (attn, mlp, block) whose mean one prompt dominates, with that prompt.

    A prompt dominates a layer's mean when the mean over all n prompts lies outside the
    ``confidence`` t interval of the mean over the other n − 1: adding that one prompt moves the
    gain further than the rest of the set says it can be trusted, so the reported gain describes
    that prompt more than the set. Then no interval over these prompts is reliable: the population
    has prompts like it, rare enough that another set of the same size may hold none (SmolLM2-135M
    without position 0: a second massive token in ~3% of passages makes MLP 11's gain 184 where
    it is 9 elsewhere). Read the gain without it, or measure more prompts.

    A criterion on the prompt's share of the sum ("more than all the others together") would
    never fire from ~20 prompts on, however far one prompt lies, while the intervals keep
    claiming a precision the set does not have; this one scales with the claimed precision.
    On SmolLM2's clean layers it fires in 1–4% of 8-prompt sets and almost never from 16 on; at
    MLP 11 without position 0 in 26% of 8-prompt sets and 52% of 32-prompt sets
    (``tests/test_coverage.py``). Needs 3 prompts (an interval over the other two); one flag per
    layer and component, the prompt that moves the mean most.

    Args:
        result: a ``GainResult``; its attn, mlp and block ``[prompt, layer]`` per-prompt gains
            are read.
        confidence: the coverage of the t interval over the other prompts.

    Returns:
        One ``Dominance`` per dominated layer and component (``layer`` a true index), none below
        3 prompts.

    >>> from funnel_tl.results.gains import GainResult
    >>> gains = np.array([[1.0], [1.1], [0.9], [1.0], [9.0]])  # [prompt, layer]: prompt 4 far off
    >>> result = GainResult(model="toy", definition="seed", n_layers=1, d_model=8, parallel_blocks=True,
    ...                     prompts=tuple("abcde"), n_tokens=[1] * 5,
    ...                     out_sums={c: gains for c in ("attn", "mlp", "block")},
    ...                     in_sums={c: np.ones((5, 1)) for c in ("attn", "mlp", "block")})
    >>> print(dominant_prompts(result)[0].describe())
    attention L0 2.6: prompt 4 alone 9, the others 1 [0.8701, 1.13]
    """
    n, layers = result.n_prompts, result.layers or ()
    if n < 3:
        return []
    critical = t_critical(confidence, n - 2)
    found = []
    for component in ("attn", "mlp", "block"):
        gains = result.per_prompt_gains(component)  # [prompt, layer]
        mean = gains.mean(axis=0)
        without = (gains.sum(axis=0) - gains) / (n - 1)  # [prompt, layer]: each left out in turn
        # Σ_{j≠i} (x_j − mean_{−i})² = Σ_j (x_j − mean)² − (x_i − mean)² − (n − 1)(mean_{−i} − mean)²
        squares = ((gains - mean) ** 2).sum(axis=0) - (gains - mean) ** 2 - (n - 1) * (without - mean) ** 2
        half = critical * np.sqrt(np.maximum(squares, 0) / (n - 2)) / math.sqrt(n - 1)
        # A float-rounding floor: prompts with equal gains differ by ~1e-16 and dominate nothing.
        moved = np.abs(mean - without) - np.maximum(half, 1e-9 * np.abs(mean))  # > 0: outside
        for row in np.flatnonzero((moved > 0).any(axis=0)):
            prompt = int(np.argmax(np.abs(mean[row] - without[:, row]) / np.maximum(half[:, row], 1e-300)))
            found.append(
                Dominance(
                    component=component,
                    layer=int(layers[row]),
                    prompt=prompt,
                    gain=float(mean[row]),
                    prompt_gain=float(gains[prompt, row]),
                    gain_without=float(without[prompt, row]),
                    interval_without=(
                        float(without[prompt, row] - half[prompt, row]),
                        float(without[prompt, row] + half[prompt, row]),
                    ),
                )
            )
    return found


def mean_intervals(
    values: Float[np.ndarray, "prompt ..."],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    method: str = DEFAULT_METHOD,
) -> Float[np.ndarray, "... 2"]:
    """``[..., 2]`` intervals of the mean over prompts of per-prompt ``values`` ``[prompt, ...]``.

    The interval a per-layer gain has (``bootstrap_intervals`` for attn, mlp and block), for any
    statistic that is a mean of per-prompt values: the effects' Δloss and KL, and paired
    differences of them. ``method`` as there: ``"t"``, mean ± t(n−1) · sd / √n (unclamped: a
    Δloss or a difference may be negative); ``"percentile"``, the percentile bootstrap with the
    same resample weights (``n_resamples``, ``seed``) as the gains'.

    Args:
        values: ``[prompt, ...]`` one value per prompt of each statistic (``[prompt, layer]``
            for a per-layer one), at least 2 prompts.
        n_resamples: resamples of the prompts for ``"percentile"`` (unused by ``"t"``).
        seed: the random seed of the resamples.
        confidence: the intervals' coverage, between 0 and 1.
        method: ``"t"`` or ``"percentile"``.

    Returns:
        ``[..., 2]``: the lower and upper bound of the mean of each statistic (``[layer, 2]``
        for ``[prompt, layer]`` values).

    >>> values = np.array([[0.5, 2.0], [0.6, 2.2], [0.4, 1.8]])   # [prompt, layer]
    >>> [round(float(bound), 3) for bound in mean_intervals(values)[0]]  # 0.5 ± t(2) · 0.1 / √3
    [0.252, 0.748]
    >>> mean_intervals(values, method="percentile", n_resamples=1000).shape
    (2, 2)
    """
    if method not in METHODS:
        raise FunnelError(f"unknown interval method {method!r}: choose one of {', '.join(METHODS)}")
    values = np.asarray(values, dtype=np.float64)
    n_prompts = values.shape[0]
    if n_prompts < 2:
        raise FunnelError(
            f"an interval over prompts needs at least 2 prompts, got {n_prompts}: give more prompts, "
            "or --bootstrap 0 to skip intervals"
        )
    if n_resamples < 1:
        raise FunnelError(f"the bootstrap needs at least one resample, got {n_resamples}")
    if not 0 < confidence < 1:
        raise FunnelError(f"confidence must lie between 0 and 1 (0.95 for 95%), got {confidence}")
    flat = values.reshape(n_prompts, -1)  # [prompt, statistic]
    if method == "t":
        mean = flat.mean(axis=0)
        half = t_critical(confidence, n_prompts - 1) * flat.std(axis=0, ddof=1) / math.sqrt(n_prompts)
        bounds = np.stack([mean - half, mean + half])  # [2, statistic]
    else:
        resampled = np.empty((n_resamples, flat.shape[1]))
        for start, stop, weights in resample_weight_chunks(n_prompts, n_resamples, seed):  # [resample, prompt]
            resampled[start:stop] = weights @ flat
        tail = 100 * (1 - confidence) / 2
        bounds = np.percentile(resampled, [tail, 100 - tail], axis=0)  # [2, statistic]
    return einops.rearrange(bounds, "bound statistic -> statistic bound").reshape(*values.shape[1:], 2)
