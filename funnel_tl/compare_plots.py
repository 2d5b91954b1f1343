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
import math
import os
import re
from typing import Callable

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .errors import FunnelError
from .outputs import slug
from .prompts import dropped_phrase
from .plots import (DIVERGING, OKABE_ITO, _extent as _result_extent, _intervals, _log_ticks, gain_colorbar, log_reach,
                    ticks_within)

COMPONENT_TITLES = {"attn": "attention gain", "mlp": "MLP gain", "block": "block gain", "combined": "combined gain"}
PANEL_TITLES = {"attn": "Attention gain", "mlp": "MLP gain", "block": "Block gain", "combined": "Combined gain"}
NEUTRAL_LINE = dict(dash="dash", color="gray", width=1)
# Up to this many checkpoints, the step axis labels every one of them.
MAX_STEP_LABELS = 12
# An overlay draws every row, each with its legend entry, up to OVERLAY_LINES rows per model; past
# that about THINNED_LINES of them (first and last included), coloured by step, the rest a click away.
OVERLAY_LINES = 24
THINNED_LINES = 12
# A training figure names each layer in its legend up to this many layers (one model); past that,
# or for several models, a colour bar of depth.
MAX_LAYER_LEGEND = 12
# Heatmaps keep a bounded height: a models × depth one at most this tall, a step × depth one this
# tall per row of panels, HEATMAP_COLUMNS model sizes side by side.
MAX_HEATMAP_HEIGHT = 720
STEP_HEATMAP_HEIGHT = 420
HEATMAP_COLUMNS = 4


def normalized_depth(n_layers: int) -> np.ndarray:
    """``layer / (n_layers - 1)``: the seed's axis for comparing models of different depths.

    >>> normalized_depth(5).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    return np.arange(n_layers) / max(n_layers - 1, 1)


def short_labels(rows) -> dict[str, str]:
    """Legend names: a hub name without its organisation, a local folder by its last part —
    unless two models would then share a name, in which case the full labels stay."""
    def short(label: str) -> str:
        name, at, step = label.partition("@")
        name = name.rstrip("/" + os.sep)
        return os.path.basename(name) + at + step if os.sep in name or "/" in name else label

    shortened = {row.model: short(row.model) for row in rows}
    if len(set(shortened.values())) < len(shortened):
        return {row.model: row.model for row in rows}
    return shortened


def _model_colors(rows, ordered: bool | None = None) -> list[str]:
    """Sequential colours for an ordered sweep (checkpoints, many sizes); distinct ones otherwise.
    ``ordered``: whether the rows are a sequence (default: when any is a training step)."""
    if not rows:
        return []
    palette = OKABE_ITO
    ordered = any(row.step is not None for row in rows) if ordered is None else ordered
    if len(rows) <= len(palette) and not ordered:
        return list(palette[: len(rows)])
    return _viridis([i / max(len(rows) - 1, 1) for i in range(len(rows))])


def _viridis(fractions) -> list[str]:
    """Viridis at ``fractions`` of ``[0, 1]``, stopping at 0.9: its last yellows vanish on white."""
    return plotly.colors.sample_colorscale("Viridis", [0.9 * float(f) for f in fractions])


# Viridis up to 0.9, as a colour scale for a colour bar (a step or a depth mapped to 0 … 1).
SEQUENTIAL = [[i / 9, color] for i, color in enumerate(plotly.colors.sample_colorscale(
    "Viridis", [0.9 * i / 9 for i in range(10)]))]


def _subtitle(comparison) -> str:
    settings = comparison.settings
    parts = [f"definition={settings.get('definition', '?')}", f"{settings.get('n_prompts', '?')} prompts"]
    if settings.get("drop_first"):
        parts.append(dropped_phrase(settings["drop_first"]))
    return ", ".join(parts)


def is_checkpoint_sweep(rows) -> bool:
    """Whether every row is a training checkpoint (of one model or of several sizes)."""
    rows = list(rows)
    return bool(rows) and all(row.step is not None for row in rows)


def model_groups(rows) -> list[tuple[str | None, list]]:
    """The rows of a checkpoint sweep by model (each size's checkpoints, steps ascending), in
    sweep order; any other sweep is one group, ``(None, rows)``."""
    rows = list(rows)
    if not is_checkpoint_sweep(rows):
        return [(None, rows)]
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row.base, []).append(row)
    return [(base, sorted(group, key=lambda row: row.step)) for base, group in groups.items()]


def base_label(base: str) -> str:
    """A model's short name for a panel title: a hub name without its organisation, a folder by its last part.

    >>> base_label("EleutherAI/pythia-70m"), base_label("/data/runs/ckpts/")
    ('pythia-70m', 'ckpts')
    """
    return os.path.basename(str(base).rstrip("/" + os.sep)) or str(base)


def thinned(rows, most: int = THINNED_LINES) -> list[int]:
    """Which of ``rows`` an overlay draws: all of them up to ``OVERLAY_LINES``; past that about
    ``most``, the first and the last included, evenly spaced on the step axis (log1p of the step:
    early training, where gains move most, is not drowned by a hundred late checkpoints) or, for
    rows without steps, in sweep order.

    >>> thinned(list(range(5)))
    [0, 1, 2, 3, 4]
    """
    n = len(rows)
    if n <= OVERLAY_LINES:
        return list(range(n))
    if all(getattr(row, "step", None) is not None for row in rows):
        where = np.log1p([row.step for row in rows])
    else:
        where = np.arange(n, dtype=float)
    wanted = np.linspace(where.min(), where.max(), most)
    return sorted({int(np.argmin(np.abs(where - w))) for w in wanted} | {0, n - 1})


def _step_scale(steps) -> tuple[Callable[[int], float], dict]:
    """Where each step sits along the step axis, as a fraction 0 … 1 (the colour of a checkpoint's
    line), and a colour bar labelled in steps at the step axis' own ticks."""
    steps = sorted(set(int(s) for s in steps))
    x, axis = _step_axis(steps)
    log = axis["type"] == "log"
    scale = (lambda v: math.log10(v)) if log else (lambda v: float(v))
    low, high = scale(min(x)), scale(max(x))
    span = (high - low) or 1.0
    position = dict(zip(steps, x))

    def fraction(step: int) -> float:
        return (scale(position[int(step)]) - low) / span

    if "tickvals" in axis:
        ticks = [(scale(v) - low) / span for v in axis["tickvals"]]
        labels = list(axis["ticktext"])
    else:  # a linear axis: five round steps
        values = np.linspace(min(steps), max(steps), 5)
        ticks, labels = [(scale(v) - low) / span for v in values], [f"{int(round(v)):,}" for v in values]
    kept = [0]  # a colour bar is shorter than an axis: no two labels closer than 8% of its length
    for index in range(1, len(ticks)):
        if ticks[index] - ticks[kept[-1]] >= 0.08:
            kept.append(index)
    ticks, labels = [ticks[i] for i in kept], [labels[i] for i in kept]
    bar = dict(title=dict(text="training<br>step", side="top"), tickvals=ticks, ticktext=labels, **_bar_size(460))
    return fraction, bar


def _bar_size(height: int) -> dict:
    """A colour bar's size: most of a one-row figure, at most 320 pixels, at the top, of a taller one."""
    if height <= 600:
        return dict(len=0.8, thickness=14)
    return dict(lenmode="pixels", len=320, y=1.0, yanchor="top", thickness=14)


def _colorbar_carrier(figure: go.Figure, coloraxis: str, row: int = 1, col: int = 1) -> None:
    """An invisible trace on ``coloraxis``, so its colour bar shows whatever traces are hidden."""
    figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                                marker=dict(color=[0.0], coloraxis=coloraxis)), row=row, col=col)


