"""Gain beside effect: which sublayers the model relies on, and whether the funnel says so.

From an ``EffectResult`` (effects and gains of the same prompts and layers):

- **reliance**: every measured sublayer ranked by the Δloss of one intervention (``zero`` when
  measured), each with its interval, and whether the first is *separable* from the second: the
  interval of their paired difference (per prompt, the first's Δloss minus the second's; the same
  prompts make the comparison paired, far tighter than two intervals side by side) lies above 0;
- **rank correlation** per component: Spearman's ρ over layers between |log gain| (how far the
  sublayer expands or contracts what it reads) and Δloss, with a bootstrap interval over prompts
  (each resample's gains and effects from the same resampled prompts);
- **the last MLP**: is the expanding last-layer MLP (the Funnel Model's one expanding MLP) the
  MLP the model can least do without? Answered from the paired differences: "yes" only
  when the last MLP's Δloss exceeds every other MLP's on the intervals, "no" when some MLP's
  exceeds it on the intervals, else "not separable" naming the MLPs it cannot be told from.

Intervals of means and paired differences are ``stats.mean_intervals`` (the gains' method: t
intervals by default) with the settings of the result's own intervals; Spearman's ρ, no mean, gets
the percentile bootstrap over prompts. Without intervals only point estimates are given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from funnel_tl.analysis.stats import mean_intervals, resample_weight_chunks
from funnel_tl.components import EFFECT_COMPONENTS, GAIN_COMPONENT
from funnel_tl.errors import FunnelError

if TYPE_CHECKING:  # results.effects imports this module (EffectResult.reading)
    from funnel_tl.results.effects import EffectResult
    from funnel_tl.results.gains import GainResult

NAMES = {"attention": "attention", "mlp": "MLP"}
# How many sublayers the printed reading ranks.
TOP = 5
# A rank correlation over fewer layers is ±1 or nearly, whatever the model: not reported.
MIN_LAYERS_FOR_RANKS = 4


@dataclass(frozen=True)
class Sublayer:
    """One sublayer's effect under the reading's intervention, with its gain."""

    component: str
    layer: int
    delta_loss: float
    interval: tuple[float, float] | None
    gain: float
    gain_interval: tuple[float, float] | None

    @property
    def label(self) -> str:
        return f"{NAMES[self.component]} L{self.layer}"


@dataclass(frozen=True)
class Correlation:
    component: str
    spearman: float | None  # None: fewer than MIN_LAYERS_FOR_RANKS layers, or constant gains or effects
    interval: tuple[float, float] | None
    # The same correlation with the gains of positions >= 1 (``GainResult.without_first(1)``): an
    # attention sink's first token can make a layer's gain (SmolLM2's MLP L11: 485 with it, 9.6
    # without), so a ρ that holds only with position 0 is the sink's, not the layers'. None where
    # the gains already leave position 0 out (drop_first >= 1) or cannot (an older file).
    from_position_1: float | None = None
    from_position_1_interval: tuple[float, float] | None = None


@dataclass(frozen=True)
class LastMLP:
    """The answer to "is the expanding last-layer MLP the most important MLP?"."""

    answer: str  # "yes", "no", "not separable", "not measured"
    layer: int
    gain: float | None
    gain_interval: tuple[float, float] | None
    expands: str | None  # "expands", "contracts", "undetermined" (interval straddles 1)
    delta_loss: float | None
    interval: tuple[float, float] | None
    rank: int | None  # 1 = the largest Δloss of the measured MLPs
    top_layer: int | None  # the MLP with the largest Δloss
    # Paired differences last MLP minus each other MLP whose interval includes 0 (not separable),
    # or, when another MLP matters more, that MLP minus the last one.
    ties: tuple[int, ...] = ()
    difference: tuple[float, float, float] | None = None  # (mean, lo, hi) of the decisive paired difference


@dataclass(frozen=True)
class GainVersusEffect:
    intervention: str
    ranking: tuple[Sublayer, ...]  # every measured sublayer, largest Δloss first
    first_separable: bool | None  # the first from the second on the paired interval; None without intervals
    first_difference: tuple[float, float, float] | None  # (mean, lo, hi) of first minus second
    correlations: dict[str, Correlation]
    last_mlp: LastMLP
    confidence: float | None

    def to_dict(self) -> dict[str, Any]:
        """The ``analysis`` block of effects.json."""
        return {
            "intervention": self.intervention,
            "confidence": self.confidence,
            "ranking": [
                {**asdict(s), "interval": _list(s.interval), "gain_interval": _list(s.gain_interval)}
                for s in self.ranking
            ],
            "first_separable": self.first_separable,
            "first_difference": _list(self.first_difference),
            "spearman_abs_log_gain_vs_delta_loss": {
                c: {"rho": r.spearman, "interval": _list(r.interval)} for c, r in self.correlations.items()
            },
            "spearman_abs_log_gain_from_position_1_vs_delta_loss": {
                c: {"rho": r.from_position_1, "interval": _list(r.from_position_1_interval)}
                for c, r in self.correlations.items()
            },
            "last_mlp": {
                **asdict(self.last_mlp),
                "gain_interval": _list(self.last_mlp.gain_interval),
                "interval": _list(self.last_mlp.interval),
                "ties": list(self.last_mlp.ties),
                "difference": _list(self.last_mlp.difference),
            },
        }


def _list(values):
    return None if values is None else [float(v) for v in values]


def reading_intervention(result: EffectResult) -> str:
    """The intervention the reading ranks by: ``zero`` (removing the sublayer) when measured."""
    return "zero" if "zero" in result.interventions else result.interventions[0]


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ between the last axes of ``x`` and ``y`` ``[..., n]`` (ties get their mean rank); NaN
    where either is constant.

    >>> float(spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0])))
    0.5
    """
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(axis=-1, keepdims=True), ry - ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(axis=-1) * (ry**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (rx * ry).sum(axis=-1) / np.where(denominator > 0, denominator, 1), np.nan)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties averaged (as ``scipy.stats.rankdata``)."""
    order = np.argsort(values, axis=-1, kind="stable")
    ranks = np.empty_like(values)
    np.put_along_axis(ranks, order, np.arange(values.shape[-1], dtype=np.float64) * np.ones_like(values), axis=-1)
    flat, out = values.reshape(-1, values.shape[-1]), ranks.reshape(-1, values.shape[-1])
    for row in range(flat.shape[0]):  # average the ranks of ties (rare in measured values: loop kept simple)
        unique, inverse, counts = np.unique(flat[row], return_inverse=True, return_counts=True)
        if len(unique) < flat.shape[1]:
            sums = np.bincount(inverse, weights=out[row])
            out[row] = (sums / counts)[inverse]
    return out.reshape(values.shape)


def gain_versus_effect(result: EffectResult, intervention: str | None = None) -> GainVersusEffect:
    """The reading of ``result`` (see the module docstring), by ``intervention`` (default ``reading_intervention``)."""
    name = intervention or reading_intervention(result)
    intervals = result.intervals
    settings: dict[str, Any] | None = (
        dict(
            n_resamples=intervals.n_resamples,
            seed=intervals.seed,
            confidence=intervals.confidence,
            method=intervals.method,
        )
        if intervals is not None and result.n_prompts >= 2
        else None
    )
    gain_intervals = result.gains.intervals
    sublayers = []
    for component in EFFECT_COMPONENTS:
        effect, gains = result.effect("delta_loss", name, component), result.gain(component)
        bounds = intervals.of("delta_loss", name, component) if intervals is not None else None
        gain_bounds = gain_intervals.of(GAIN_COMPONENT[component]) if gain_intervals is not None else None
        for row, layer in enumerate(result.layers):
            sublayers.append(
                Sublayer(
                    component, layer, float(effect[row]), _pair(bounds, row), float(gains[row]), _pair(gain_bounds, row)
                )
            )
    ranking = tuple(sorted(sublayers, key=lambda s: -s.delta_loss))

    def values(sublayer: Sublayer) -> np.ndarray:  # [prompt]
        return result.per_prompt("delta_loss", name, sublayer.component)[:, result.layers.index(sublayer.layer)]

    def paired(first: Sublayer, second: Sublayer) -> tuple[float, float, float]:
        assert settings is not None  # called only where intervals are drawn
        difference = values(first) - values(second)
        low, high = mean_intervals(difference[:, None], **settings)[0]
        return float(difference.mean()), float(low), float(high)

    first_separable = first_difference = None
    if settings is not None and len(ranking) > 1:
        first_difference = paired(ranking[0], ranking[1])
        first_separable = first_difference[1] > 0

    later = _gains_from_position_1(result)
    sources = [result.gains] if later is None else [result.gains, later]
    correlations = {}
    for component in EFFECT_COMPONENTS:
        if len(result.layers) < MIN_LAYERS_FOR_RANKS:
            correlations[component] = Correlation(component, None, None)
            continue
        effects = result.effect("delta_loss", name, component)  # [layer]
        per_prompt_effects = result.per_prompt("delta_loss", name, component)  # [prompt, layer]
        # The gains of all counted positions, then (where there are) those from position 1.
        per_prompt = [gains.per_prompt_gains(GAIN_COMPONENT[component]) for gains in sources]  # [prompt, layer] each
        rhos = [spearman(np.abs(np.log(gains.gains(GAIN_COMPONENT[component]))), effects) for gains in sources]
        rho_bounds: list[tuple[float, float] | None] = [None] * len(rhos)
        if settings is not None:
            resampled = np.empty((len(rhos), settings["n_resamples"]))
            # A correlation is no mean: its interval is the percentile bootstrap whatever the method.
            # Both correlations from the same resamples of the prompts.
            for start, stop, weights in resample_weight_chunks(
                result.n_prompts, settings["n_resamples"], settings["seed"]
            ):  # [resample, prompt]
                resampled_effects = weights @ per_prompt_effects  # [resample, layer]
                for index, gains_of_prompts in enumerate(per_prompt):
                    resampled[index, start:stop] = spearman(
                        np.abs(np.log(weights @ gains_of_prompts)), resampled_effects
                    )
            rho_bounds = [_percentile_interval(row, settings["confidence"]) for row in resampled]
        finite = [None if not np.isfinite(rho) else float(rho) for rho in rhos]
        correlations[component] = Correlation(
            component,
            finite[0],
            rho_bounds[0],
            from_position_1=finite[1] if later is not None else None,
            from_position_1_interval=rho_bounds[1] if later is not None else None,
        )

    return GainVersusEffect(
        intervention=name,
        ranking=ranking,
        first_separable=first_separable,
        first_difference=first_difference,
        correlations=correlations,
        last_mlp=_last_mlp(result, ranking, paired if settings is not None else None),
        confidence=settings["confidence"] if settings is not None else None,
    )


def _gains_from_position_1(result: EffectResult) -> GainResult | None:
    """The effects' gains without position 0, for the same prompts; None where the gains leave it
    out already (``drop_first >= 1``) or cannot (a file without the sums from position 1)."""
    if result.gains.drop_first >= 1:
        return None
    try:
        later = result.gains.without_first(1)
    except FunnelError:
        return None
    # Every prompt of an effect has a next token to predict, so it keeps a token after position 0.
    return later if later.n_prompts == result.n_prompts else None


def _percentile_interval(resampled: np.ndarray, confidence: float) -> tuple[float, float] | None:
    finite = resampled[np.isfinite(resampled)]
    if not finite.size:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _pair(bounds, row) -> tuple[float, float] | None:
    return None if bounds is None else (float(bounds[row, 0]), float(bounds[row, 1]))


def _last_mlp(result: EffectResult, ranking, paired) -> LastMLP:
    last = result.n_layers - 1
    if last not in result.layers:
        return LastMLP("not measured", last, None, None, None, None, None, None, None)
    mlps = [s for s in ranking if s.component == "mlp"]  # largest Δloss first
    mine = next(s for s in mlps if s.layer == last)
    rank = mlps.index(mine) + 1
    expands = None
    if mine.gain_interval is not None:
        low, high = mine.gain_interval
        expands = "expands" if low > 1 else "contracts" if high < 1 else "undetermined"
    elif math.isfinite(mine.gain):
        expands = "expands" if mine.gain > 1 else "contracts"
    common = dict(
        layer=last,
        gain=mine.gain,
        gain_interval=mine.gain_interval,
        expands=expands,
        delta_loss=mine.delta_loss,
        interval=mine.interval,
        rank=rank,
        top_layer=mlps[0].layer,
    )
    if len(mlps) == 1:
        return LastMLP("yes", **common)
    if paired is None:  # point estimates only
        return LastMLP("yes" if rank == 1 else "no", **common)
    if rank == 1:
        differences = {s.layer: paired(mine, s) for s in mlps[1:]}
        ties = tuple(layer for layer, (_, low, _) in differences.items() if low <= 0)
        closest = differences[mlps[1].layer]
        return LastMLP("not separable" if ties else "yes", ties=ties, difference=closest, **common)
    top = mlps[0]
    difference = paired(top, mine)
    return LastMLP(
        "no" if difference[1] > 0 else "not separable",
        ties=(top.layer,) if difference[1] <= 0 else (),
        difference=difference,
        **common,
    )


# ---- the printed reading ------------------------------------------------------------------------
def _interval(bounds) -> str:
    return "" if bounds is None else f" [{bounds[0]:.3g}, {bounds[1]:.3g}]"


def format_effects(result: EffectResult) -> str:
    """The printed analysis: a table of effects beside gains, the sublayers relied on most, the rank
    correlation, and the answer about the last MLP."""
    reading = gain_versus_effect(result)
    name = reading.intervention
    percent = f"{100 * reading.confidence:g}%" if reading.confidence is not None else None
    how = "" if result.intervals is None else (" t" if result.intervals.method == "t" else " percentile-bootstrap")
    clean = result.mean_clean_loss
    clean_bounds = result.intervals.clean_loss if result.intervals is not None else None
    definition = result.gains.definition
    lines = [
        f"Effects of each sublayer on {result.model}'s next-token loss: {result.n_prompts} prompts, "
        f"{int(result.n_predicted.sum())} predicted tokens"
        + (f" (first {result.drop_first} positions not scored)" if result.drop_first else "")
        + f"; clean loss {clean:.3f} nats{_interval(clean_bounds)}.",
        "Each sublayer's contribution to the residual stream replaced (zero: by 0; mean: by its mean over the "
        "prompts' tokens; scale:s: by s times itself); Δloss = loss with it minus without, in nats, mean over "
        "prompts" + (f", [{percent}{how} interval over prompts]" if percent else "") + ".",
        "",
    ]
    names = result.interventions
    width = max(9, *(len(n) + 1 for n in names))
    header = (
        f"{'layer':>5}  {'attn gain':>9}  "
        + "".join(f"{n:>{width}}" for n in names)
        + f"   {'MLP gain':>9}  "
        + "".join(f"{n:>{width}}" for n in names)
    )
    lines += [
        f"{'':>5}  {'':>9}  {'attention Δloss':^{width * len(names)}}   {'':>9}  {'MLP Δloss':^{width * len(names)}}",
        header,
    ]
    effects = {(n, c): result.effect("delta_loss", n, c) for n in names for c in EFFECT_COMPONENTS}
    gains = {c: result.gain(c) for c in EFFECT_COMPONENTS}
    for row, layer in enumerate(result.layers):
        cells = [f"{layer:>5}"]
        for component in EFFECT_COMPONENTS:
            cells.append(
                f"{gains[component][row]:>9.3g}  "
                + "".join(f"{effects[(n, component)][row]:>{width}.3g}" for n in names)
            )
        lines.append("  ".join(cells[:2]) + "   " + cells[2])
    lines.append(f"(gains: definition={definition}; KL and every interval in effects.json and effects.html)")
    lines.append("")

    lines.append(f"Relied on most ({name}: Δloss" + (f" [{percent} interval]" if percent else "") + ", gain):")
    for place, sublayer in enumerate(reading.ranking[:TOP], 1):
        lines.append(
            f"  {place}. {sublayer.label:<14} {sublayer.delta_loss:8.3g}{_interval(sublayer.interval):<22}"
            f" gain {sublayer.gain:.3g}"
        )
    lines += [""] + [line + "\n" for line in summary_lines(result, reading)[1:]]
    return "\n".join(lines).rstrip()


def summary_lines(result: EffectResult, reading: GainVersusEffect | None = None) -> list[str]:
    """The reading in sentences: the sublayers relied on most, whether the first stands apart, the
    rank correlation per component, and the answer about the last MLP (printed and on effects.html)."""
    reading = reading or gain_versus_effect(result)
    name = reading.intervention
    percent = f"{100 * reading.confidence:g}%" if reading.confidence is not None else None
    ranked = "; ".join(f"{s.label} {s.delta_loss:.3g}{_interval(s.interval)}" for s in reading.ranking[:TOP])
    lines = [
        f"Relied on most ({name} ablation, Δloss in nats"
        + (f", {percent} intervals" if percent else "")
        + f"): {ranked}."
    ]
    if reading.first_difference is not None:
        mean, low, high = reading.first_difference
        first, second = reading.ranking[0], reading.ranking[1]
        lines.append(
            f"{first.label} costs "
            + (
                "more than any other sublayer on these prompts"
                if reading.first_separable
                else f"about as much as {second.label}: their paired difference's interval includes 0"
            )
            + f" (paired difference {mean:.3g} [{low:.3g}, {high:.3g}])."
        )
    for component, correlation in reading.correlations.items():
        label = f"Gain against effect, {NAMES[component]}: Spearman's ρ over layers between |log gain| and {name} Δloss"
        if correlation.spearman is None:
            lines.append(
                f"{label}: not given ({len(result.layers)} layers measured; a rank correlation needs "
                f"{MIN_LAYERS_FOR_RANKS})."
                if len(result.layers) < MIN_LAYERS_FOR_RANKS
                else f"{label} is undefined (constant gains or effects)."
            )
            continue
        note = ""
        if correlation.interval is not None:
            low, high = correlation.interval
            note = (
                " ("
                + (f"{percent} bootstrap interval; " if percent else "")
                + (
                    "no clear relation: the interval includes 0"
                    if low <= 0 <= high
                    else "sublayers that change their input's norm more matter more"
                    if low > 0
                    else "sublayers that change their input's norm more matter less"
                )
                + ")"
            )
        line = f"{label}: ρ = {correlation.spearman:+.2f}{_interval(correlation.interval)}{note}"
        if correlation.from_position_1 is not None:
            line += (
                f"; with gains from position 1 (an attention sink's first token left out): "
                f"ρ = {correlation.from_position_1:+.2f}"
                f"{_interval(correlation.from_position_1_interval)}"
            )
        lines.append(line + ".")
    lines.append(
        "Is the expanding last-layer MLP the most important MLP? " + _last_mlp_answer(reading, result.gains.definition)
    )
    return lines


def _last_mlp_answer(reading: GainVersusEffect, definition: str) -> str:
    last = reading.last_mlp
    if last.answer == "not measured":
        return f"not measured (layer {last.layer} is not among the measured layers)."
    gain = f"its gain is {last.gain:.3g}{_interval(last.gain_interval)} ({last.expands}, definition={definition})"
    effect = f"its {reading.intervention} ablation costs {last.delta_loss:.3g}{_interval(last.interval)} nats"
    mlps = sum(1 for s in reading.ranking if s.component == "mlp")
    if last.answer == "yes":
        if reading.confidence is None and mlps > 1:
            return f"Yes, on the point estimates (no intervals drawn): {effect}, the most of the {mlps} MLPs; {gain}."
        tail = (
            ""
            if last.difference is None
            else (
                f"; it exceeds the next MLP by {last.difference[0]:.3g} [{last.difference[1]:.3g}, "
                f"{last.difference[2]:.3g}]"
            )
        )
        return f"Yes: {effect}, the most of the {mlps} MLPs measured{tail}; {gain}."
    if last.answer == "no":
        if last.difference is None:  # point estimates only
            return (
                f"No, on the point estimates (no intervals drawn): {effect} ({_ordinal(last.rank)} of {mlps} "
                f"MLPs), MLP L{last.top_layer} costs more; {gain}."
            )
        mean, low, high = last.difference
        return (
            f"No: {effect} ({_ordinal(last.rank)} of {mlps} MLPs), while MLP L{last.top_layer} costs more by "
            f"{mean:.3g} [{low:.3g}, {high:.3g}] (paired over prompts); {gain}."
        )
    ties = ", ".join(f"L{layer}" for layer in last.ties)
    where = (
        "the largest point estimate"
        if last.rank == 1
        else f"{_ordinal(last.rank)} of {mlps} MLPs (MLP L{last.top_layer} is first)"
    )
    return (
        f"Not separable: {effect}, {where}, but the paired intervals do not tell it from MLP {ties}; {gain}. "
        "More prompts would decide it."
    )


def _ordinal(n: int | None) -> str:
    if n is None:  # not ranked (no MLP measured)
        return "unranked"
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
