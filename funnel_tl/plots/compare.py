"""Figures and the HTML page of a sweep (``Comparison``): gains on normalized depth overlaid,
a models × depth heatmap, gains against training step, and the verdict table.

Every figure is returned as a ``go.Figure``; ``render_html`` puts them on one page that opens
with no network (plotly.js embedded, or loaded from a ``plotly.min.js`` beside it). A sweep over
training checkpoints (of one model or of several sizes) leads with gains against step, one row
of panels per size; its overlay draws a dozen checkpoints with the rest a click away, its
heatmaps put the step on their y axis at a bounded height, and its tables fold away. Drawing is
linear in the rows: shared lines once per panel, and the checkpoints an overlay leaves out one
trace per panel (``benchmarks/bench_sweep.py --case page`` times it per row).

Model lines use Okabe and Ito's colour-blind-safe palette (up to eight unordered models); an
ordered sweep (checkpoints, many sizes) and the layers of a training figure use Viridis, which
stays ordered in grey and for red-green colour-blind readers. Log axes carry 1-2-5 ticks per decade.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from funnel_tl.errors import FunnelError
from funnel_tl.plots.style import DIVERGING, gain_colorbar, intervals_of, log_ticks
from funnel_tl.plots.sweep_style import (
    COMPONENT_TITLES,
    MAX_HEATMAP_HEIGHT,
    PANEL_TITLES,
    SEQUENTIAL,
    base_label,
    colorbar_carrier,
    component_gains,
    heatmap_scale,
    is_checkpoint_sweep,
    model_colors,
    model_groups,
    neutral_lines,
    normalized_depth,
    short_labels,
    show_all_button,
    step_scale,
    subtitle,
    sweep_extent,
    thinned,
    viridis,
)
from funnel_tl.plots.training import step_heatmap


def plot_depth_overlay(comparison, components=("attn", "mlp", "block")) -> go.Figure:
    """One panel per component, every model's per-layer gains on normalized depth, log scale.

    Up to ``OVERLAY_LINES`` rows, each is drawn with its legend entry. Past that (a Pythia sweep
    has 154 checkpoints per size) about ``THINNED_LINES`` are drawn (``thinned``), coloured by
    step with a colour bar in place of the legend; a sweep over several sizes' checkpoints draws
    each size's last checkpoint, one legend entry per size. A button then shows every checkpoint:
    one trace per panel and size holding them all, markers coloured by step. The cost is linear
    in rows.
    """
    rows = comparison.ok
    if not rows:
        raise FunnelError("no model in this comparison was measured successfully: nothing to plot")
    names = short_labels(rows)
    groups = model_groups(rows)
    stepped = is_checkpoint_sweep(rows)
    sizes = len(groups) > 1  # several models' checkpoints: their last checkpoints compared
    if sizes:
        drawn = [group[-1] for _, group in groups]
    else:
        drawn = [rows[i] for i in thinned(rows)]
    by_step = stepped and not sizes and len(drawn) < len(rows)  # the drawn lines coloured by step
    fraction, bar = step_scale([row.step for row in rows]) if stepped else (None, None)
    figure = make_subplots(
        rows=1,
        cols=len(components),
        shared_yaxes=True,
        horizontal_spacing=0.03,
        subplot_titles=[PANEL_TITLES[c] for c in components],
    )
    hidden: list[int] = []
    if len(drawn) < len(rows):  # every row, one trace per panel (and size), shown on demand
        for base, group in groups:
            for column, component in enumerate(components, start=1):
                hidden.append(len(figure.data))
                figure.add_trace(
                    _every_row_trace(comparison, group, component, fraction, base if sizes else None), row=1, col=column
                )
    if by_step:
        assert fraction is not None  # by_step only in a checkpoint sweep, which has a step scale
        colors = viridis([fraction(row.step) for row in drawn])
    else:
        colors = model_colors(drawn, ordered=False if sizes else None)
    for row, color in zip(drawn, colors, strict=False):
        name = f"{base_label(row.base)} @ step {row.step:,}" if sizes else names[row.model]
        for column, component in enumerate(components, start=1):
            figure.add_trace(
                _depth_trace(
                    comparison.results[row.model],
                    component,
                    row.model,
                    name,
                    color,
                    showlegend=column == 1 and not by_step,
                ),
                row=1,
                col=column,
            )
    if fraction is not None and hidden:
        figure.update_layout(coloraxis=dict(colorscale=SEQUENTIAL, cmin=0, cmax=1, colorbar=bar))
        if by_step:  # otherwise the bar shows with the hidden checkpoints it describes
            colorbar_carrier(figure, "coloraxis")
    if hidden:
        show_all_button(figure, hidden, len(rows), "checkpoint" if stepped else "model")
    neutral_lines(figure, 1, len(components))
    low, high = sweep_extent(comparison, rows if hidden else drawn, components)
    figure.update_yaxes(type="log", showgrid=True, **log_ticks(low, high))
    figure.update_yaxes(title_text="gain  (< 1 contracts, > 1 expands; log scale)", row=1, col=1)
    figure.update_xaxes(title_text="normalized depth", range=[-0.04, 1.04], zeroline=False)
    if sizes:
        what = f"each model's last checkpoint ({len(rows)} checkpoints of {len(groups)} models)"
        shown = ""
    else:
        what = "training checkpoints" if stepped else "models"
        shown = (
            f"; {len(drawn)} of {len(rows)} drawn, colour = step"
            if by_step
            else (f"; {len(drawn)} of {len(rows)} drawn" if hidden else "")
        )
    figure.update_layout(
        title=dict(
            text=f"Gains across {what}<br><sup>{subtitle(comparison)}; "
            f"depth = layer / (layers − 1){shown}; bars: 95% intervals over prompts, "
            "where drawn</sup>"
        ),
        template="plotly_white",
        height=460,
        legend=dict(title="model" if sizes or not stepped else "checkpoint"),
        hovermode="closest",
        margin=dict(t=110),
    )
    return figure


def _depth_trace(result, component: str, label: str, name: str, color: str, showlegend: bool) -> go.Scatter:
    """One model's gains of one component on normalized depth, with its intervals where drawn."""
    depth = normalized_depth(result.n_layers)
    layers = np.arange(result.n_layers)
    gains = result.gains(component)  # [layer]
    bounds = intervals_of(result, component)  # [layer, 2] or None
    return go.Scatter(
        x=depth,
        y=gains,
        mode="lines+markers",
        customdata=layers if bounds is None else np.column_stack([layers, bounds]),
        name=name,
        legendgroup=label,
        showlegend=showlegend,
        line=dict(color=color, width=1.8),
        marker=dict(color=color, size=5),
        error_y=None
        if bounds is None
        else dict(
            type="data",
            symmetric=False,
            array=bounds[:, 1] - gains,
            arrayminus=gains - bounds[:, 0],
            color=color,
            thickness=1,
            width=0,
        ),
        hovertemplate=(
            f"<b>{html.escape(label)}</b><br>layer %{{customdata{'' if bounds is None else '[0]'}}}"
            f" (depth %{{x:.2f}})<br>{COMPONENT_TITLES[component]} %{{y:.3f}}"
            + ("" if bounds is None else " [%{customdata[1]:.3f}, %{customdata[2]:.3f}]")
            + "<extra></extra>"
        ),
    )