def _neutral_lines(figure: go.Figure, n_rows: int, n_cols: int) -> None:
    """The y = 1 line (no gain), once per panel."""
    for row in range(1, n_rows + 1):
        for col in range(1, n_cols + 1):
            figure.add_hline(y=1, line=NEUTRAL_LINE, row=row, col=col)


def _show_all_button(figure: go.Figure, hidden: list[int], n_rows: int, what: str = "checkpoint") -> None:
    """A toggle that shows (and hides again) the checkpoints (or models) an overlay leaves out."""
    figure.update_layout(updatemenus=[dict(
        type="buttons", direction="left", x=1.0, xanchor="right", y=1.0, yanchor="bottom", pad=dict(b=26),
        showactive=True, font=dict(size=11),
        buttons=[dict(label=f"show every {what} ({n_rows})", method="restyle",
                      args=[{"visible": True}, hidden], args2=[{"visible": False}, hidden])],
    )])


# A figure of one row of panels per model: each this tall, this far apart (pixels).
ROW_PANEL_PX, ROW_GAP_PX = 210, 70


def _rows_layout(n_rows: int, top: int = 110, bottom: int = 70) -> tuple[int, float]:
    """Height and ``make_subplots``' vertical spacing (a fraction of the plotting area) of a
    figure with ``n_rows`` rows of ``ROW_PANEL_PX`` panels ``ROW_GAP_PX`` apart."""
    area = n_rows * ROW_PANEL_PX + (n_rows - 1) * ROW_GAP_PX
    return top + bottom + area, (ROW_GAP_PX / area if n_rows > 1 else 0.0)


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
    fraction, bar = _step_scale([row.step for row in rows]) if stepped else (None, None)
    figure = make_subplots(rows=1, cols=len(components), shared_yaxes=True, horizontal_spacing=0.03,
                           subplot_titles=[PANEL_TITLES[c] for c in components])
    hidden: list[int] = []
    if len(drawn) < len(rows):  # every row, one trace per panel (and size), shown on demand
        for base, group in groups:
            for column, component in enumerate(components, start=1):
                hidden.append(len(figure.data))
                figure.add_trace(_every_row_trace(comparison, group, component, fraction,
                                                  base if sizes else None), row=1, col=column)
    if by_step:
        colors = _viridis([fraction(row.step) for row in drawn])
    else:
        colors = _model_colors(drawn, ordered=False if sizes else None)
    for row, color in zip(drawn, colors):
        name = f"{base_label(row.base)} @ step {row.step:,}" if sizes else names[row.model]
        for column, component in enumerate(components, start=1):
            figure.add_trace(_depth_trace(comparison.results[row.model], component, row.model, name, color,
                                          showlegend=column == 1 and not by_step), row=1, col=column)
    if fraction is not None and hidden:
        figure.update_layout(coloraxis=dict(colorscale=SEQUENTIAL, cmin=0, cmax=1, colorbar=bar))
        if by_step:  # otherwise the bar shows with the hidden checkpoints it describes
            _colorbar_carrier(figure, "coloraxis")
    if hidden:
        _show_all_button(figure, hidden, len(rows), "checkpoint" if stepped else "model")
    _neutral_lines(figure, 1, len(components))
    low, high = _extent(comparison, rows if hidden else drawn, components)
    figure.update_yaxes(type="log", showgrid=True, **_log_ticks(low, high))
    figure.update_yaxes(title_text="gain  (< 1 contracts, > 1 expands; log scale)", row=1, col=1)
    figure.update_xaxes(title_text="normalized depth", range=[-0.04, 1.04], zeroline=False)
    if sizes:
        what = f"each model's last checkpoint ({len(rows)} checkpoints of {len(groups)} models)"
        shown = ""
    else:
        what = "training checkpoints" if stepped else "models"
        shown = f"; {len(drawn)} of {len(rows)} drawn, colour = step" if by_step else (
            f"; {len(drawn)} of {len(rows)} drawn" if hidden else "")
    figure.update_layout(
        title=dict(text=f"Gains across {what}<br><sup>{_subtitle(comparison)}; "
                        f"depth = layer / (layers − 1){shown}; bars: 95% intervals over prompts, "
                        "where drawn</sup>"),
        template="plotly_white", height=460,
        legend=dict(title="model" if sizes or not stepped else "checkpoint"), hovermode="closest", margin=dict(t=110),
    )
    return figure


