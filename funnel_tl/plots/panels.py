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
4. ``plot_cumulative``: the stream's real growth, ‖resid_post_L‖ / ‖resid_pre_0‖ per prompt,
   averaged (``result.block_cumulative_gains``), with and without position 0, on a log scale.

The seed's own panel 4, the running product of attn × MLP gains, multiplies ratios that each have
a denominator of their own: on SmolLM2-135M it reaches 5.8e56 under the seed definition and 6e-69
under the residual one, while the stream grows ~400-fold. It is no norm ratio of any activation;
``plot_seed_product`` still draws it, titled as what it is, with its lowest point (the seed's
"bottleneck") and the output marked.

Panel 1 also draws each gain without position 0 (dashed; ``result.gains_without_first``), where
the attention sink's massive activations can make a layer's gain; the hover gives each layer's
gain, its value without position 0 and the median per-token gain (``funnel_tl.measure.medians``).

Colours are Okabe and Ito's palette, which red-green colour-blind readers can tell apart:
attention blue, MLP vermillion, expanding orange, contracting sky blue.

Panels 1-3 use a linear axis, as the seed, unless their values span more than ``LOG_SPAN``-fold
(Pythia's attention gains of 0.08 beside an MLP gain of 3.6 do); they then go to a log axis, where
gain 1 is the middle and bars rise or hang from it. ``log_gains=True``/``False`` forces either.

Every function takes a ``GainResult`` and returns a ``go.Figure``; nothing is shown from here.
A result measured on some layers only (``measure_gains(..., layers=...)``) is drawn at its true
layer indices; panel 4 covers every measured layer when layer 0 was measured (its resid_pre is the
denominator; else it says so; the seed's product covers the measured prefix 0..k only), and the
subtitle says the Funnel test is not testable.
Error bars and bands are the result's intervals over prompts (``result.with_intervals()``) when it
carries them. Hovering a point shows its layer, value and interval.

>>> from funnel_tl import load_model, measure_gains                      # doctest: +SKIP
>>> result = measure_gains(load_model(), "seed").with_intervals()        # doctest: +SKIP
>>> fig = plot_funnel(result)                                            # doctest: +SKIP
>>> write_html(fig, "runs/demo/funnel.html")                             # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from funnel_tl.analysis.funnel import PYTHIA_1_4B_REFERENCE
from funnel_tl.plots.style import (
    BAR_WIDTH,
    COLORS,
    HEIGHT,
    aligned_log_range,
    broken_at_gaps,
    compact,
    denominators_of,
    error_bars,
    finish_figure,
    gain_axis,
    gain_extent,
    gain_trace,
    hover_template,
    intervals_of,
    label_spacing,
    labelled_trace,
    layer_ticks,
    legend_entry,
    legend_name,
    log_axis,
    log_ticks,
    neutral_line,
    place_legend,
    short_label,
    without_first_trace,
    without_first_values,
)

if TYPE_CHECKING:
    from funnel_tl.results.gains import GainResult

PANEL_TITLES = (
    "Attention vs MLP gain per layer",
    "MLP gain on normalized depth vs Pythia-1.4B",
    "Net effect per layer: attn × MLP (bars, left) and block gain (right)",
    "The stream's growth: ‖resid_post_L‖ / ‖resid_pre_0‖",
)
SEED_PRODUCT_TITLE = "The seed's running product of sublayer gains (attn × MLP)"
SEED_PRODUCT_NOTE = (
    "not a norm ratio of any activation: each factor divides by its own input, "
    "so the product compounds unrelated denominators"
)


# ---- panels -----------------------------------------------------------------------------------
def plot_attention_mlp(result: GainResult, log_gains: bool | None = None) -> go.Figure:
    """Panel 1: attention and MLP gain per layer, neutral line at 1, the max-MLP layer marked.

    Solid lines are ``result.attn_gains`` and ``result.mlp_gains`` (``[layer]``, ‖output‖ /
    ‖input‖ under ``result.definition``); dashed ones the same gains without position 0
    (``result.gains_without_first``) where the result carries them. The hover gives each
    layer's gain, interval, value without position 0 and median per-token gain.

    Args:
        result: The gains to draw, from ``measure_gains`` or ``gains_from_cache``, of every
            layer or of some (drawn at their true indices, ``result.layers``).
            Error bars are its intervals over prompts (``[layer, 2]``, lower and upper) when
            ``result.with_intervals()`` drew them; none otherwise.
        log_gains: ``True`` draws the gain axis logarithmic, ``False`` linear (as the seed),
            ``None`` decides: logarithmic when the values span more than ``LOG_SPAN``-fold (30),
            where a linear axis would flatten the small gains against zero.

    Returns:
        A one-panel ``go.Figure``, 560 pixels high, titled with the model and what the panel draws,
            the definition and prompts below; nothing is shown.
    """
    return _single(result, _attention_mlp, 0, log_gains)


def plot_mlp_depth(result: GainResult, log_gains: bool | None = None) -> go.Figure:
    """Panel 2: MLP gain on normalized depth against the Pythia-1.4B reference.

    ``result.mlp_gains`` (``[layer]``) at depth layer / (n_layers - 1): 0 the first layer, 1 the
    last, so models of any depth share the axis. The star is Pythia-1.4B's largest MLP gain
    (3.60, in its last layer), measured under ``definition="seed"``: its legend entry says so
    beside a result of the residual definition.

    Args:
        result: The gains to draw, from ``measure_gains`` or ``gains_from_cache``, of every
            layer or of some (drawn at their true indices, ``result.layers``).
            Error bars are its intervals over prompts (``[layer, 2]``, lower and upper) when
            ``result.with_intervals()`` drew them; none otherwise.
        log_gains: ``True`` draws the gain axis logarithmic, ``False`` linear (as the seed),
            ``None`` decides: logarithmic when the values span more than ``LOG_SPAN``-fold (30),
            where a linear axis would flatten the small gains against zero.

    Returns:
        A one-panel ``go.Figure``, 560 pixels high, titled with the model and what the panel draws,
            the definition and prompts below; nothing is shown.
    """
    return _single(result, _mlp_depth, 1, log_gains)


def plot_net_gain(result: GainResult, log_gains: bool | None = None) -> go.Figure:
    """Panel 3: attn × MLP gain bars coloured expanding/contracting, with the block gain.

    The bars are ``result.combined_gains`` (``[layer]``, attention gain × MLP gain of each
    layer), orange where ≥ 1 (expanding), sky blue below, hatched where the interval crosses 1;
    the largest expanding ones are labelled. The dotted line is the block gain ‖resid_post‖ /
    ‖resid_pre‖ (``result.block_gains``, ``[layer]``) on a logarithmic right axis of its own,
    its 1 level with the bars' 1: its denominator is the residual stream, the bars' (under
    ``definition="seed"``) the norms' outputs, so the two are not on one scale.

    Args:
        result: The gains to draw, from ``measure_gains`` or ``gains_from_cache``, of every
            layer or of some (drawn at their true indices, ``result.layers``).
            Error bars are its intervals over prompts (``[layer, 2]``, lower and upper) when
            ``result.with_intervals()`` drew them; none otherwise.
        log_gains: ``True`` draws the bars' (left) axis logarithmic, ``False`` linear (as the seed),
            ``None`` decides: logarithmic when the values span more than ``LOG_SPAN``-fold (30),
            where a linear axis would flatten the small gains against zero.

    Returns:
        A one-panel ``go.Figure``, 560 pixels high, titled with the model and what the panel draws,
            the definition and prompts below; nothing is shown.
    """
    return _single(result, _net_gain, 2, log_gains)


def plot_cumulative(result: GainResult) -> go.Figure:
    """Panel 4: the stream's growth ‖resid_post_L‖ / ‖resid_pre_0‖ (with and without position 0), log scale.

    ``result.block_cumulative_gains`` (``[layer]``, over ``result.stream_layers``): per prompt the
    mean over its tokens of ‖blocks.L.hook_resid_post‖ over that of ‖blocks.0.hook_resid_pre‖,
    averaged over prompts; dashed, the same without position 0, and the output (or last measured
    layer) marked. Not drawn, and said so, for a result that did not measure layer 0 (its
    resid_pre is the denominator).

    Args:
        result: The gains to draw, from ``measure_gains`` or ``gains_from_cache``, of every
            layer or of some (drawn at their true indices, ``result.layers``).
            The band is its intervals over prompts (``[layer, 2]``, lower and upper) when
            ``result.with_intervals()`` drew them; none otherwise.

    Returns:
        A one-panel ``go.Figure``, 560 pixels high, titled with the model and what the panel draws,
            the definition and prompts below; nothing is shown.
    """
    return _single(result, _cumulative, 3, True)


def plot_seed_product(result: GainResult) -> go.Figure:
    """The seed's "information funnel": the running product of attn × MLP gains, log scale, its
    lowest point and the output marked; titled as the seed's product, which is no norm ratio of
    any activation (``plot_cumulative`` draws the stream's real growth).

    ``result.cumulative_gains`` (``[layer]``, over ``result.cumulative_layers``: the measured
    prefix 0..k) is the product of ``combined_gains`` from layer 0 to each layer. Its lowest
    point is the seed's "bottleneck", marked unless it is layer 0 (the curve then only rises).

    Args:
        result: The gains to draw, from ``measure_gains`` or ``gains_from_cache``, of every
            layer or of some (drawn at their true indices, ``result.layers``).
            The band is its intervals over prompts (``[layer, 2]``, lower and upper) when
            ``result.with_intervals()`` drew them; none otherwise.

    Returns:
        A one-panel ``go.Figure``, 560 pixels high, titled with the model and what the panel draws,
            the definition and prompts below; nothing is shown.
    """
    fig = make_subplots(rows=1, cols=1)
    fig.update_layout(height=560)
    _seed_product(fig, result, row=1, col=1, legend="legend")
    place_legend(fig, 3, single=True, row=1, col=1)
    finish_figure(fig, result, height=560, heading=f"{SEED_PRODUCT_TITLE}<br><sup>{SEED_PRODUCT_NOTE}</sup>")
    return fig


def plot_funnel(result: GainResult, log_gains: bool | None = None) -> go.Figure:
    """The seed's four panels on one figure (2 × 2), titled with model, definition and prompts.

    ``plot_attention_mlp``, ``plot_mlp_depth``, ``plot_net_gain`` and ``plot_cumulative``, in
    that order (the module docstring says what each draws). The subtitle gives the definition,
    the prompts and tokens counted and the intervals, and says when a result of some layers only
    cannot take the Funnel test.

    Args:
        result: The gains to draw, from ``measure_gains`` or ``gains_from_cache``, of every
            layer or of some (drawn at their true indices, ``result.layers``).
            Error bars are its intervals over prompts (``[layer, 2]``, lower and upper) when
            ``result.with_intervals()`` drew them; none otherwise.
        log_gains: Draw panels 1-3 on a log axis (``True``), a linear one as the seed
            (``False``), or decide per panel (``None``): logarithmic when its values span more
            than ``LOG_SPAN``-fold (30), where a linear axis would flatten the small gains
            against zero. On a log axis the bars of panel 3 rise or hang from the neutral gain 1.
            Panel 4 is always logarithmic.

    Returns:
        A 2 × 2 ``go.Figure``, ``HEIGHT`` (1000) pixels high; nothing is shown.

    >>> result = measure_gains(load_model(), "seed").with_intervals()  # doctest: +SKIP
    >>> fig = plot_funnel(result)                                      # doctest: +SKIP
    >>> write_html(fig, "runs/demo/funnel.html")                       # doctest: +SKIP
    """
    # Panel 3 has a second y-axis for the block gain (another denominator: see the module docstring).
    # Wide gaps: panel 3's right axis and panel 4's left axis each carry tick labels and a title.
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=PANEL_TITLES,
        horizontal_spacing=0.17,
        vertical_spacing=0.2,
        specs=[[{}, {}], [{"secondary_y": True}, {}]],
    )
    # make_subplots narrows every column for the one secondary axis; give the width back.
    for axis, domain in (("xaxis", [0, 0.415]), ("xaxis2", [0.585, 1]), ("xaxis3", [0, 0.415]), ("xaxis4", [0.585, 1])):
        fig.layout[axis].domain = domain
    for title, column in zip(fig.layout.annotations, (0, 1, 0, 1), strict=False):  # the subplot titles, centred again
        title.x = (0.415 / 2, (0.585 + 1) / 2)[column]
    fig.update_layout(height=HEIGHT)
    for index, panel in enumerate((_attention_mlp, _mlp_depth, _net_gain, _cumulative)):
        panel(
            fig,
            result,
            row=index // 2 + 1,
            col=index % 2 + 1,
            legend=legend_name(index),
            log=True if panel is _cumulative else log_gains,
        )
        place_legend(fig, index, row=index // 2 + 1, col=index % 2 + 1)
    finish_figure(fig, result, height=HEIGHT)
    return fig


def _single(result, panel, index: int, log: bool | None) -> go.Figure:
    fig = make_subplots(rows=1, cols=1, specs=[[{"secondary_y": panel is _net_gain}]])
    fig.update_layout(height=560)
    panel(fig, result, row=1, col=1, legend="legend", log=log)
    place_legend(fig, index, single=True, row=1, col=1)
    finish_figure(fig, result, height=560, heading=PANEL_TITLES[index])
    return fig


# ---- what each panel draws --------------------------------------------------------------------
def _attention_mlp(fig, result, row, col, legend, log=None):
    layers = np.asarray(result.layers)
    log = log_axis(log, result, ("attn", "mlp"), extra=without_first_values(result, ("attn", "mlp")))
    # No shading under the attention curve, though the seed has one ("Attn Contraction"): the area
    # under a gain says nothing the line does not, a log axis has no zero to shade to, and a subset's
    # gaps cannot be shaded; unexplained, it read as an interval band.
    for component in ("attn", "mlp"):
        fig.add_trace(gain_trace(result, component, layers, legend=legend), row=row, col=col)
    for component in ("attn", "mlp"):
        without = without_first_trace(result, component, layers, legend)
        if without is not None:
            fig.add_trace(without, row=row, col=col)
    neutral_line(fig, row, col)
    top = int(layers[np.argmax(result.mlp_gains)])
    fig.add_vline(
        x=top,
        line=dict(color=COLORS["mlp"], dash="dot", width=1.5),
        row=row,
        col=col,
        annotation=dict(text=f"max MLP L{top}", font=dict(color=COLORS["mlp"], size=13)),
        # on the side with more room: the axis spans the measured layers only
        annotation_position="top left" if top > (result.layers[0] + result.layers[-1]) / 2 else "top right",
    )
    fig.update_xaxes(title_text="layer", row=row, col=col, **layer_ticks(result.n_layers, result.layers))
    fig.update_yaxes(
        title_text="gain  ‖output‖ / ‖input‖" + (" (log)" if log else ""),
        row=row,
        col=col,
        **gain_axis(log, gain_extent(result, ("attn", "mlp"), extra=without_first_values(result, ("attn", "mlp")))),
    )


def _mlp_depth(fig, result, row, col, legend, log=None):
    depth = np.linspace(0, 1, result.n_layers)[list(result.layers)]  # the measured layers' depths
    log = log_axis(log, result, ("mlp",), extra=[PYTHIA_1_4B_REFERENCE["mlp_max_gain"]])
    fig.add_trace(
        gain_trace(result, "mlp", depth, legend=legend, name=f"{short_label(result.model)} MLP", x_label="depth"),
        row=row,
        col=col,
    )
    neutral_line(fig, row, col)
    reference = PYTHIA_1_4B_REFERENCE
    last = reference["n_layers"] - 1
    note = "" if result.definition == "seed" else " (definition=seed)"
    fig.add_hline(
        y=reference["mlp_max_gain"], line=dict(color=COLORS["reference"], dash="dot", width=1.5), row=row, col=col
    )
    fig.add_trace(
        go.Scatter(
            x=[1.0],
            y=[reference["mlp_max_gain"]],
            mode="markers",
            legend=legend,
            marker=dict(symbol="star", size=13, color=COLORS["reference"], line=dict(color="white", width=1)),
            name=f"Pythia-1.4B max MLP {reference['mlp_max_gain']:.2f} (L{last}){note}",
            hovertemplate=f"Pythia-1.4B L{last} (depth 1.00)<br>MLP gain {reference['mlp_max_gain']:.3f}"
            f"{note}<extra></extra>",
        ),
        row=row,
        col=col,
    )
    fig.update_xaxes(
        title_text="normalized layer position (0 = first, 1 = last)", range=[-0.03, 1.05], row=row, col=col
    )
    extent = gain_extent(result, ("mlp",), extra=[PYTHIA_1_4B_REFERENCE["mlp_max_gain"]])
    fig.update_yaxes(title_text="MLP gain" + (" (log)" if log else ""), row=row, col=col, **gain_axis(log, extent))


def _net_gain(fig, result, row, col, legend, log=None):
    gains = result.combined_gains
    layers = np.asarray(result.layers)
    intervals = intervals_of(result, "combined")
    log = log_axis(log, result, ("combined",))
    expanding = gains >= 1  # the seed's colouring: by the point estimate
    # Hatched: the interval straddles 1, so the robust verdict counts the layer as neither.
    undetermined = (
        (intervals[:, 0] <= 1) & (intervals[:, 1] >= 1) if intervals is not None else np.zeros_like(expanding)
    )
    for kind, chosen in (("contracting", ~expanding), ("expanding", expanding)):
        if not chosen.any():
            continue
        marker = dict(color=COLORS[kind], opacity=0.75, line=dict(color="black", width=0.5))
        # The bars stay out of the legend: it would show the first bar's hatching for the kind.
        legend_entry(fig, f"attn × MLP {kind}", marker, legend, row, col, group=kind)
        chosen_intervals = intervals[chosen] if intervals is not None else None
        # A log axis has no zero: its bars span from the neutral gain 1 to the gain.
        height = dict(base=1, y=gains[chosen] - 1) if log else dict(y=gains[chosen])
        fig.add_trace(
            go.Bar(
                # Without a width Plotly sizes bars by the smallest gap between their x values: two
                # expanding layers 11 apart drew bars 11 layers wide.
                x=layers[chosen],
                **height,
                width=BAR_WIDTH,
                name=f"attn × MLP {kind}",
                legend=legend,
                legendgroup=kind,
                showlegend=False,
                marker=dict(
                    **marker,
                    pattern=dict(shape=np.where(undetermined[chosen], "/", "").tolist(), fgcolor="white", size=6),
                ),
                **error_bars(gains[chosen], chosen_intervals, COLORS[f"{kind} edge"]),
                **hover_template(result, "combined", layers[chosen], gains[chosen], chosen_intervals),
            ),
            row=row,
            col=col,
        )
    if undetermined.any():
        legend_entry(
            fig,
            "hatched: interval crosses 1",
            dict(color="#bbbbbb", pattern=dict(shape="/", fgcolor="white", size=6)),
            legend,
            row,
            col,
        )
    # The block gain reads the residual stream, the bars (seed definition) the LayerNorm outputs:
    # its own axis, so that neither sets the other's range.
    block = gain_trace(
        result, "block", layers, legend=legend, symbol="diamond", name="block ‖resid_post‖ / ‖resid_pre‖ (right axis)"
    )
    block.line.update(dash="dot", width=1.5)  # thin and dotted: the bars stay the panel's subject
    fig.add_trace(block, row=row, col=col, secondary_y=True)
    neutral_line(fig, row, col, width=2)
    spacing = label_spacing(fig, row, col, layers, [f"L{layer}" for layer in layers] + [compact(g) for g in gains])
    for index in labelled_trace(gains, expanding, layers=layers, spacing=spacing):  # positions in the measured layers
        top = max(gains[index], intervals[index, 1] if intervals is not None else gains[index])
        # Annotations on a log axis are placed in log10 units.
        fig.add_annotation(
            x=layers[index],
            y=math.log10(top) if log else top,
            text=f"L{layers[index]}<br>{compact(gains[index])}",
            showarrow=False,
            yanchor="bottom",
            yshift=3,
            bgcolor="rgba(255, 255, 255, 0.75)",
            font=dict(size=12, color=COLORS["expanding edge"]),
            row=row,
            col=col,
        )
    # Room above the tallest bar or error bar for the labels.
    low, high = gain_extent(result, ("combined",))
    if log:
        decades = max(math.log10(high) - math.log10(low), 0.5)
        span = [math.log10(low) - 0.05 * decades, math.log10(high) + 0.18 * decades]  # log10 units
    else:
        span = [0, 1.15 * high]
    fig.update_xaxes(title_text="layer", row=row, col=col, **layer_ticks(result.n_layers, result.layers))
    denominators = denominators_of(result)
    fig.update_yaxes(
        title_text=f"attn × MLP gain (÷ {denominators})" + (" (log)" if log else ""),
        range=span,
        row=row,
        col=col,
        secondary_y=False,
        **gain_axis(log, (low, high), autorange=False),
    )
    # The block axis is logarithmic and placed so that its 1 sits level with the bars' 1: the one
    # dashed neutral line then serves both axes.
    neutral_at = (1 - span[0]) / (span[1] - span[0]) if not log else -span[0] / (span[1] - span[0])
    block_low, block_high = gain_extent(result, ("block",))
    fig.update_yaxes(
        title_text="block gain (log)",
        row=row,
        col=col,
        secondary_y=True,
        showgrid=False,
        zeroline=False,
        type="log",
        exponentformat="power",
        range=aligned_log_range(block_low, block_high, neutral_at),
        **log_ticks(block_low, block_high),
    )


def _interval_band(fig, x, intervals, fillcolor: str, result, legend, row: int, col: int) -> None:
    """A shaded band between ``intervals[:, 0]`` and ``intervals[:, 1]`` over ``x``: the upper edge
    first, invisible, then the lower one filled up to it, named as the result's confidence level."""
    fig.add_trace(
        go.Scatter(
            x=x, y=intervals[:, 1], mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip", legend=legend
        ),
        row=row,
        col=col,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=intervals[:, 0],
            mode="lines",
            line=dict(width=0),
            fill="tonexty",
            fillcolor=fillcolor,
            hoverinfo="skip",
            name=f"{100 * result.intervals.confidence:g}% interval",
            legend=legend,
        ),
        row=row,
        col=col,
    )


def _cumulative(fig, result, row, col, legend, log=True):
    """The stream's growth ‖resid_post_L‖ / ‖resid_pre_0‖ with its band, and without position 0 (dashed)."""
    layers = np.asarray(result.stream_layers)
    if not len(layers):
        _not_drawn(fig, result, row, col, legend, "its denominator is layer 0's resid_pre")
        return
    without = result.without_first_position if result.drop_first == 0 else None
    versions = [("all positions", result, "solid")]
    if without is not None and without.stream_layers:
        versions.append(("without position 0", without, "dash"))  # its band left out: one band reads clearly
    values = [np.ones(1)]
    for label, version, dash in versions:
        growth = version.block_cumulative_gains
        intervals = version.block_cumulative_intervals
        x, shown, intervals, hovered = broken_at_gaps(layers, layers, growth, intervals)
        if intervals is not None and dash == "solid":
            _interval_band(fig, x, intervals, "rgba(0, 114, 178, 0.2)", result, legend, row, col)
            values.append(intervals.ravel())
        customdata = np.column_stack([hovered, shown] + ([intervals] if intervals is not None else []))
        interval_text = (
            f"<br>{100 * result.intervals.confidence:g}% interval [%{{customdata[2]:.4g}}, %{{customdata[3]:.4g}}]"
            if intervals is not None
            else ""
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=shown,
                mode="lines+markers",
                name="stream growth" if dash == "solid" else label,
                legend=legend,
                line=dict(color=COLORS["attn"], width=2.5 if dash == "solid" else 2, dash=dash),
                marker=dict(size=4),
                customdata=customdata,
                hovertemplate=(
                    "after L%{customdata[0]}<br>‖resid_post‖ / ‖resid_pre_0‖ x%{customdata[1]:.4g}"
                    f" ({label}){interval_text}<extra></extra>"
                ),
            ),
            row=row,
            col=col,
        )
        values.append(growth)
    neutral_line(fig, row, col)
    growth = result.block_cumulative_gains
    end = "output" if layers[-1] == result.n_layers - 1 else "last measured"
    fig.add_trace(
        go.Scatter(
            x=[layers[-1]],
            y=[growth[-1]],
            mode="markers",
            legend=legend,
            name=f"{end} L{layers[-1]}: x{growth[-1]:.3g}",
            marker=dict(size=13, color=COLORS["output"], symbol="square", line=dict(color="white", width=1.5)),
            hovertemplate=f"{end}: L{layers[-1]}<br>the stream is x{growth[-1]:.4g} its input's norm<extra></extra>",
        ),
        row=row,
        col=col,
    )
    fig.update_xaxes(title_text="layer", row=row, col=col, **layer_ticks(result.n_layers, layers))
    values = np.concatenate(values)
    values = values[np.isfinite(values) & (values > 0)]
    fig.update_yaxes(
        title_text="stream norm / input norm (log)",
        type="log",
        exponentformat="power",
        row=row,
        col=col,
        **log_ticks(values.min(), values.max()),
    )