def _every_row_trace(comparison, group, component: str, fraction, base) -> go.Scatter:
    """Every row of ``group`` as one trace (lines joined by gaps), thin grey lines, markers coloured
    by step: what the overlay's button shows. One trace, not one per row: linear to build and draw."""
    xs, ys, custom, colors = [], [], [], []
    names = short_labels(group)
    for row in group:
        result = comparison.results[row.model]
        n = result.n_layers
        xs.extend(normalized_depth(n).tolist() + [None])
        ys.extend(result.gains(component).tolist() + [None])
        # Which row a point is: its step in a checkpoint sweep, its name in a sweep over models.
        which = f"{row.step:,}" if fraction is not None else html.escape(names[row.model])
        custom.extend([[which, layer] for layer in range(n)] + [[None, None]])
        colors.extend([fraction(row.step) if fraction is not None else 0.0] * n + [0.0])
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines+markers",
        visible=False,
        showlegend=False,
        connectgaps=False,
        name=("every checkpoint" if fraction is not None else "every model")
        if base is None
        else f"{base_label(base)}: every checkpoint",
        line=dict(color="rgba(120,120,120,0.35)", width=0.8),
        marker=dict(
            size=4,
            color=colors if fraction is not None else "rgba(120,120,120,0.6)",
            coloraxis="coloraxis" if fraction is not None else None,
        ),
        customdata=custom,
        hovertemplate=(
            ("" if base is None else f"<b>{html.escape(base_label(base))}</b><br>")
            + ("step " if fraction is not None else "")
            + "%{customdata[0]}, layer %{customdata[1]} "
            f"(depth %{{x:.2f}})<br>{COMPONENT_TITLES[component]} %{{y:.3f}}<extra></extra>"
        ),
    )


