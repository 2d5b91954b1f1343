"""The seed notebook's four panels as Plotly figures, with intervals over prompts as error bars.

``plot_funnel(result)`` draws all four on one figure; each panel is also a figure of its own:

1. ``plot_attention_mlp``: attention and MLP gain per layer, neutral line at 1, the layer of the
   largest MLP gain marked;
2. ``plot_mlp_depth``: MLP gain against normalized depth (0 = first layer, 1 = last), with the
   Pythia-1.4B reference (its largest MLP gain, 3.60 in its last layer);
3. ``plot_net_gain``: attn × MLP gain bars coloured expanding / contracting, the largest expanding
   ones labelled (never two labels closer than their width); the block gain ‖resid_post‖ /
   ‖resid_pre‖ on a second y-axis of its own (right): its denominator is the residual stream, the
   bars' (under ``definition="seed"``) the outputs of the model's norms (LayerNorm or RMSNorm, as
   the axis says), so the two are not on one scale, and a large block gain no longer flattens the bars;
4. ``plot_cumulative``: the running product of attn × MLP on a log scale, its lowest point
   (the bottleneck) and the output marked; a curve lowest at its first layer has no bottleneck.

Colours are Okabe and Ito's palette, which red-green colour-blind readers can tell apart:
attention blue, MLP vermillion, expanding orange, contracting sky blue.

Panels 1-3 use a linear axis, as the seed, unless their values span more than ``LOG_SPAN``-fold
(Pythia's attention gains of 0.08 beside an MLP gain of 3.6 do); they then go to a log axis, where
gain 1 is the middle and bars rise or hang from it. ``log_gains=True``/``False`` forces either.

Every function takes a ``GainResult`` and returns a ``go.Figure``; nothing is shown from here.
A result measured on some layers only (``measure_gains(..., layers=...)``) is drawn at its true
layer indices; panel 4 covers its measured prefix 0..k only (and says so, or that it has none),
and the subtitle says the Funnel test is not testable.
Error bars and bands are the result's intervals over prompts (``result.with_intervals()``) when it
carries them. Hovering a point shows its layer, value and interval.

>>> from funnel_tl import load_model, measure_gains                      # doctest: +SKIP
>>> result = measure_gains(load_model(), "seed").with_intervals()        # doctest: +SKIP
>>> fig = plot_funnel(result)                                            # doctest: +SKIP
>>> write_html(fig, "runs/demo/funnel.html")                             # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .errors import FunnelError
from .funnel import PYTHIA_1_4B_REFERENCE
from .outputs import short_name, temporary_beside
from .prompts import dropped_phrase
from .results import write_text_atomic

# Okabe & Ito (2008), "Color Universal Design": distinguishable with any common colour blindness.
# The seed's blue/red become blue/vermillion; its green/purple bars orange/sky blue.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
COLORS = {
    "attn": "#0072B2",          # blue
    "mlp": "#D55E00",           # vermillion
    "block": "#3a3a3a",
    "expanding": "#E69F00",     # orange: expands (as red does on the diverging heatmaps)
    "contracting": "#56B4E9",   # sky blue: contracts
    "expanding edge": "#7a4f00",  # their error bars, darker: apart from the block gain's
    "contracting edge": "#1f5f82",
    "reference": "#009E73",     # bluish green: Pythia-1.4B's reference
    "neutral": "#7f7f7f",
    "bottleneck": "#D55E00",
    "output": "#009E73",
}
# Heatmaps of gains colour log10(gain) on this scale, symmetric about 0 (gain 1, white): blue
# contracts, red expands, equal ratios get equal colours either side. Colour-blind safe.
DIVERGING = "RdBu_r"
NAMES = {"attn": "attention", "mlp": "MLP", "block": "block", "combined": "attn × MLP", "cumulative": "cumulative"}
PANEL_TITLES = (
    "Attention vs MLP gain per layer",
    "MLP gain on normalized depth vs Pythia-1.4B",
    "Net effect per layer: attn × MLP (bars, left) and block gain (right)",
    "Information funnel: cumulative attn × MLP gain",
)
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
PNG_HELP = ("PNG skipped: it needs kaleido and Chrome/Chromium (pip install kaleido; apt-get install chromium), "
            "or open the HTML and use the camera icon")


# ---- panels -----------------------------------------------------------------------------------
def plot_attention_mlp(result, log_gains: bool | None = None) -> go.Figure:
    """Panel 1: attention and MLP gain per layer, neutral line at 1, the max-MLP layer marked."""
    return _single(result, _attention_mlp, 0, log_gains)


def plot_mlp_depth(result, log_gains: bool | None = None) -> go.Figure:
    """Panel 2: MLP gain on normalized depth against the Pythia-1.4B reference."""
    return _single(result, _mlp_depth, 1, log_gains)


def plot_net_gain(result, log_gains: bool | None = None) -> go.Figure:
    """Panel 3: attn × MLP gain bars coloured expanding/contracting, with the block gain."""
    return _single(result, _net_gain, 2, log_gains)


def plot_cumulative(result) -> go.Figure:
    """Panel 4: cumulative attn × MLP gain on a log scale, bottleneck and output marked."""
    return _single(result, _cumulative, 3, True)


def plot_funnel(result, log_gains: bool | None = None) -> go.Figure:
    """The seed's four panels on one figure (2 × 2), titled with model, definition and prompts.

    ``log_gains``: draw panels 1-3 on a log axis (True), a linear one as the seed (False), or
    decide per panel (None): log when its values span more than ``LOG_SPAN``, where a linear axis
    would flatten the small gains against zero. On a log axis the bars of panel 3 rise or hang
    from the neutral gain 1.
    """
    # Panel 3 has a second y-axis for the block gain (another denominator: see the module docstring).
    # Wide gaps: panel 3's right axis and panel 4's left axis each carry tick labels and a title.
    fig = make_subplots(rows=2, cols=2, subplot_titles=PANEL_TITLES, horizontal_spacing=0.17,
                        vertical_spacing=0.2, specs=[[{}, {}], [{"secondary_y": True}, {}]])
    # make_subplots narrows every column for the one secondary axis; give the width back.
    for axis, domain in (("xaxis", [0, 0.415]), ("xaxis2", [0.585, 1]), ("xaxis3", [0, 0.415]), ("xaxis4", [0.585, 1])):
        fig.layout[axis].domain = domain
    for title, column in zip(fig.layout.annotations, (0, 1, 0, 1)):  # the subplot titles, centred again
        title.x = (0.415 / 2, (0.585 + 1) / 2)[column]
    fig.update_layout(height=HEIGHT)
    for index, panel in enumerate((_attention_mlp, _mlp_depth, _net_gain, _cumulative)):
        panel(fig, result, row=index // 2 + 1, col=index % 2 + 1, legend=_legend_name(index),
              log=True if panel is _cumulative else log_gains)
        _place_legend(fig, index, row=index // 2 + 1, col=index % 2 + 1)
    _finish(fig, result, height=HEIGHT)
    return fig


def _single(result, panel, index: int, log: bool | None) -> go.Figure:
    fig = make_subplots(rows=1, cols=1, specs=[[{"secondary_y": panel is _net_gain}]])
    fig.update_layout(height=560)
    panel(fig, result, row=1, col=1, legend="legend", log=log)
    _place_legend(fig, index, single=True, row=1, col=1)
    _finish(fig, result, height=560, heading=PANEL_TITLES[index])
    return fig


# ---- what each panel draws --------------------------------------------------------------------
def _attention_mlp(fig, result, row, col, legend, log=None):
    layers = np.asarray(result.layers)
    log = _log_axis(log, result, ("attn", "mlp"))
    # No shading under the attention curve, though the seed has one ("Attn Contraction"): the area
    # under a gain says nothing the line does not, a log axis has no zero to shade to, and a subset's
    # gaps cannot be shaded; unexplained, it read as an interval band.
    for component in ("attn", "mlp"):
        fig.add_trace(_gain_trace(result, component, layers, legend=legend), row=row, col=col)
    _neutral(fig, row, col)
    top = int(layers[np.argmax(result.mlp_gains)])
    fig.add_vline(x=top, line=dict(color=COLORS["mlp"], dash="dot", width=1.5), row=row, col=col,
                  annotation=dict(text=f"max MLP L{top}", font=dict(color=COLORS["mlp"], size=13)),
                  # on the side with more room: the axis spans the measured layers only
                  annotation_position="top left" if top > (result.layers[0] + result.layers[-1]) / 2 else "top right")
    fig.update_xaxes(title_text="layer", row=row, col=col, **_layer_ticks(result.n_layers, result.layers))
    fig.update_yaxes(title_text="gain  ‖output‖ / ‖input‖" + (" (log)" if log else ""), row=row, col=col,
                     **_gain_axis(log, _extent(result, ("attn", "mlp"))))


def _mlp_depth(fig, result, row, col, legend, log=None):
    depth = np.linspace(0, 1, result.n_layers)[list(result.layers)]  # the measured layers' depths
    log = _log_axis(log, result, ("mlp",), extra=[PYTHIA_1_4B_REFERENCE["mlp_max_gain"]])
    fig.add_trace(_gain_trace(result, "mlp", depth, legend=legend, name=f"{_short(result.model)} MLP",
                              x_label="depth"), row=row, col=col)
    _neutral(fig, row, col)
    reference = PYTHIA_1_4B_REFERENCE
    last = reference["n_layers"] - 1
    note = "" if result.definition == "seed" else " (definition=seed)"
    fig.add_hline(y=reference["mlp_max_gain"], line=dict(color=COLORS["reference"], dash="dot", width=1.5),
                  row=row, col=col)
    fig.add_trace(go.Scatter(
        x=[1.0], y=[reference["mlp_max_gain"]], mode="markers", legend=legend,
        marker=dict(symbol="star", size=13, color=COLORS["reference"], line=dict(color="white", width=1)),
        name=f"Pythia-1.4B max MLP {reference['mlp_max_gain']:.2f} (L{last}){note}",
        hovertemplate=f"Pythia-1.4B L{last} (depth 1.00)<br>MLP gain {reference['mlp_max_gain']:.3f}"
                      f"{note}<extra></extra>",
    ), row=row, col=col)
    fig.update_xaxes(title_text="normalized layer position (0 = first, 1 = last)", range=[-0.03, 1.05],
                     row=row, col=col)
    extent = _extent(result, ("mlp",), extra=[PYTHIA_1_4B_REFERENCE["mlp_max_gain"]])
    fig.update_yaxes(title_text="MLP gain" + (" (log)" if log else ""), row=row, col=col, **_gain_axis(log, extent))


def _net_gain(fig, result, row, col, legend, log=None):
    gains = result.combined_gains
    layers = np.asarray(result.layers)
    intervals = _intervals(result, "combined")
    log = _log_axis(log, result, ("combined",))
    expanding = gains >= 1  # the seed's colouring: by the point estimate
    # Hatched: the interval straddles 1, so the robust verdict counts the layer as neither.
    undetermined = (intervals[:, 0] <= 1) & (intervals[:, 1] >= 1) if intervals is not None else np.zeros_like(expanding)
    for kind, chosen in (("contracting", ~expanding), ("expanding", expanding)):
        if not chosen.any():
            continue
        marker = dict(color=COLORS[kind], opacity=0.75, line=dict(color="black", width=0.5))
        # The bars stay out of the legend: it would show the first bar's hatching for the kind.
        _legend_entry(fig, f"attn × MLP {kind}", marker, legend, row, col, group=kind)
        chosen_intervals = intervals[chosen] if intervals is not None else None
        # A log axis has no zero: its bars span from the neutral gain 1 to the gain.
        height = dict(base=1, y=gains[chosen] - 1) if log else dict(y=gains[chosen])
        fig.add_trace(go.Bar(
            # Without a width Plotly sizes bars by the smallest gap between their x values: two
            # expanding layers 11 apart drew bars 11 layers wide.
            x=layers[chosen], **height, width=BAR_WIDTH, name=f"attn × MLP {kind}", legend=legend, legendgroup=kind,
            showlegend=False,
            marker=dict(**marker, pattern=dict(shape=np.where(undetermined[chosen], "/", "").tolist(),
                                               fgcolor="white", size=6)),
            **_errors(gains[chosen], chosen_intervals, COLORS[f"{kind} edge"]),
            **_hover(result, "combined", layers[chosen], gains[chosen], chosen_intervals),
        ), row=row, col=col)
    if undetermined.any():
        _legend_entry(fig, "hatched: interval crosses 1", dict(color="#bbbbbb", pattern=dict(shape="/", fgcolor="white", size=6)),
                      legend, row, col)
    # The block gain reads the residual stream, the bars (seed definition) the LayerNorm outputs:
    # its own axis, so that neither sets the other's range.
    block = _gain_trace(result, "block", layers, legend=legend, symbol="diamond",
                        name="block ‖resid_post‖ / ‖resid_pre‖ (right axis)")
    block.line.update(dash="dot", width=1.5)  # thin and dotted: the bars stay the panel's subject
    fig.add_trace(block, row=row, col=col, secondary_y=True)
    _neutral(fig, row, col, width=2)
    spacing = _label_spacing(fig, row, col, layers, [f"L{layer}" for layer in layers] + [_compact(g) for g in gains])
    for index in _labelled(gains, expanding, layers=layers, spacing=spacing):  # positions in the measured layers
        top = max(gains[index], intervals[index, 1] if intervals is not None else gains[index])
        # Annotations on a log axis are placed in log10 units.
        fig.add_annotation(x=layers[index], y=math.log10(top) if log else top,
                           text=f"L{layers[index]}<br>{_compact(gains[index])}",
                           showarrow=False, yanchor="bottom", yshift=3, bgcolor="rgba(255, 255, 255, 0.75)",
                           font=dict(size=12, color=COLORS["expanding edge"]), row=row, col=col)
    # Room above the tallest bar or error bar for the labels.
    low, high = _extent(result, ("combined",))
    if log:
        decades = max(math.log10(high) - math.log10(low), 0.5)
        span = [math.log10(low) - 0.05 * decades, math.log10(high) + 0.18 * decades]  # log10 units
    else:
        span = [0, 1.15 * high]
    fig.update_xaxes(title_text="layer", row=row, col=col, **_layer_ticks(result.n_layers, result.layers))
    denominators = _denominators(result)
    fig.update_yaxes(title_text=f"attn × MLP gain (÷ {denominators})" + (" (log)" if log else ""), range=span,
                     row=row, col=col, secondary_y=False, **_gain_axis(log, (low, high), autorange=False))
    # The block axis is logarithmic and placed so that its 1 sits level with the bars' 1: the one
    # dashed neutral line then serves both axes.
    neutral_at = (1 - span[0]) / (span[1] - span[0]) if not log else -span[0] / (span[1] - span[0])
    block_low, block_high = _extent(result, ("block",))
    fig.update_yaxes(title_text="block gain (log)", row=row, col=col, secondary_y=True,
                     showgrid=False, zeroline=False, type="log", exponentformat="power",
                     range=_aligned_log_range(block_low, block_high, neutral_at),
                     **_log_ticks(block_low, block_high))


def _cumulative(fig, result, row, col, legend, log=True):
    # A running product from layer 0 is exact over the measured prefix 0..k only (all layers for a
    # full result): past a gap it would skip the missing layers' gains.
    layers = np.asarray(result.cumulative_layers)
    cumulative = result.cumulative_gains
    intervals = _intervals(result, "cumulative")
    if not len(layers):
        fig.add_annotation(text=f"not drawn: layer 0 was not measured (layers {result.layer_spans}),<br>"
                                "and the product runs from layer 0",
                           showarrow=False, x=0.5, y=0.5, xref="x domain", yref="y domain",
                           font=dict(size=15, color=COLORS["neutral"]), row=row, col=col)
        # An empty trace makes Plotly lay out the panel (a subplot without traces is not drawn, nor
        # its annotation); its axes stay, bare.
        fig.add_trace(go.Scatter(x=[None], y=[None], showlegend=False, hoverinfo="skip", legend=legend),
                      row=row, col=col)
        for update in (fig.update_xaxes, fig.update_yaxes):
            update(showticklabels=False, showgrid=False, zeroline=False, range=[0, 1], row=row, col=col)
        return
    if intervals is not None:
        fig.add_trace(go.Scatter(x=layers, y=intervals[:, 1], mode="lines", line=dict(width=0),
                                 showlegend=False, hoverinfo="skip", legend=legend), row=row, col=col)
        fig.add_trace(go.Scatter(x=layers, y=intervals[:, 0], mode="lines", line=dict(width=0),
                                 fill="tonexty", fillcolor="rgba(31, 119, 180, 0.2)", hoverinfo="skip",
                                 name=f"{100 * result.intervals.confidence:g}% interval", legend=legend),
                      row=row, col=col)
    fig.add_trace(go.Scatter(
        x=layers, y=cumulative, mode="lines+markers", name="cumulative attn × MLP gain", legend=legend,
        line=dict(color=COLORS["attn"], width=2.5), marker=dict(size=4),
        **_hover(result, "cumulative", layers, cumulative, intervals),
    ), row=row, col=col)
    _neutral(fig, row, col)
    # Positions in the prefix, which are its layers' indices too (it starts at 0).
    bottleneck, output = int(np.argmin(cumulative)), len(layers) - 1
    # The prefix may stop short of the model's output: then its end is only the last layer drawn.
    end = "output" if output == result.n_layers - 1 else "last measured"
    markers = [(output, end, COLORS["output"], "square")]
    if bottleneck == output:  # one marker: two at one point would hide each other
        markers = [(output, f"bottleneck = {end}", COLORS["bottleneck"], "circle")]
    elif bottleneck > 0:  # lowest at the first layer means the curve only rises: nothing narrows
        markers.insert(0, (bottleneck, "bottleneck", COLORS["bottleneck"], "circle"))
    elif len(layers) > 1:
        _legend_entry(fig, "no bottleneck (lowest at L0)", dict(color="rgba(0,0,0,0)"), legend, row, col)
    for layer, label, color, symbol in markers:
        fig.add_trace(go.Scatter(
            x=[layer], y=[cumulative[layer]], mode="markers", legend=legend,
            name=f"{label} (L{layer}: {cumulative[layer]:.2g})",
            marker=dict(size=13, color=color, symbol=symbol, line=dict(color="white", width=1.5)),
            hovertemplate=f"{label}: L{layer}<br>cumulative gain {cumulative[layer]:.4g}<extra></extra>",
        ), row=row, col=col)
    fig.update_xaxes(title_text="layer" if end == "output" else f"layer (measured prefix 0-{output} of {result.n_layers})",
                     row=row, col=col, **_layer_ticks(result.n_layers, layers))
    values = np.concatenate([cumulative, [1.0]] + ([intervals.ravel()] if intervals is not None else []))
    fig.update_yaxes(title_text="cumulative gain (product to the layer)", type="log",
                     exponentformat="power", row=row, col=col, **_log_ticks(values.min(), values.max()))


# ---- building blocks --------------------------------------------------------------------------
def _intervals(result, component: str):
    intervals = getattr(result, "intervals", None)
    return None if intervals is None else intervals.of(component)


def _gain_values(result, component: str) -> np.ndarray:
    if component == "combined":
        return result.combined_gains
    if component == "cumulative":
        return result.cumulative_gains
    return result.gains(component)


def _gain_trace(result, component, x, legend, name=None, symbol="circle", x_label="layer"):
    """Line + markers of one component's gain per layer, with interval error bars and hover."""
    gains = _gain_values(result, component)
    intervals = _intervals(result, component)
    layers = np.asarray(result.layers)
    x, gains, intervals, layers = _broken_at_gaps(layers, x, gains, intervals)
    color = COLORS[component]
    return go.Scatter(
        x=x, y=gains, mode="lines+markers", name=name or f"{NAMES[component]} gain", legend=legend,
        line=dict(color=color, width=2), marker=dict(size=6, color=color, symbol=symbol),
        hoveron="points",
        **_errors(gains, intervals, color),
        **_hover(result, component, layers, gains, intervals, x_label=x_label),
    )