def _not_drawn(fig, result, row, col, legend, why: str) -> None:
    fig.add_annotation(
        text=f"not drawn: layer 0 was not measured (layers {result.layer_spans}),<br>and {why}",
        showarrow=False,
        x=0.5,
        y=0.5,
        xref="x domain",
        yref="y domain",
        font=dict(size=15, color=COLORS["neutral"]),
        row=row,
        col=col,
    )
    # An empty trace makes Plotly lay out the panel (a subplot without traces is not drawn, nor
    # its annotation); its axes stay, bare.
    fig.add_trace(go.Scatter(x=[None], y=[None], showlegend=False, hoverinfo="skip", legend=legend), row=row, col=col)
    for update in (fig.update_xaxes, fig.update_yaxes):
        update(showticklabels=False, showgrid=False, zeroline=False, range=[0, 1], row=row, col=col)


def _seed_product(fig, result, row, col, legend, log=True):
    # A running product from layer 0 is exact over the measured prefix 0..k only (all layers for a
    # full result): past a gap it would skip the missing layers' gains.
    layers = np.asarray(result.cumulative_layers)
    cumulative = result.cumulative_gains
    intervals = intervals_of(result, "cumulative")
    if not len(layers):
        _not_drawn(fig, result, row, col, legend, "the product runs from layer 0")
        return
    if intervals is not None:
        _interval_band(fig, layers, intervals, "rgba(31, 119, 180, 0.2)", result, legend, row, col)
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=cumulative,
            mode="lines+markers",
            name="the seed's cumulative attn × MLP gain",
            legend=legend,
            line=dict(color=COLORS["attn"], width=2.5),
            marker=dict(size=4),
            **hover_template(result, "cumulative", layers, cumulative, intervals),
        ),
        row=row,
        col=col,
    )
    neutral_line(fig, row, col)
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
        legend_entry(fig, "no bottleneck (lowest at L0)", dict(color="rgba(0,0,0,0)"), legend, row, col)
    for layer, label, color, symbol in markers:
        fig.add_trace(
            go.Scatter(
                x=[layer],
                y=[cumulative[layer]],
                mode="markers",
                legend=legend,
                name=f"{label} (L{layer}: {cumulative[layer]:.2g})",
                marker=dict(size=13, color=color, symbol=symbol, line=dict(color="white", width=1.5)),
                hovertemplate=f"{label}: L{layer}<br>cumulative gain {cumulative[layer]:.4g}<extra></extra>",
            ),
            row=row,
            col=col,
        )
    fig.update_xaxes(
        title_text="layer" if end == "output" else f"layer (measured prefix 0-{output} of {result.n_layers})",
        row=row,
        col=col,
        **layer_ticks(result.n_layers, layers),
    )
    values = np.concatenate([cumulative, [1.0]] + ([intervals.ravel()] if intervals is not None else []))
    fig.update_yaxes(
        title_text="product of the gains to the layer",
        type="log",
        exponentformat="power",
        row=row,
        col=col,
        **log_ticks(values.min(), values.max()),
    )
