"""A checkpoint sweep's figure: each component's gains over training steps, layer by layer."""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from funnel_tl.errors import FunnelError
from funnel_tl.plots.style import DIVERGING, gain_colorbar, intervals_of, log_ticks
from funnel_tl.plots.sweep_style import (
    COMPONENT_TITLES,
    HEATMAP_COLUMNS,
    MAX_LAYER_LEGEND,
    OVERLAY_LINES,
    PANEL_TITLES,
    SEQUENTIAL,
    STEP_HEATMAP_HEIGHT,
    bar_size,
    base_label,
    colorbar_carrier,
    component_gains,
    heatmap_scale,
    model_groups,
    neutral_lines,
    rows_layout,
    step_axis,
    subtitle,
    sweep_extent,
    viridis,
)


def step_heatmap(comparison, component: str) -> go.Figure:
    """Training step (y, the training figure's scale) × depth (x), one panel per model size."""
    groups = model_groups(comparison.ok)
    steps = sorted({row.step for row in comparison.ok})
    positions, axis = step_axis(steps)
    log = axis["type"] == "log"
    # The y axis is linear in log10(step) on a log step axis, so each cell spans half way to its
    # neighbours there (a heatmap's cells are centred on their y values).
    at = {step: math.log10(x) if log else x for step, x in zip(steps, positions, strict=True)}
    zs = []
    for _, group in groups:
        zs.append(np.stack([np.log10(component_gains(comparison.results[row.model], component)) for row in group]))
    reach, ticks = heatmap_scale(np.concatenate([z.ravel() for z in zs]))
    n_cols = min(len(groups), HEATMAP_COLUMNS)
    n_rows = math.ceil(len(groups) / n_cols)
    figure = make_subplots(
        rows=n_rows,
        cols=n_cols,
        shared_yaxes=True,
        horizontal_spacing=0.025,
        vertical_spacing=0.12 if n_rows > 1 else 0.0,
        subplot_titles=[base_label(base) for base, _ in groups] if len(groups) > 1 else None,
    )
    for index, ((base, group), z) in enumerate(zip(groups, zs, strict=True)):
        n_layers = z.shape[1]
        centers = (np.arange(n_layers) + 0.5) / n_layers
        step_of = np.array([row.step for row in group])
        custom = np.stack(np.broadcast_arrays(step_of[:, None], np.arange(n_layers)[None, :], 10.0**z), axis=-1)
        figure.add_trace(
            go.Heatmap(
                z=z,
                x=centers,
                y=[at[row.step] for row in group],
                customdata=custom,
                coloraxis="coloraxis",
                name=base_label(base),
                hovertemplate=f"<b>{html.escape(base_label(base))}</b><br>step %{{customdata[0]:,}}, "
                f"layer %{{customdata[1]}} (depth %{{x:.2f}})<br>{COMPONENT_TITLES[component]} "
                "%{customdata[2]:.3f}<extra></extra>",
            ),
            row=index // n_cols + 1,
            col=index % n_cols + 1,
        )
    tickvals = [math.log10(v) if log else v for v in axis.get("tickvals", [])]
    y_axis = dict(tickvals=tickvals, ticktext=axis["ticktext"]) if tickvals else {}
    figure.update_yaxes(**y_axis)
    for panel_row in range(1, n_rows + 1):
        figure.update_yaxes(title_text=axis["title_text"], row=panel_row, col=1)
    figure.update_xaxes(range=[0, 1])
    figure.update_xaxes(title_text="depth (fraction of the layers)", row=n_rows)
    figure.update_layout(
        coloraxis=dict(
            colorscale=DIVERGING,
            cmid=0,
            cmin=-reach,
            cmax=reach,
            colorbar=gain_colorbar(
                ticks,
                title=dict(text=COMPONENT_TITLES[component]),
                **({} if n_rows == 1 else bar_size(2 * STEP_HEATMAP_HEIGHT)),
            ),
        ),
        title=dict(
            text=f"{PANEL_TITLES[component]} by training step and depth<br>"
            f"<sup>{subtitle(comparison)}; blue contracts, red expands; {len(steps)} checkpoints"
            + (f" of {len(groups)} models" if len(groups) > 1 else "")
            + "</sup>"
        ),
        template="plotly_white",
        height=(STEP_HEATMAP_HEIGHT + 40) * n_rows + 110,
        margin=dict(t=100),
    )
    return figure