def _broken_at_gaps(layers, x, values, intervals):
    """``x``, ``values``, ``intervals`` and ``layers`` with a NaN point between layers that are not
    neighbours (a result measured on some layers only): Plotly breaks the line there, where a line
    drawn on would read as gains the layers in between never had. Unchanged without gaps.

    >>> [a.tolist() for a in _broken_at_gaps(np.array([0, 1, 4]), [0, 1, 4], np.array([2., 3., 5.]), None)[:2]]
    [[0.0, 1.0, nan, 4.0], [2.0, 3.0, nan, 5.0]]
    """
    after = np.flatnonzero(np.diff(layers) > 1) + 1  # where a gap ends
    if not after.size:
        return x, values, intervals, layers

    def broken(array):
        return np.insert(np.asarray(array, dtype=np.float64), after, np.nan, axis=0)

    return broken(x), broken(values), None if intervals is None else broken(intervals), broken(layers)


def _errors(values, intervals, color) -> dict:
    if intervals is None:
        return {}
    return {"error_y": dict(type="data", symmetric=False, array=intervals[:, 1] - values,
                            arrayminus=values - intervals[:, 0], color=color, thickness=1.2, width=3)}


def _hover(result, component, layers, values, intervals, x_label="layer") -> dict:
    """Hover text: layer, value and (when drawn) the interval, all from customdata.

    customdata rows are [layer, value, lo, hi]: the value is not read from y, which for a bar on a
    log axis holds its length from the neutral gain 1.
    """
    label = f"{NAMES[component]} gain"
    where = "L%{customdata[0]}" + (" (depth %{x:.2f})" if x_label == "depth" else "")
    text = f"{where}<br>{label} %{{customdata[1]:.4g}}"
    columns = [np.asarray(layers), np.asarray(values)]
    if intervals is not None:
        text += f"<br>{100 * result.intervals.confidence:g}% interval [%{{customdata[2]:.4g}}, %{{customdata[3]:.4g}}]"
        columns += [intervals[:, 0], intervals[:, 1]]
    return {"customdata": np.column_stack(columns), "hovertemplate": text + "<extra></extra>"}