def _depth_trace(result, component: str, label: str, name: str, color: str, showlegend: bool) -> go.Scatter:
    """One model's gains of one component on normalized depth, with its intervals where drawn."""
    depth = normalized_depth(result.n_layers)
    layers = np.arange(result.n_layers)
    gains = result.gains(component)  # [layer]
    bounds = _intervals(result, component)  # [layer, 2] or None
    return go.Scatter(
        x=depth, y=gains, mode="lines+markers",
        customdata=layers if bounds is None else np.column_stack([layers, bounds]),
        name=name, legendgroup=label, showlegend=showlegend,
        line=dict(color=color, width=1.8), marker=dict(color=color, size=5),
        error_y=None if bounds is None else dict(
            type="data", symmetric=False, array=bounds[:, 1] - gains, arrayminus=gains - bounds[:, 0],
            color=color, thickness=1, width=0),
        hovertemplate=(f"<b>{html.escape(label)}</b><br>layer %{{customdata{'' if bounds is None else '[0]'}}}"
                       f" (depth %{{x:.2f}})<br>{COMPONENT_TITLES[component]} %{{y:.3f}}"
                       + ("" if bounds is None else " [%{customdata[1]:.3f}, %{customdata[2]:.3f}]")
                       + "<extra></extra>"),
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
        x=xs, y=ys, mode="lines+markers", visible=False, showlegend=False, connectgaps=False,
        name=("every checkpoint" if fraction is not None else "every model") if base is None
        else f"{base_label(base)}: every checkpoint",
        line=dict(color="rgba(120,120,120,0.35)", width=0.8),
        marker=dict(size=4, color=colors if fraction is not None else "rgba(120,120,120,0.6)",
                    coloraxis="coloraxis" if fraction is not None else None),
        customdata=custom,
        hovertemplate=(("" if base is None else f"<b>{html.escape(base_label(base))}</b><br>")
                       + ("step " if fraction is not None else "") + "%{customdata[0]}, layer %{customdata[1]} "
                       f"(depth %{{x:.2f}})<br>{COMPONENT_TITLES[component]} %{{y:.3f}}<extra></extra>"),
    )


def _what(rows) -> str:
    """What a sweep's rows are: "checkpoints" when they are all training steps of one model."""
    return "checkpoints" if rows and all(row.step is not None for row in rows) and len({row.base for row in rows}) == 1 \
        else "models"