def plot_training(comparison, base: str | None = None) -> go.Figure:
    """Per-layer attention and MLP gains against training step: one row of two panels per model
    (each size of a sweep over several), or only ``base``'s.

    Checkpoints are ordered by step as numbers (``step500`` before ``step10000``). Colour is
    depth: one model of at most ``MAX_LAYER_LEGEND`` layers gets a legend entry per layer;
    deeper or several models share a colour bar of ``layer / (layers − 1)`` instead.
    """
    candidates = comparison.checkpoint_models
    if not candidates:
        raise FunnelError(
            "no model in this comparison has two or more measured checkpoints: run compare with --checkpoints"
        )
    if base is not None and base not in candidates:
        raise FunnelError(f"{base} has fewer than two measured checkpoints here: choose one of {', '.join(candidates)}")
    bases = [base] if base is not None else candidates
    groups = []
    for name in bases:
        rows = sorted((row for row in comparison.ok if row.base == name and row.step is not None), key=lambda r: r.step)
        results = [comparison.results[row.model] for row in rows]
        n_layers = {result.n_layers for result in results}
        if len(n_layers) != 1:
            raise FunnelError(f"the checkpoints of {name} have different layer counts {sorted(n_layers)}")
        groups.append((name, rows, results, n_layers.pop()))
    all_steps = sorted({row.step for _, rows, _, _ in groups for row in rows})
    positions, axis = step_axis(all_steps)
    x_of = dict(zip(all_steps, positions, strict=True))
    legend = len(groups) == 1 and groups[0][3] <= MAX_LAYER_LEGEND
    several = len(groups) > 1
    titles = [
        f"{base_label(name) + ': ' if several else ''}{kind} gain per layer"
        for name, *_ in groups
        for kind in ("Attention", "MLP")
    ]
    height, spacing = rows_layout(len(groups)) if len(groups) > 1 else (460, 0.0)
    figure = make_subplots(
        rows=len(groups),
        cols=2,
        shared_yaxes=True,
        shared_xaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=spacing,
        subplot_titles=titles,
    )
    any_bounds = False
    for panel_row, (name, rows, results, n_layers) in enumerate(groups, start=1):
        steps = [row.step for row in rows]
        x = [x_of[step] for step in steps]
        colors = viridis([layer / max(n_layers - 1, 1) for layer in range(n_layers)])
        for column, component in enumerate(("attn", "mlp"), start=1):
            gains = np.stack([result.gains(component) for result in results])  # [checkpoint, layer]
            each = [intervals_of(result, component) for result in results]
            # [checkpoint, layer, 2] when every checkpoint carries intervals
            bounds = np.stack(each) if all(b is not None for b in each) else None
            any_bounds |= bounds is not None
            for layer in range(n_layers):
                low_high = None if bounds is None else bounds[:, layer]  # [checkpoint, 2]
                figure.add_trace(
                    go.Scatter(
                        x=x,
                        y=gains[:, layer],
                        mode="lines" if len(rows) > OVERLAY_LINES else "lines+markers",
                        name=f"L{layer}",
                        customdata=np.column_stack([steps] + ([] if low_high is None else [low_high])),
                        legendgroup=f"L{layer}",
                        showlegend=legend and column == 1,
                        line=dict(color=colors[layer], width=1.6),
                        marker=dict(color=colors[layer], size=5),
                        error_y=None
                        if low_high is None
                        else dict(
                            type="data",
                            symmetric=False,
                            array=low_high[:, 1] - gains[:, layer],
                            arrayminus=gains[:, layer] - low_high[:, 0],
                            color=colors[layer],
                            thickness=1,
                            width=2,
                        ),
                        hovertemplate=(
                            (f"<b>{html.escape(base_label(name))}</b><br>" if several else "")
                            + f"layer {layer}, step %{{customdata[0]:,}}<br>{COMPONENT_TITLES[component]} "
                            "%{y:.3f}"
                            + ("" if low_high is None else " [%{customdata[1]:.3f}, %{customdata[2]:.3f}]")
                            + "<extra></extra>"
                        ),
                    ),
                    row=panel_row,
                    col=column,
                )
    neutral_lines(figure, len(groups), 2)
    # Steps under every row of panels, not only the last: a reader of the first size needs them too.
    figure.update_xaxes(showticklabels=True, **{key: value for key, value in axis.items() if key != "title_text"})
    figure.update_xaxes(title_text=axis["title_text"], row=len(groups))
    low, high = sweep_extent(comparison, [row for _, rows, _, _ in groups for row in rows], ("attn", "mlp"))
    figure.update_yaxes(type="log", **log_ticks(low, high))  # 1, 2, 5 per decade: no crowded minor labels
    for panel_row in range(1, len(groups) + 1):
        figure.update_yaxes(
            title_text="gain (log)" if several else "gain  (< 1 contracts; log scale)", row=panel_row, col=1
        )
    if not legend:
        figure.update_layout(
            coloraxis=dict(
                colorscale=SEQUENTIAL,
                cmin=0,
                cmax=1,
                colorbar=dict(
                    title=dict(text="layer<br>depth", side="top"),
                    tickvals=[0, 0.5, 1],
                    ticktext=["first", "0.5", "last"],
                    ticklabelposition="outside bottom",
                    **bar_size(height),
                ),
            )
        )
        colorbar_carrier(figure, "coloraxis")
    n_checkpoints = sum(len(rows) for _, rows, _, _ in groups)
    what = f"{len(groups)} models, {n_checkpoints} checkpoints" if several else f"{n_checkpoints} checkpoints"
    title = "Gains across training checkpoints" + ("" if several else f" of {html.escape(base_label(bases[0]))}")
    figure.update_layout(
        title=dict(
            text=f"{title}<br><sup>{subtitle(comparison)}; {what}, colour = layer (dark early, light late)"
            + ("; bars: 95% intervals over prompts" if any_bounds else "")
            + "</sup>"
        ),
        template="plotly_white",
        height=height,
        legend=dict(title="layer"),
        margin=dict(t=110),
    )
    return figure