def _extent(result, components, extra=()) -> tuple[float, float]:
    """Smallest and largest value a gain panel draws: gains, interval ends, 1, and ``extra``."""
    values = [np.array([1.0, *extra])]
    for component in components:
        values.append(_gain_values(result, component))
        intervals = _intervals(result, component)
        if intervals is not None:
            values.append(intervals.ravel())
    values = np.concatenate(values)
    positive = values[values > 0]
    return float(positive.min()), float(values.max())


def _log_axis(log: bool | None, result, components, extra=()) -> bool:
    if log is not None:
        return bool(log)
    low, high = _extent(result, components, extra)
    return high / low > LOG_SPAN


def _gain_axis(log: bool, extent: tuple[float, float], autorange: bool = True) -> dict:
    if log:
        return dict(type="log", exponentformat="power", **_log_ticks(*extent))
    return dict(rangemode="tozero") if autorange else {}


def _log_ticks(low: float, high: float) -> dict:
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
    return [m * 10.0 ** k for k in range(first, last + 1) for m in steps]


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


def _aligned_log_range(low: float, high: float, neutral_at: float) -> list[float]:
    """A log-axis range (log10 units) holding [low, high] with gain 1 at fraction ``neutral_at`` of its height.

    When that would more than double the span the values need (block gains below 1 beside bars
    whose 1 sits near the bottom), the values' own range is kept instead: legible beats aligned.

    >>> [round(v, 3) for v in _aligned_log_range(1.0, 100.0, 0.25)]
    [-0.773, 2.32]
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
    return [bottom, top] if top - bottom <= 2 * (natural[1] - natural[0]) else natural


def _legend_entry(fig, name, marker, legend, row, col, group=None):
    """A legend item that draws nothing (an empty bar), for a key no real trace can show."""
    fig.add_trace(go.Bar(x=[None], y=[None], name=name, marker=marker, legend=legend, legendgroup=group,
                         hoverinfo="skip"), row=row, col=col)


def _neutral(fig, row, col, width=1.2):
    fig.add_hline(y=1, line=dict(color=COLORS["neutral"], dash="dash", width=width), row=row, col=col)


def _labelled(gains, expanding, most: int = 8, layers=None, spacing: float = 1.0) -> list[int]:
    """The expanding layers to label (positions in ``gains``): of the ``most`` largest, the
    largest first, each at least ``spacing`` layers from every label already placed
    (``layers``: the true indices; default 0, 1, ...), so that no two labels overlap.

    >>> _labelled(np.array([5.0, 6.0, 0.5, 4.0, 9.0]), np.array([1, 1, 0, 1, 1], bool), spacing=2)
    [1, 4]
    """
    layers = np.arange(len(gains)) if layers is None else np.asarray(layers)
    candidates = sorted(np.flatnonzero(expanding), key=lambda i: -gains[i])[:most]
    chosen: list[int] = []
    for index in candidates:
        if all(abs(layers[index] - layers[other]) >= spacing - 1e-9 for other in chosen):
            chosen.append(int(index))
    return sorted(chosen)


def _label_spacing(fig, row, col, layers, texts, font_px: float = 12) -> float:
    """How many layers apart two bar labels must be not to overlap: the widest label's width
    (~0.6 em a character, and 6 px of padding) over the width of one layer on the panel."""
    domain = fig.get_subplot(row, col).xaxis.domain
    panel_px = (WIDTH - MARGIN["l"] - MARGIN["r"]) * (domain[1] - domain[0])
    span = (layers[-1] - layers[0] + 1.4) if len(layers) else 1.0  # the axis range _layer_ticks sets
    label_px = 0.6 * font_px * max((len(text) for text in texts), default=1) + 6
    return max(1.0, label_px / (panel_px / span))


def _compact(value: float) -> str:
    """A bar label's number: four significant figures at most (``2691``, ``567.3``, ``15.92``, ``2.44``).

    >>> [_compact(v) for v in (2691.087, 567.29, 15.917, 2.4412, 1.0)]
    ['2691', '567.3', '15.92', '2.44', '1.00']
    """
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"


def _denominators(result) -> str:
    """What the bars divide by, as the model has it: the residual stream (definition residual, and
    post-norm blocks, whose sublayers read the stream), else the outputs of its norms by their kind."""
    reads = result.provenance.get("reads", {}) if isinstance(result.provenance, dict) else {}
    if result.definition != "seed" or reads.get("block_shape") == "post-norm":
        return "residual stream"
    kind = {"RMS": "RMSNorm", "RMSPre": "RMSNorm", "LN": "LayerNorm", "LNPre": "LayerNorm"}.get(
        result.provenance.get("normalization"), "norm")
    return f"{kind} outputs"


def _layer_ticks(n_layers: int, layers=None) -> dict:
    """The layer axis: every layer (or, given ``layers``, the span from the first to the last of them)."""
    if layers is None or not len(layers) or len(layers) == n_layers:
        first, last, extent = 0, n_layers - 1, [-0.7, n_layers - 0.3]
    else:
        first, last = int(layers[0]), int(layers[-1])
        extent = [first - 0.7, last + 0.7]
    # One tick per layer up to 16 layers, then every 2nd, 4th...: labels never collide at 1400 px.
    return dict(tick0=0, dtick=max(1, 2 ** math.ceil(math.log2(max(1, (last - first + 1) / 16)))), range=extent)


def _legend_name(index: int) -> str:
    return "legend" if index == 0 else f"legend{index + 1}"


def _place_legend(fig, index: int, single: bool = False, row: int = 1, col: int = 1) -> None:
    """One horizontal legend per panel, under its x-axis title: it never hides a data point."""
    subplot = fig.get_subplot(row, col)
    x0, x1 = subplot.xaxis.domain
    y0, _ = subplot.yaxis.domain
    plot_height = (fig.layout.height or HEIGHT) - MARGIN["t"] - MARGIN["b"]
    # A right-column legend grows leftwards from the panel's right edge: growing rightwards past
    # the figure, it would make Plotly widen the margin and shrink every panel.
    right = not single and col == 2
    fig.update_layout({_legend_name(0 if single else index): dict(
        orientation="h", x=x1 if right else x0, y=y0 - LEGEND_DROP_PX / plot_height,
        xanchor="right" if right else "left", yanchor="top",
        xref="paper", yref="paper", font=dict(size=13), traceorder="normal",
    )})


def _finish(fig, result, height: int, heading: str = "attention, MLP and block gain per layer") -> None:
    intervals = getattr(result, "intervals", None)
    uncertainty = (f"error bars: {intervals.describe()}" if intervals is not None
                   else "no intervals (bootstrap skipped)")
    dropped = f" · {dropped_phrase(result.drop_first)}" if result.drop_first else ""
    from .criteria import not_testable

    why_not = not_testable(result)
    if why_not:  # what the panels hold, and the verdict's place in the analysis
        dropped += f" · layers {result.layer_spans} of {result.n_layers} (Funnel test not testable: it needs every layer)"
    fig.update_layout(
        template="plotly_white", height=height, barmode="overlay", hovermode="closest",
        title=dict(text=f"<b>{html.escape(short_name(result.model))}</b>: {heading}<br>"
                        f"<sup>definition={result.definition} · {result.n_prompts} prompts, "
                        f"{int(result.n_tokens.sum())} tokens{dropped} · {uncertainty}</sup>",
                   x=0.5, xanchor="center", font=dict(size=20)),
        margin=MARGIN, font=dict(size=15),
    )


def _short(name: str, width: int = 28) -> str:
    name = name.rstrip("/").split("/")[-1]
    return name if len(name) <= width else name[: width - 1] + "…"


# ---- output -----------------------------------------------------------------------------------
# Pages of one output tree load one copy of plotly.js written beside them (4.8 MB once, not per
# page); a page opened from disk reads it by relative path, so it still works offline.
PLOTLYJS = "plotly.min.js"


def plotlyjs_for(page: str | os.PathLike, self_contained: bool = False,
                 root: str | os.PathLike | None = None) -> str | bool:
    """What a page at ``page`` should load plotly.js from: True (embed it) or a relative path.

    Unless ``self_contained``, ``root/plotly.min.js`` (``root`` defaults to the page's folder;
    ``compare`` and ``report`` pass the top of their output tree) is written when missing or
    from another plotly version, and its path relative to the page's folder returned.
    """
    if self_contained:
        return True
    page = Path(page)
    root = Path(root) if root is not None else page.parent
    shared = root / PLOTLYJS
    from plotly.offline import get_plotlyjs

    text = get_plotlyjs()
    if not shared.is_file() or shared.stat().st_size != len(text.encode("utf-8")):
        write_text_atomic(shared, text)
    page.parent.mkdir(parents=True, exist_ok=True)
    return Path(os.path.relpath(shared.resolve(), page.parent.resolve())).as_posix()


def script_tag(plotlyjs: str | bool) -> str:
    """The <script> that gives a page plotly.js: embedded (True) or by relative path (a string)."""
    if plotlyjs is True:
        from plotly.offline import get_plotlyjs

        return f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
    return f'<script src="{html.escape(str(plotlyjs), quote=False)}" charset="utf-8"></script>\n'


def figure_div(fig: go.Figure, div_id: str | None = None, config: dict | None = None) -> str:
    """One figure as a <div> for a page whose <head> already loads plotly.js (``script_tag``)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True, **(config or {})})


