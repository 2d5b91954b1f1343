"""The figures' style: colours, log axes and their ticks, gain traces, legends and layout."""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go

from funnel_tl.analysis.criteria import not_testable
from funnel_tl.prompts.tokens import dropped_phrase
from funnel_tl.results.folders import short_name

# Okabe & Ito (2008), "Color Universal Design": distinguishable with any common colour blindness.
# The seed's blue/red become blue/vermillion; its green/purple bars orange/sky blue.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
COLORS = {
    "attn": "#0072B2",  # blue
    "mlp": "#D55E00",  # vermillion
    "block": "#3a3a3a",
    "expanding": "#E69F00",  # orange: expands (as red does on the diverging heatmaps)
    "contracting": "#56B4E9",  # sky blue: contracts
    "expanding edge": "#7a4f00",  # their error bars, darker: apart from the block gain's
    "contracting edge": "#1f5f82",
    "reference": "#009E73",  # bluish green: Pythia-1.4B's reference
    "neutral": "#7f7f7f",
    "bottleneck": "#D55E00",
    "output": "#009E73",
}
# Heatmaps of gains colour log10(gain) on this scale, symmetric about 0 (gain 1, white): blue
# contracts, red expands, equal ratios get equal colours either side. Colour-blind safe.
DIVERGING = "RdBu_r"
NAMES = {"attn": "attention", "mlp": "MLP", "block": "block", "combined": "attn × MLP", "cumulative": "cumulative"}
# Big enough for 2×2 panels with legible labels on a slide; also the PNG size (at scale 2).
WIDTH, HEIGHT = 1400, 1000
MARGIN = dict(t=110, l=70, r=30, b=90)
# A gain panel goes to a log axis when its largest value (1 included) is this many times its
# smallest: on a linear axis the small gains would then sit flat on zero.
LOG_SPAN = 30
# Bars are this many layers wide (Plotly's default would be the smallest gap between bars).
BAR_WIDTH = 0.8
# Below the tick labels and the x-axis title of a panel, where its legend starts.
LEGEND_DROP_PX = 62


# ---- building blocks --------------------------------------------------------------------------
def intervals_of(result, component: str):
    intervals = getattr(result, "intervals", None)
    return None if intervals is None else intervals.of(component)


def _gain_values(result, component: str) -> np.ndarray:
    if component == "combined":
        return result.combined_gains
    if component == "cumulative":
        return result.cumulative_gains
    return result.gains(component)


def gain_trace(result, component, x, legend, name=None, symbol="circle", x_label="layer"):
    """Line + markers of one component's gain per layer, with interval error bars and hover (which
    also gives, where the result has them, the gain without position 0 and the median per-token gain)."""
    gains = _gain_values(result, component)
    intervals = intervals_of(result, component)
    layers = np.asarray(result.layers)
    extra = _hover_extras(result, component)
    x, gains, intervals, layers = broken_at_gaps(layers, x, gains, intervals)
    extra = [(label, broken_at_gaps(np.asarray(result.layers), values, values, None)[1]) for label, values in extra]
    color = COLORS[component]
    return go.Scatter(
        x=x,
        y=gains,
        mode="lines+markers",
        name=name or f"{NAMES[component]} gain",
        legend=legend,
        line=dict(color=color, width=2),
        marker=dict(size=6, color=color, symbol=symbol),
        hoveron="points",
        **error_bars(gains, intervals, color),
        **hover_template(result, component, layers, gains, intervals, x_label=x_label, extra=extra),
    )


def _hover_extras(result, component) -> list[tuple[str, np.ndarray]]:
    """Hover lines beside a gain: its value without position 0 and the median per-token gain."""
    extra = []
    if component in ("attn", "mlp", "block", "combined") and result.drop_first == 0:
        without = result.gains_without_first(component)
        if without is not None:
            extra.append(("without position 0", without))
    median = result.median_gains(component) if component in ("attn", "mlp", "block") else None
    if median is not None:
        extra.append(("median per-token gain", median))
    return extra


def without_first_values(result, components) -> list[float]:
    """The gains without position 0 a panel also draws (for its axis range)."""
    if result.drop_first:
        return []
    values = [result.gains_without_first(component) for component in components]
    return [float(v) for array in values if array is not None for v in array]