def plot_depth_heatmap(comparison, component: str = "mlp") -> go.Figure:
    """Models (rows, in sweep order) × depth (columns) coloured by log gain, centred on 1.

    Models of different depths share the columns of the deepest one: a cell shows the gain of the
    layer that covers that fraction of the network (nearest layer; nothing is interpolated).
    A checkpoint sweep is drawn instead with the training step on the y axis (its own scale,
    ``_step_axis``), one panel per model size, at a bounded height however many checkpoints.
    """
    if component not in COMPONENT_TITLES:
        raise FunnelError(f"unknown component {component!r}: choose {', '.join(COMPONENT_TITLES)}")
    rows = comparison.ok
    if not rows:
        raise FunnelError("no model in this comparison was measured successfully: nothing to plot")
    if is_checkpoint_sweep(rows):
        return step_heatmap(comparison, component)
    results = [comparison.results[row.model] for row in rows]
    n_columns = max(result.n_layers for result in results)
    centers = (np.arange(n_columns) + 0.5) / n_columns  # fraction of the network at each column
    log_gains, hover = [], []
    for result in results:
        gains = component_gains(result, component)  # [layer]
        layer = np.minimum(np.floor(centers * result.n_layers).astype(int), result.n_layers - 1)  # [column]
        log_gains.append(np.log10(gains[layer]))
        hover.append(np.stack([layer, gains[layer]], axis=-1))  # [column, 2]
    z = np.asarray(log_gains)  # [model, column]
    reach, ticks = heatmap_scale(z)
    names = short_labels(rows)
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=centers,
            y=[names[row.model] for row in rows],
            customdata=np.asarray(hover),
            colorscale=DIVERGING,
            zmid=0,
            zmin=-reach,
            zmax=reach,
            colorbar=gain_colorbar(ticks, title=dict(text=COMPONENT_TITLES[component])),
            hovertemplate="<b>%{y}</b><br>layer %{customdata[0]:.0f} (depth %{x:.2f})"
            f"<br>{COMPONENT_TITLES[component]} %{{customdata[1]:.3f}}<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(title_text="depth (fraction of the layers)", range=[0, 1])
    figure.update_layout(
        title=dict(
            text=f"{PANEL_TITLES[component]} by model and depth<br>"
            f"<sup>{subtitle(comparison)}; blue contracts, red expands</sup>"
        ),
        # 32 px a model up to 17 of them; past that the rows get thinner, never the page longer.
        template="plotly_white",
        height=min(MAX_HEATMAP_HEIGHT, max(320, 160 + 32 * len(rows))),
        margin=dict(t=90),
    )
    return figure