def page_html(title: str, body: str, plotlyjs: str | bool, style: str = "", body_style: str = "") -> str:
    """A whole page of funnel_tl's: plotly.js as ``script_tag(plotlyjs)`` gives it, ``title``
    (plain text, escaped here) and ``style`` (CSS) in its head, ``body`` (HTML, as it is) and
    ``body_style`` (the body tag's CSS) in its body."""
    css = f"<style>{style}</style>\n" if style else ""
    body_tag = f'<body style="{body_style}">' if body_style else "<body>"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title, quote=False)}</title>\n{script_tag(plotlyjs)}{css}</head>\n"
            f"{body_tag}\n{body}\n</body>\n</html>\n")


def write_page(path: str | os.PathLike, render: Callable[[str | bool], str], self_contained: bool = False,
               root: str | os.PathLike | None = None) -> Path:
    """Write the page ``render(plotlyjs)`` gives to ``path`` atomically, ``plotlyjs`` from
    ``plotlyjs_for``: a shared ``plotly.min.js`` beside it (or at ``root``), or embedded."""
    path = Path(path)
    return write_text_atomic(path, render(plotlyjs_for(path, self_contained, root)))


def write_html(fig: go.Figure, path: str | os.PathLike, title: str | None = None, self_contained: bool = False,
               root: str | os.PathLike | None = None) -> Path:
    """Write ``fig`` as an HTML page that opens with no network.

    By default the page loads ``plotly.min.js`` from its folder (or from ``root``, the top of an
    output tree), written there once and shared by every page; ``self_contained=True`` embeds
    plotly.js in the page instead (one standalone 4.8 MB file). Written to a temporary file beside
    ``path`` and renamed into place, so a reader never sees a half-written file. The div id is
    fixed, so the same figure always gives the same bytes.
    """
    path = Path(path)
    title = title or (fig.layout.title.text or "funnel_tl figure").split("<br>")[0].replace("<b>", "").replace("</b>", "")
    config = {"toImageButtonOptions": {"format": "png", "filename": path.stem, "width": WIDTH, "height": HEIGHT,
                                       "scale": 2}}
    body = figure_div(fig, "funnel-tl-figure", config)
    return write_page(path, lambda plotlyjs: page_html(title, body, plotlyjs), self_contained, root)