def _extent(comparison, rows, components) -> tuple[float, float]:
    """Smallest and largest gain (interval ends included, and 1) the given panels draw."""
    lows, highs = zip(*(_result_extent(comparison.results[row.model], components) for row in rows))
    return min(lows), max(highs)


def _heatmap_scale(z) -> tuple[float, list[float]]:
    """How far the colour scale of log10 gains ``z`` reaches, and its ticks (in gains)."""
    reach = log_reach(z, 0.1)
    # Decades only once the scale spans more than one each way: 1-3 steps would crowd the colorbar.
    candidates = (0.001, 0.01, 0.1, 1, 10, 100, 1000) if reach > 1 else (0.1, 0.3, 1, 3, 10)
    return reach, ticks_within(reach, candidates)


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
        return _step_heatmap(comparison, component)
    results = [comparison.results[row.model] for row in rows]
    n_columns = max(result.n_layers for result in results)
    centers = (np.arange(n_columns) + 0.5) / n_columns  # fraction of the network at each column
    log_gains, hover = [], []
    for result in results:
        gains = _component_gains(result, component)  # [layer]
        layer = np.minimum(np.floor(centers * result.n_layers).astype(int), result.n_layers - 1)  # [column]
        log_gains.append(np.log10(gains[layer]))
        hover.append(np.stack([layer, gains[layer]], axis=-1))  # [column, 2]
    z = np.asarray(log_gains)  # [model, column]
    reach, ticks = _heatmap_scale(z)
    names = short_labels(rows)
    figure = go.Figure(go.Heatmap(
        z=z, x=centers, y=[names[row.model] for row in rows], customdata=np.asarray(hover),
        colorscale=DIVERGING, zmid=0, zmin=-reach, zmax=reach,
        colorbar=gain_colorbar(ticks, title=dict(text=COMPONENT_TITLES[component])),
        hovertemplate="<b>%{y}</b><br>layer %{customdata[0]:.0f} (depth %{x:.2f})"
                      f"<br>{COMPONENT_TITLES[component]} %{{customdata[1]:.3f}}<extra></extra>",
    ))
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(title_text="depth (fraction of the layers)", range=[0, 1])
    figure.update_layout(
        title=dict(text=f"{PANEL_TITLES[component]} by model and depth<br>"
                        f"<sup>{_subtitle(comparison)}; blue contracts, red expands</sup>"),
        # 32 px a model up to 17 of them; past that the rows get thinner, never the page longer.
        template="plotly_white", height=min(MAX_HEATMAP_HEIGHT, max(320, 160 + 32 * len(rows))), margin=dict(t=90),
    )
    return figure


def _component_gains(result, component: str) -> np.ndarray:
    return result.combined_gains if component == "combined" else result.gains(component)