def without_first_trace(result, component, layers, legend):
    """The gain over positions >= 1, dashed, in the component's colour; None where not measured."""
    without = result.gains_without_first(component) if result.drop_first == 0 else None
    if without is None:
        return None
    x, values, _, hovered = broken_at_gaps(layers, layers, without, None)
    color = COLORS[component]
    return go.Scatter(
        x=x,
        y=values,
        mode="lines+markers",
        name=f"{NAMES[component]} gain without position 0",
        legend=legend,
        line=dict(color=color, width=1.5, dash="dash"),
        marker=dict(size=5, color=color, symbol="circle-open"),
        customdata=np.column_stack([hovered, values]),
        hovertemplate=f"L%{{customdata[0]}}<br>{NAMES[component]} gain without position 0 "
        "%{customdata[1]:.4g}<extra></extra>",
    )


def broken_at_gaps(layers, x, values, intervals):
    """``x``, ``values``, ``intervals`` and ``layers`` with a NaN point between layers that are not
    neighbours (a result measured on some layers only): Plotly breaks the line there, where a line
    drawn on would read as gains the layers in between never had. Unchanged without gaps.

    >>> [a.tolist() for a in broken_at_gaps(np.array([0, 1, 4]), [0, 1, 4], np.array([2., 3., 5.]), None)[:2]]
    [[0.0, 1.0, nan, 4.0], [2.0, 3.0, nan, 5.0]]
    """
    after = np.flatnonzero(np.diff(layers) > 1) + 1  # where a gap ends
    if not after.size:
        return x, values, intervals, layers

    def broken(array):
        return np.insert(np.asarray(array, dtype=np.float64), after, np.nan, axis=0)

    return broken(x), broken(values), None if intervals is None else broken(intervals), broken(layers)


def error_bars(values, intervals, color) -> dict:
    if intervals is None:
        return {}
    return {
        "error_y": dict(
            type="data",
            symmetric=False,
            array=intervals[:, 1] - values,
            arrayminus=values - intervals[:, 0],
            color=color,
            thickness=1.2,
            width=3,
        )
    }


def hover_template(result, component, layers, values, intervals, x_label="layer", extra=()) -> dict:
    """Hover text: layer, value and (when drawn) the interval, all from customdata.

    customdata rows are [layer, value, lo, hi, extra...]: the value is not read from y, which for a
    bar on a log axis holds its length from the neutral gain 1. ``extra``: (label, [layer] values)
    lines after the interval.
    """
    label = f"{NAMES[component]} gain"
    where = "L%{customdata[0]}" + (" (depth %{x:.2f})" if x_label == "depth" else "")
    text = f"{where}<br>{label} %{{customdata[1]:.4g}}"
    columns = [np.asarray(layers), np.asarray(values)]
    if intervals is not None:
        text += f"<br>{100 * result.intervals.confidence:g}% interval [%{{customdata[2]:.4g}}, %{{customdata[3]:.4g}}]"
        columns += [intervals[:, 0], intervals[:, 1]]
    for label, extra_values in extra:
        text += f"<br>{label} %{{customdata[{len(columns)}]:.4g}}"
        columns.append(np.asarray(extra_values, dtype=np.float64))
    return {"customdata": np.column_stack(columns), "hovertemplate": text + "<extra></extra>"}


def gain_extent(result, components, extra=()) -> tuple[float, float]:
    """Smallest and largest value a gain panel draws: gains, interval ends, 1, and ``extra``."""
    values = [np.array([1.0, *extra])]
    for component in components:
        values.append(_gain_values(result, component))
        intervals = intervals_of(result, component)
        if intervals is not None:
            values.append(intervals.ravel())
    pooled = np.concatenate(values)
    positive = pooled[pooled > 0]
    return float(positive.min()), float(pooled.max())


def log_axis(log: bool | None, result, components, extra=()) -> bool:
    if log is not None:
        return bool(log)
    low, high = gain_extent(result, components, extra)
    return high / low > LOG_SPAN


def gain_axis(log: bool, extent: tuple[float, float], autorange: bool = True) -> dict:
    if log:
        return dict(type="log", exponentformat="power", **log_ticks(*extent))
    return dict(rangemode="tozero") if autorange else {}