def find_chrome() -> str | None:
    """A Chrome/Chromium executable kaleido can drive: ``$BROWSER_PATH``, else one on PATH."""
    explicit = os.environ.get("BROWSER_PATH")
    if explicit and Path(explicit).is_file():
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def png_missing() -> str | None:
    """Why ``write_png`` cannot work here (one line saying what to install), or None when it can."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install kaleido, or pip install 'funnel_tl[png]')"
    if find_chrome() is None:
        return ("kaleido found no Chrome/Chromium (apt-get install chromium, or set BROWSER_PATH to a "
                "Chrome executable)")
    return None


def png_help() -> str:
    """The line the CLI prints when it wrote no PNG: the reason, and the way round it."""
    reason = png_missing()
    return f"PNG skipped: {reason}; or open the HTML and use the camera icon" if reason else ""


def png_available() -> bool:
    """Whether ``write_png`` can work here: kaleido importable and a Chrome/Chromium found."""
    return png_missing() is None


# What ``--png`` writes of every figure: raster for slides, vector for papers (kaleido can all three).
IMAGE_FORMATS = ("png", "svg", "pdf")


def require_images() -> None:
    """Refuse ``--png`` in one line, before any work, where kaleido or Chrome is missing."""
    reason = png_missing()
    if reason is not None:
        raise FunnelError(f"--png needs kaleido and a Chrome/Chromium: {reason}")


def write_images(figures: dict, scale: float = 2) -> list[Path] | None:
    """Write each figure of ``{path: figure}`` as its path's suffix says (.png, .svg, .pdf, .jpeg,
    .webp) through kaleido, in one browser session, each file atomically; the paths written, or
    ``None`` with a ``UserWarning`` saying why when kaleido or Chrome is missing.

    A figure is drawn at its own layout's width and height (``WIDTH`` × ``HEIGHT`` where it sets
    none); ``scale`` multiplies the pixels of raster formats only. MathJax is off: kaleido would
    fetch it from a CDN, and no title here needs it.
    """
    reason = png_missing()
    if reason is not None:
        warnings.warn(f"no image written to {', '.join(str(path) for path in figures)}: {reason}", UserWarning,
                      stacklevel=2)
        return None
    import kaleido

    os.environ.setdefault("BROWSER_PATH", find_chrome())  # choreographer (kaleido's browser driver) reads it
    specs, moves = [], []
    for path, fig in figures.items():
        path = Path(path)
        kind = path.suffix.lower().lstrip(".")
        if kind not in ("png", "svg", "pdf", "jpeg", "jpg", "webp"):
            raise FunnelError(f"cannot write a figure as {path.name}: give a .png, .svg, .pdf, .jpeg or .webp path")
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = temporary_beside(path)  # remove_temporaries finds it if this process is killed
        os.close(descriptor)
        raster = kind in ("png", "jpeg", "jpg", "webp")
        specs.append(dict(fig=fig.to_dict(), path=Path(temporary), opts=dict(
            format="jpeg" if kind == "jpg" else kind, width=fig.layout.width or WIDTH,
            height=fig.layout.height or HEIGHT, scale=scale if raster else 1)))
        moves.append((Path(temporary), path))
    try:
        kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False})
        for temporary, path in moves:
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
    finally:
        for temporary, _ in moves:
            temporary.unlink(missing_ok=True)
    return [path for _, path in moves]


def write_image(fig: go.Figure, path: str | os.PathLike, width: int | None = None, height: int | None = None,
                scale: float = 2) -> Path | None:
    """Write ``fig`` as an image, the format by ``path``'s suffix (.png, .svg, .pdf), atomically;
    ``None`` with a ``UserWarning`` saying why when kaleido or Chrome is missing (``png_missing``).
    ``width``/``height`` default to the figure's own (``WIDTH`` × ``HEIGHT`` where it has none).

    >>> write_image(plot_funnel(result), "runs/demo/funnel.svg")  # doctest: +SKIP
    PosixPath('runs/demo/funnel.svg')
    """
    reason = png_missing()
    if reason is not None:
        warnings.warn(f"no image written to {path}: {reason}", UserWarning, stacklevel=2)
        return None
    if width is not None or height is not None:
        fig = go.Figure(fig).update_layout(width=width or fig.layout.width or WIDTH,
                                           height=height or fig.layout.height or HEIGHT)
    return write_images({path: fig}, scale=scale)[0]


def write_png(fig: go.Figure, path: str | os.PathLike, width: int = WIDTH, height: int = HEIGHT,
              scale: float = 2) -> Path | None:
    """Write ``fig`` as a PNG through kaleido, atomically; ``None`` when kaleido or Chrome is missing.

    When it writes nothing it says why in a ``UserWarning`` (``png_missing()`` gives the same
    line), so a notebook user sees what to install instead of a silent None.
    """
    if png_missing() is not None:
        warnings.warn(f"no PNG written to {path}: {png_missing()}", UserWarning, stacklevel=2)
        return None
    return write_image(fig, path, width=width, height=height, scale=scale)


def export_figures(figures: dict[str, go.Figure], folder: str | os.PathLike,
                   formats: tuple[str, ...] = IMAGE_FORMATS) -> list[Path]:
    """Every figure of a page (``{name: figure}``) as folder/NAME.png, .svg and .pdf (``--png``).

    Raises ``FunnelError`` where kaleido or Chrome is missing (``--png`` asked for them).
    """
    require_images()
    return write_images({Path(folder) / f"{name}.{kind}": fig for name, fig in figures.items() for kind in formats})