def _step_heatmap(comparison, component: str) -> go.Figure:
    """Training step (y, the training figure's scale) × depth (x), one panel per model size."""
    groups = model_groups(comparison.ok)
    steps = sorted({row.step for row in comparison.ok})
    positions, axis = _step_axis(steps)
    log = axis["type"] == "log"
    # The y axis is linear in log10(step) on a log step axis, so each cell spans half way to its
    # neighbours there (a heatmap's cells are centred on their y values).
    at = {step: math.log10(x) if log else x for step, x in zip(steps, positions)}
    zs = []
    for _, group in groups:
        zs.append(np.stack([np.log10(_component_gains(comparison.results[row.model], component)) for row in group]))
    reach, ticks = _heatmap_scale(np.concatenate([z.ravel() for z in zs]))
    n_cols = min(len(groups), HEATMAP_COLUMNS)
    n_rows = math.ceil(len(groups) / n_cols)
    figure = make_subplots(rows=n_rows, cols=n_cols, shared_yaxes=True, horizontal_spacing=0.025,
                           vertical_spacing=0.12 if n_rows > 1 else 0.0,
                           subplot_titles=[base_label(base) for base, _ in groups] if len(groups) > 1 else None)
    for index, ((base, group), z) in enumerate(zip(groups, zs)):
        n_layers = z.shape[1]
        centers = (np.arange(n_layers) + 0.5) / n_layers
        step_of = np.array([row.step for row in group])
        custom = np.stack(np.broadcast_arrays(step_of[:, None], np.arange(n_layers)[None, :], 10.0 ** z), axis=-1)
        figure.add_trace(go.Heatmap(
            z=z, x=centers, y=[at[row.step] for row in group], customdata=custom, coloraxis="coloraxis",
            name=base_label(base),
            hovertemplate=f"<b>{html.escape(base_label(base))}</b><br>step %{{customdata[0]:,}}, "
                          f"layer %{{customdata[1]}} (depth %{{x:.2f}})<br>{COMPONENT_TITLES[component]} "
                          "%{customdata[2]:.3f}<extra></extra>",
        ), row=index // n_cols + 1, col=index % n_cols + 1)
    tickvals = [math.log10(v) if log else v for v in axis.get("tickvals", [])]
    y_axis = dict(tickvals=tickvals, ticktext=axis["ticktext"]) if tickvals else {}
    figure.update_yaxes(**y_axis)
    for panel_row in range(1, n_rows + 1):
        figure.update_yaxes(title_text=axis["title_text"], row=panel_row, col=1)
    figure.update_xaxes(range=[0, 1])
    figure.update_xaxes(title_text="depth (fraction of the layers)", row=n_rows)
    figure.update_layout(
        coloraxis=dict(colorscale=DIVERGING, cmid=0, cmin=-reach, cmax=reach,
                       colorbar=gain_colorbar(ticks, title=dict(text=COMPONENT_TITLES[component]),
                                              **({} if n_rows == 1 else _bar_size(2 * STEP_HEATMAP_HEIGHT)))),
        title=dict(text=f"{PANEL_TITLES[component]} by training step and depth<br>"
                        f"<sup>{_subtitle(comparison)}; blue contracts, red expands; {len(steps)} checkpoints"
                        + (f" of {len(groups)} models" if len(groups) > 1 else "") + "</sup>"),
        template="plotly_white", height=(STEP_HEATMAP_HEIGHT + 40) * n_rows + 110, margin=dict(t=100),
    )
    return figure


def _step_axis(steps: list[int]) -> tuple[list[float], dict]:
    """x positions and axis settings for training steps: a log axis when the positive steps span
    a factor of 30 or more (checkpoints are usually log-spaced early, as Pythia's), with step 0
    drawn at half the first positive step and labelled 0; a linear axis otherwise."""
    positive = [s for s in steps if s > 0]
    if len(positive) < 2 or max(positive) / min(positive) < 30:
        return [float(s) for s in steps], dict(type="linear", title_text="training step")
    zero_at = min(positive) / 2
    x = [float(s) if s > 0 else zero_at for s in steps]
    # A log axis has no 0: say where step 0 is drawn, so its distance to the next step is not read as data.
    title = "training step (log scale" + (f"; step 0 drawn at {zero_at:g})" if 0 in steps else ")")
    if len(steps) <= MAX_STEP_LABELS:  # few checkpoints: label each one
        return x, dict(type="log", tickvals=x, ticktext=[f"{s:,}" for s in steps], title_text=title)
    # Many (Pythia's 154): label decades, none so close to step 0's place that the labels collide.
    powers = [10**k for k in range(int(math.log10(max(positive))) + 1) if 10**k >= 2 * zero_at]
    tickvals = ([zero_at] if 0 in steps else []) + [float(p) for p in powers]
    ticktext = (["0"] if 0 in steps else []) + [f"{p:,}" for p in powers]
    return x, dict(type="log", tickvals=tickvals, ticktext=ticktext, title_text=title)


def plot_training(comparison, base: str | None = None) -> go.Figure:
    """Per-layer attention and MLP gains against training step: one row of two panels per model
    (each size of a sweep over several), or only ``base``'s.

    Checkpoints are ordered by step as numbers (``step500`` before ``step10000``). Colour is
    depth: one model of at most ``MAX_LAYER_LEGEND`` layers gets a legend entry per layer;
    deeper or several models share a colour bar of ``layer / (layers − 1)`` instead.
    """
    candidates = comparison.checkpoint_models
    if not candidates:
        raise FunnelError("no model in this comparison has two or more measured checkpoints: "
                          "run compare with --checkpoints")
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
    positions, axis = _step_axis(all_steps)
    x_of = dict(zip(all_steps, positions))
    legend = len(groups) == 1 and groups[0][3] <= MAX_LAYER_LEGEND
    several = len(groups) > 1
    titles = [f"{base_label(name) + ': ' if several else ''}{kind} gain per layer"
              for name, *_ in groups for kind in ("Attention", "MLP")]
    height, spacing = _rows_layout(len(groups)) if len(groups) > 1 else (460, 0.0)
    figure = make_subplots(rows=len(groups), cols=2, shared_yaxes=True, shared_xaxes=True, horizontal_spacing=0.04,
                           vertical_spacing=spacing, subplot_titles=titles)
    any_bounds = False
    for panel_row, (name, rows, results, n_layers) in enumerate(groups, start=1):
        steps = [row.step for row in rows]
        x = [x_of[step] for step in steps]
        colors = _viridis([layer / max(n_layers - 1, 1) for layer in range(n_layers)])
        for column, component in enumerate(("attn", "mlp"), start=1):
            gains = np.stack([result.gains(component) for result in results])  # [checkpoint, layer]
            bounds = [_intervals(result, component) for result in results]
            # [checkpoint, layer, 2] when every checkpoint carries intervals
            bounds = np.stack(bounds) if all(b is not None for b in bounds) else None
            any_bounds |= bounds is not None
            for layer in range(n_layers):
                low_high = None if bounds is None else bounds[:, layer]  # [checkpoint, 2]
                figure.add_trace(go.Scatter(
                    x=x, y=gains[:, layer], mode="lines" if len(rows) > OVERLAY_LINES else "lines+markers",
                    name=f"L{layer}",
                    customdata=np.column_stack([steps] + ([] if low_high is None else [low_high])),
                    legendgroup=f"L{layer}", showlegend=legend and column == 1,
                    line=dict(color=colors[layer], width=1.6), marker=dict(color=colors[layer], size=5),
                    error_y=None if low_high is None else dict(
                        type="data", symmetric=False, array=low_high[:, 1] - gains[:, layer],
                        arrayminus=gains[:, layer] - low_high[:, 0], color=colors[layer], thickness=1, width=2),
                    hovertemplate=((f"<b>{html.escape(base_label(name))}</b><br>" if several else "")
                                   + f"layer {layer}, step %{{customdata[0]:,}}<br>{COMPONENT_TITLES[component]} "
                                   "%{y:.3f}" + ("" if low_high is None else " [%{customdata[1]:.3f}, %{customdata[2]:.3f}]")
                                   + "<extra></extra>"),
                ), row=panel_row, col=column)
    _neutral_lines(figure, len(groups), 2)
    # Steps under every row of panels, not only the last: a reader of the first size needs them too.
    figure.update_xaxes(showticklabels=True, **{key: value for key, value in axis.items() if key != "title_text"})
    figure.update_xaxes(title_text=axis["title_text"], row=len(groups))
    low, high = _extent(comparison, [row for _, rows, _, _ in groups for row in rows], ("attn", "mlp"))
    figure.update_yaxes(type="log", **_log_ticks(low, high))  # 1, 2, 5 per decade: no crowded minor labels
    for panel_row in range(1, len(groups) + 1):
        figure.update_yaxes(title_text="gain (log)" if several else "gain  (< 1 contracts; log scale)",
                            row=panel_row, col=1)
    if not legend:
        figure.update_layout(coloraxis=dict(colorscale=SEQUENTIAL, cmin=0, cmax=1, colorbar=dict(
            title=dict(text="layer<br>depth", side="top"), tickvals=[0, 0.5, 1], ticktext=["first", "0.5", "last"],
            ticklabelposition="outside bottom", **_bar_size(height))))
        _colorbar_carrier(figure, "coloraxis")
    n_checkpoints = sum(len(rows) for _, rows, _, _ in groups)
    what = (f"{len(groups)} models, {n_checkpoints} checkpoints" if several
            else f"{n_checkpoints} checkpoints")
    title = ("Gains across training checkpoints" + ("" if several else f" of {html.escape(base_label(bases[0]))}"))
    figure.update_layout(
        title=dict(text=f"{title}<br><sup>{_subtitle(comparison)}; {what}, colour = layer (dark early, light late)"
                        + ("; bars: 95% intervals over prompts" if any_bounds else "") + "</sup>"),
        template="plotly_white", height=height, legend=dict(title="layer"), margin=dict(t=110),
    )
    return figure


# ---- the page ----------------------------------------------------------------------------------
def _format_count(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _format_bytes(n: int | None) -> str:
    if not n:
        return "–"
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_seconds(seconds: float | None, space: str = " ") -> str:
    """``0.42 s``, ``13.5 s``, ``2.5 min``; ``–`` when unknown. ``space="&nbsp;"`` keeps a table cell on one line.

    >>> format_seconds(0.4213), format_seconds(150), format_seconds(None)
    ('0.42 s', '2.5 min', '–')
    """
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 10:  # a small model's measurement takes hundredths of a second
        return f"{seconds:.2f}{space}s"
    return f"{seconds:.1f}{space}s" if seconds < 120 else f"{seconds / 60:.1f}{space}min"


def _verdict_cell(value: bool | None) -> str:
    if value is None:
        return '<td class="na">–</td>'
    return f'<td class="{"yes" if value else "no"}">{"yes" if value else "no"}</td>'


# (header, tooltip): short headers keep the table within a laptop screen; the tooltip says it in full.
TABLE_COLUMNS = (
    ("model", "the model or checkpoint (full name in each cell's tooltip); a failed one says why across its row, "
              "one measured by an earlier run into this folder says so below its name"),
    ("funnel seed", "the seed notebook's funnel test (see the note below the table)"),
    ("funnel robust", "the funnel test on 95% intervals over prompts (see the note below the table)"),
    ("shape", "layers × d_model (hidden size)"),
    ("params", "parameters: the checkpoint's own count"),
    ("attn\u00a0<\u00a01", "layers whose attention contracts (gain below 1), of all layers"),
    ("attn min", "smallest attention gain, and its layer"), ("attn max", "largest attention gain, and its layer"),
    ("MLP min", "smallest MLP gain, and its layer"), ("MLP max", "largest MLP gain, and its layer"),
    ("last MLP", "the last layer's MLP gain"),
    ("comb. max", "largest combined (attention × MLP) gain, and its layer"),
    ("measure time", "measuring the prompts alone, after loading and one untimed warm-up prompt, so that the "
                     "first model carries no one-time costs; the load time is in each cell's tooltip"),
    ("peak mem", "peak memory: GPU allocations, or on the CPU the process's peak resident set"),
)


def _gain_at(gain: float, layer: int) -> str:
    return f'<td>{gain:.3f}<span class="sub">L{layer}</span></td>'


def table_html(comparison, rows=None) -> str:
    """The verdict table: one row per model (of ``rows``, default every row), failed ones with their error."""
    head = "".join(f'<th title="{html.escape(tip)}">{html.escape(name)}</th>' for name, tip in TABLE_COLUMNS)
    lines = ['<div class="scroll"><table class="verdicts">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    rows = comparison.rows if rows is None else rows
    names = short_labels(rows)
    for row in rows:
        # A long name may wrap before "@" and after "/", nowhere else (not at its hyphens).
        pieces = re.split(r"(?=@)|(?<=/)", names[row.model])
        shown = "<wbr>".join(f"<span>{html.escape(piece)}</span>" for piece in pieces if piece)
        if row.resumed:
            shown += '<span class="sub" title="its time and memory are that run\'s">earlier run</span>'
        name = f'<td class="name" title="{html.escape(row.model)}">{shown}</td>'
        if not row.ok:
            lines.append(f'<tr class="failed">{name}<td class="no" colspan="{len(TABLE_COLUMNS) - 1}">'
                         f'failed: {html.escape(row.error or "")}</td></tr>')
            continue
        cells = [
            name, _verdict_cell(row.funnel_confirmed), _verdict_cell(row.robust_funnel_confirmed),
            f"<td>{row.n_layers}&thinsp;×&thinsp;{row.hidden_dim}</td>", f"<td>{_format_count(row.n_parameters)}</td>",
            f"<td>{row.attn_contracting}/{row.n_layers}</td>",
            _gain_at(row.attn_min_gain, row.attn_min_layer), _gain_at(row.attn_max_gain, row.attn_max_layer),
            _gain_at(row.mlp_min_gain, row.mlp_min_layer), _gain_at(row.mlp_max_gain, row.mlp_max_layer),
            f"<td>{row.last_layer_mlp_gain:.3f}</td>",
            _gain_at(row.combined_max_gain, row.combined_max_layer),
            f'<td title="load {format_seconds(row.load_seconds)}">{format_seconds(row.measure_seconds, "&nbsp;")}</td>',
            f"<td>{_format_bytes(row.peak_memory_bytes).replace(' ', '&nbsp;')}</td>",
        ]
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table></div>"]
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 4px; } h2 { font-size: 1.15em; margin-top: 28px; }
p.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; white-space: normal; vertical-align: bottom; } th:first-child { text-align: left; }
th[title] { cursor: help; }
td.name { text-align: left; max-width: 16em; overflow: hidden; white-space: normal; } td.name span { white-space: nowrap; }
td .sub { display: block; color: #777; font-size: 0.85em; } /* a gain's layer, below it: narrow columns */
td.yes { color: #1a7f37; font-weight: 600; } td.no { color: #b42318; font-weight: 600; }
td.na { color: #999; } tr.failed td.no { text-align: left; white-space: normal; }
.scroll { display: inline-block; overflow-x: auto; max-width: 100%; border: 1px solid #eee; }  /* hugs the table */
.note { color: #555; font-size: 0.85em; max-width: 70em; }
details.verdicts { margin: 6px 0; } details.verdicts summary { cursor: pointer; padding: 3px 0; }
"""


VERDICT_NOTE = (
    '<p class="note">funnel seed: the notebook\'s test — attention contracts in every layer, '
    "the MLP in all but at most three (a rule that cannot fail with three layers or fewer), and the "
    "last-layer MLP expands. funnel robust: the same test counting a layer only when its "
    "95% interval over prompts lies on one side of 1, with at most one eighth of the MLP layers "
    "(the seed's 3 of 24, rounded down, at least one) allowed to fail to contract (– when the results hold "
    "no intervals). Parameters: the checkpoint's own count. Layers are numbered from 0 (L0 under a "
    "gain: its layer). Measure time: the prompts alone, after loading and one untimed warm-up prompt "
    "(load time in the tooltip, both in compare.json). Peak memory covers loading and measuring; on "
    "the CPU it is the process's peak resident set.</p>")


def _verdict_summary(base: str | None, rows) -> str:
    """One line over a folded table: how many checkpoints, and where the funnel holds."""
    ok = [row for row in rows if row.ok]
    confirmed = [row for row in ok if row.funnel_confirmed]
    parts = [f"{len(rows)} checkpoint{'s' if len(rows) != 1 else ''}"]
    failed = len(rows) - len(ok)
    if failed:
        parts.append(f"{failed} failed")
    parts.append(f"funnel (seed test) at {len(confirmed)} of {len(ok)}"
                 + (f", from step {confirmed[0].step:,}" if confirmed else ""))
    robust = [row for row in ok if row.robust_funnel_confirmed]
    if any(row.robust_funnel_confirmed is not None for row in ok):
        parts.append(f"robust at {len(robust)}")
    name = f"<b>{html.escape(base_label(base))}</b>: " if base is not None else ""
    return f"{name}{', '.join(parts)} (click for the table)"


def page_figures(comparison) -> dict[str, go.Figure]:
    """The figures of compare.html by name, as ``render_html`` draws them (the export hook:
    ``plots.export_figures`` writes them as PNG, SVG and PDF for ``--png``)."""
    figures = {}
    if comparison.ok:
        figures |= {"compare-depth": comparison.figure(), "compare-heatmap-attn": comparison.heatmap("attn"),
                    "compare-heatmap-mlp": comparison.heatmap("mlp")}
    if is_checkpoint_sweep(comparison.rows):
        if comparison.checkpoint_models:
            figures["compare-training"] = comparison.training_figure()
    else:
        for base in comparison.checkpoint_models:
            figures[f"compare-training-{slug(base)}"] = comparison.training_figure(base)
    return figures


def render_html(comparison, plotlyjs: str | bool = True) -> str:
    """The whole sweep on one page.

    A sweep over models: the overlay, the verdict table, the heatmaps, then gains against step for
    any model swept over checkpoints. A sweep over checkpoints (of one model or of several sizes)
    leads with what it is for — gains against training step, one row of panels per size — then the
    overlay (thinned past ``OVERLAY_LINES`` checkpoints), step × depth heatmaps, and each size's
    verdict table folded away under a one-line summary.

    ``plotlyjs``: True embeds plotly.js (a standalone page); a string is the relative path of a
    shared ``plotly.min.js`` (what ``Comparison.save`` writes by default).
    """
    from .plots import figure_div, page_html

    sections = []
    settings = comparison.settings
    checkpoints = is_checkpoint_sweep(comparison.rows)
    groups = model_groups(comparison.rows)
    if checkpoints:
        counted = f"checkpoint{'s' if len(comparison.rows) != 1 else ''}" + (
            f" of {len(groups)} models" if len(groups) > 1 else "")
        heading = "checkpoints" + (f" of {len(groups)} models" if len(groups) > 1 else "")
    else:
        counted = _what(comparison.rows)
        counted = counted[:-1] if len(comparison.rows) == 1 else counted
        heading = _what(comparison.ok)
    meta = (f"{len(comparison.rows)} {counted}, {len(comparison.failed)} failed · {html.escape(_subtitle(comparison))}"
            f" · dtype {html.escape(str(settings.get('dtype', '?')))} on {html.escape(str(settings.get('device', '?')))}"
            f" · prompts sha256 {html.escape(str(settings.get('prompts_sha256', '?'))[:12])}…")
    div = figure_div
    if checkpoints:
        if comparison.checkpoint_models:
            sections += ["<h2>Gains against training step</h2>", div(comparison.training_figure())]
        if comparison.ok:
            sections += ["<h2>By depth</h2>", div(comparison.figure()),
                         div(comparison.heatmap("attn")), div(comparison.heatmap("mlp"))]
        sections.append("<h2>Verdicts</h2>")
        for base, rows in groups:
            sections.append(f'<details class="verdicts"><summary>{_verdict_summary(base, rows)}</summary>\n'
                            f"{table_html(comparison, rows)}\n</details>")
        sections.append(VERDICT_NOTE)
    else:
        if comparison.ok:
            sections.append(div(comparison.figure()))
        sections += ["<h2>Verdicts</h2>", table_html(comparison), VERDICT_NOTE]
        if comparison.ok:
            sections += ["<h2>By depth</h2>", div(comparison.heatmap("attn")), div(comparison.heatmap("mlp"))]
        for base in comparison.checkpoint_models:
            sections.append(f"<h2>Training checkpoints: {html.escape(base)}</h2>")
            sections.append(div(comparison.training_figure(base)))
    body = (f"<h1>Funnel Model across {heading}</h1>\n"
            f"<p class=\"meta\">{meta}</p>\n" + "\n".join(sections))
    return page_html("funnel_tl — comparison", body, plotlyjs, style=_STYLE)


__all__ = ["normalized_depth", "page_figures", "plot_depth_heatmap", "plot_depth_overlay", "plot_training", "render_html",
           "short_labels", "table_html"]