def log_ticks(low: float, high: float) -> dict:
    """Log-axis ticks that never crowd: 1-2-5 over up to 3 decades, powers of ten up to 8.

    Plotly's own choice labels digits 2-9 (or 2 and 5) inside every decade of a short range.
    Past 8 decades its sparse powers of ten read well.
    """
    decades = math.log10(high) - math.log10(low)
    if decades > 8:
        return {}
    if decades > 3:
        return dict(dtick=1)  # on a log axis: one tick per power of ten
    values = one_two_five(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    return dict(tickvals=values, ticktext=[f"{v:g}" for v in values])


def one_two_five(first: int, last: int, steps=(1, 2, 5)) -> list[float]:
    """``m × 10**k`` for every decade ``k`` from ``first`` to ``last`` and ``m`` in ``steps``, ascending.

    >>> one_two_five(-1, 0)
    [0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
    """
    return [m * 10.0**k for k in range(first, last + 1) for m in steps]


# ---- log colour scales (heatmaps of gains) ------------------------------------------------------
def log_reach(z, least: float) -> float:
    """How far a colour scale of log10 gains ``z`` reaches either side of 0 (gain 1): the largest
    finite ``|z|``, and at least ``least``, so gains all near 1 are not painted in saturated colours."""
    z = np.asarray(z, dtype=np.float64)
    finite = np.abs(z[np.isfinite(z)])
    return max(float(finite.max()) if finite.size else 0.0, least)


def ticks_within(reach: float, candidates, slack: float = 1e-9) -> list[float]:
    """The gains among ``candidates`` a colour scale reaching ``10**±reach`` shows: within
    ``reach + slack`` decades of 1 (the slack keeps a tick at the very end from rounding away)."""
    return [t for t in candidates if abs(math.log10(t)) <= reach + slack]


def gain_colorbar(ticks, **settings) -> dict:
    """A colorbar for log10 gains labelled in gains (0.5, 1, 2), with Plotly ``settings`` (title, len...)."""
    return dict(tickvals=[math.log10(t) for t in ticks], ticktext=[f"{t:g}" for t in ticks], **settings)


def aligned_log_range(low: float, high: float, neutral_at: float) -> list[float]:
    """A log-axis range (log10 units) holding [low, high] with gain 1 at fraction ``neutral_at`` of its height.

    When that would more than double the span the values need (block gains below 1 beside bars
    whose 1 sits near the bottom), the values' own range is kept instead: legible beats aligned.

    >>> [round(v, 3) for v in aligned_log_range(1.0, 100.0, 0.25)]
    [-0.773, 2.32]
    """
    return log_range_and_level(low, high, neutral_at)[0]


def log_range_and_level(low: float, high: float, neutral_at: float) -> tuple[list[float], bool]:
    """``aligned_log_range``'s range, and whether its 1 does sit at ``neutral_at`` (False where
    the values' own range was kept: the axis then needs a neutral line of its own).

    >>> log_range_and_level(1.0, 100.0, 0.25)[1], log_range_and_level(0.5, 20.0, 0.0)[1]
    (True, False)
    """
    f = min(max(neutral_at, 0.02), 0.98)
    top = max(math.log10(high), 0.0) * 1.12 + 0.08  # room above the largest value (and the bar labels)
    bottom = min(math.log10(low), 0.0) * 1.05 - 0.05
    natural = [bottom, top]
    # 1 (log10 = 0) at fraction f: -bottom / (top - bottom) = f, widening whichever end is short.
    if -bottom / (top - bottom) < f:
        bottom = -f * top / (1 - f)
    else:
        top = -bottom * (1 - f) / f
    if top - bottom <= 2 * (natural[1] - natural[0]):
        return [bottom, top], True
    return natural, False


def legend_entry(fig, name, marker, legend, row, col, group=None):
    """A legend item that draws nothing (an empty bar), for a key no real trace can show."""
    fig.add_trace(
        go.Bar(x=[None], y=[None], name=name, marker=marker, legend=legend, legendgroup=group, hoverinfo="skip"),
        row=row,
        col=col,
    )


def neutral_line(fig, row, col, width=1.2):
    fig.add_hline(y=1, line=dict(color=COLORS["neutral"], dash="dash", width=width), row=row, col=col)


def labelled_trace(gains, expanding, most: int = 8, layers=None, spacing: float = 1.0) -> list[int]:
    """The expanding layers to label (positions in ``gains``): of the ``most`` largest, the
    largest first, each at least ``spacing`` layers from every label already placed
    (``layers``: the true indices; default 0, 1, ...), so that no two labels overlap.

    >>> labelled_trace(np.array([5.0, 6.0, 0.5, 4.0, 9.0]), np.array([1, 1, 0, 1, 1], bool), spacing=2)
    [1, 4]
    """
    layers = np.arange(len(gains)) if layers is None else np.asarray(layers)
    candidates = sorted(np.flatnonzero(expanding), key=lambda i: -gains[i])[:most]
    chosen: list[int] = []
    for index in candidates:
        if all(abs(layers[index] - layers[other]) >= spacing - 1e-9 for other in chosen):
            chosen.append(int(index))
    return sorted(chosen)


def label_spacing(fig, row, col, layers, texts, font_px: float = 12) -> float:
    """How many layers apart two bar labels must be not to overlap: the widest label's width
    (~0.6 em a character, and 6 px of padding) over the width of one layer on the panel."""
    domain = fig.get_subplot(row, col).xaxis.domain
    panel_px = (WIDTH - MARGIN["l"] - MARGIN["r"]) * (domain[1] - domain[0])
    span = (layers[-1] - layers[0] + 1.4) if len(layers) else 1.0  # the axis range layer_ticks sets
    label_px = 0.6 * font_px * max((len(text) for text in texts), default=1) + 6
    return max(1.0, label_px / (panel_px / span))


def compact(value: float) -> str:
    """A bar label's number: four significant figures at most (``2691``, ``567.3``, ``15.92``, ``2.44``).

    >>> [compact(v) for v in (2691.087, 567.29, 15.917, 2.4412, 1.0)]
    ['2691', '567.3', '15.92', '2.44', '1.00']
    """
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"


def denominators_of(result) -> str:
    """What the bars divide by, as the model has it: the residual stream (definition residual, and
    post-norm blocks, whose sublayers read the stream), else the outputs of its norms by their kind."""
    reads = result.provenance.get("reads", {}) if isinstance(result.provenance, dict) else {}
    if result.definition != "seed" or reads.get("block_shape") == "post-norm":
        return "residual stream"
    kind = {"RMS": "RMSNorm", "RMSPre": "RMSNorm", "LN": "LayerNorm", "LNPre": "LayerNorm"}.get(
        result.provenance.get("normalization"), "norm"
    )
    return f"{kind} outputs"


def layer_ticks(n_layers: int, layers=None) -> dict:
    """The layer axis: every layer (or, given ``layers``, the span from the first to the last of them)."""
    if layers is None or not len(layers) or len(layers) == n_layers:
        first, last, extent = 0, n_layers - 1, [-0.7, n_layers - 0.3]
    else:
        first, last = int(layers[0]), int(layers[-1])
        extent = [first - 0.7, last + 0.7]
    # One tick per layer up to 16 layers, then every 2nd, 4th...: labels never collide at 1400 px.
    return dict(tick0=0, dtick=max(1, 2 ** math.ceil(math.log2(max(1, (last - first + 1) / 16)))), range=extent)


def legend_name(index: int) -> str:
    return "legend" if index == 0 else f"legend{index + 1}"


def place_legend(fig, index: int, single: bool = False, row: int = 1, col: int = 1) -> None:
    """One horizontal legend per panel, under its x-axis title: it never hides a data point."""
    subplot = fig.get_subplot(row, col)
    x0, x1 = subplot.xaxis.domain
    y0, _ = subplot.yaxis.domain
    plot_height = (fig.layout.height or HEIGHT) - MARGIN["t"] - MARGIN["b"]
    # A right-column legend grows leftwards from the panel's right edge: growing rightwards past
    # the figure, it would make Plotly widen the margin and shrink every panel.
    right = not single and col == 2
    fig.update_layout(
        {
            legend_name(0 if single else index): dict(
                orientation="h",
                x=x1 if right else x0,
                y=y0 - LEGEND_DROP_PX / plot_height,
                xanchor="right" if right else "left",
                yanchor="top",
                xref="paper",
                yref="paper",
                font=dict(size=13),
                traceorder="normal",
            )
        }
    )


def finish_figure(fig, result, height: int, heading: str = "attention, MLP and block gain per layer") -> None:
    intervals = getattr(result, "intervals", None)
    uncertainty = f"error bars: {intervals.describe()}" if intervals is not None else "no intervals (bootstrap skipped)"
    dropped = f" · {dropped_phrase(result.drop_first)}" if result.drop_first else ""

    why_not = not_testable(result)
    if why_not:  # what the panels hold, and the verdict's place in the analysis
        dropped += (
            f" · layers {result.layer_spans} of {result.n_layers} (Funnel test not testable: it needs every layer)"
        )
    fig.update_layout(
        template="plotly_white",
        height=height,
        barmode="overlay",
        hovermode="closest",
        title=dict(
            text=f"<b>{html.escape(short_name(result.model))}</b>: {heading}<br>"
            f"<sup>definition={result.definition} · {result.n_prompts} prompts, "
            f"{int(result.n_tokens.sum())} tokens{dropped} · {uncertainty}</sup>",
            x=0.5,
            xanchor="center",
            font=dict(size=20),
        ),
        margin=MARGIN,
        font=dict(size=15),
    )


def short_label(name: str, width: int = 28) -> str:
    name = name.rstrip("/").split("/")[-1]
    return name if len(name) <= width else name[: width - 1] + "…"
