"""What each of the seed's panels draws into one subplot: its traces, marks and axes.

``funnel_tl.plots.panels`` lays these out, four on one figure (``plot_funnel``) or one per
figure; each ``draw_*`` adds its panel to ``fig`` at ``(row, col)`` with its legend entries in
``legend``. The module docstring of ``panels`` says what each panel shows and why.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from funnel_tl.analysis.funnel import PYTHIA_1_4B_REFERENCE
from funnel_tl.plots.style import (
    BAR_WIDTH,
    COLORS,
    broken_at_gaps,
    compact,
    denominators_of,
    error_bars,
    gain_axis,
    gain_extent,
    gain_trace,
    hover_template,
    intervals_of,
    label_spacing,
    labelled_trace,
    layer_ticks,
    legend_entry,
    log_axis,
    log_range_and_level,
    log_ticks,
    neutral_line,
    short_label,
    without_first_trace,
    without_first_values,
)

if TYPE_CHECKING:
    pass


def draw_attention_mlp(fig, result, row, col, legend, log=None):
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


def draw_mlp_depth(fig, result, row, col, legend, log=None):
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


def draw_net_gain(fig, result, row, col, legend, log=None):
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
    block_range, level = log_range_and_level(block_low, block_high, neutral_at)  # log10 units
    if not level and block_range[0] < 0 < block_range[1]:
        # Not level (aligning would have more than doubled the block axis): its 1 gets a line of
        # its own, or a block gain below 1 would read as above the bars' dashed 1.
        fig.add_hline(
            y=1,
            line=dict(color=block.line.color or COLORS["neutral"], dash="dot", width=1),
            annotation=dict(text="block 1", font=dict(size=11, color=block.line.color), xanchor="right"),
            annotation_position="top right",
            row=row,
            col=col,
            secondary_y=True,
        )
    fig.update_yaxes(
        title_text="block gain (log)",
        row=row,
        col=col,
        secondary_y=True,
        showgrid=False,
        zeroline=False,
        type="log",
        exponentformat="power",
        range=block_range,
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


def draw_cumulative(fig, result, row, col, legend, log=True):
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


def draw_seed_product(fig, result, row, col, legend, log=True):
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
