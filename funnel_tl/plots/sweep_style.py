"""What the sweep's figures share: depth, labels and colours per model, checkpoint groups, heatmap scales."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from funnel_tl.plots.style import OKABE_ITO, log_reach, ticks_within
from funnel_tl.plots.style import gain_extent as result_extent
from funnel_tl.prompts.tokens import dropped_phrase

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


def model_colors(rows, ordered: bool | None = None) -> list[str]:
    """Sequential colours for an ordered sweep (checkpoints, many sizes); distinct ones otherwise.
    ``ordered``: whether the rows are a sequence (default: when any is a training step)."""
    if not rows:
        return []
    palette = OKABE_ITO
    ordered = any(row.step is not None for row in rows) if ordered is None else ordered
    if len(rows) <= len(palette) and not ordered:
        return list(palette[: len(rows)])
    return viridis([i / max(len(rows) - 1, 1) for i in range(len(rows))])


def viridis(fractions) -> list[str]:
    """Viridis at ``fractions`` of ``[0, 1]``, stopping at 0.9: its last yellows vanish on white."""
    return plotly.colors.sample_colorscale("Viridis", [0.9 * float(f) for f in fractions])


# Viridis up to 0.9, as a colour scale for a colour bar (a step or a depth mapped to 0 … 1).
SEQUENTIAL = [
    [i / 9, color]
    for i, color in enumerate(plotly.colors.sample_colorscale("Viridis", [0.9 * i / 9 for i in range(10)]))
]


def subtitle(comparison) -> str:
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


def base_label(base: str | None) -> str:
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


def step_scale(steps) -> tuple[Callable[[int], float], dict]:
    """Where each step sits along the step axis, as a fraction 0 … 1 (the colour of a checkpoint's
    line), and a colour bar labelled in steps at the step axis' own ticks."""
    steps = sorted(set(int(s) for s in steps))
    x, axis = step_axis(steps)
    log = axis["type"] == "log"
    scale = (lambda v: math.log10(v)) if log else (lambda v: float(v))
    low, high = scale(min(x)), scale(max(x))
    span = (high - low) or 1.0
    position = dict(zip(steps, x, strict=True))

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
    bar = dict(title=dict(text="training<br>step", side="top"), tickvals=ticks, ticktext=labels, **bar_size(460))
    return fraction, bar


def bar_size(height: int) -> dict:
    """A colour bar's size: most of a one-row figure, at most 320 pixels, at the top, of a taller one."""
    if height <= 600:
        return dict(len=0.8, thickness=14)
    return dict(lenmode="pixels", len=320, y=1.0, yanchor="top", thickness=14)


def colorbar_carrier(figure: go.Figure, coloraxis: str, row: int = 1, col: int = 1) -> None:
    """An invisible trace on ``coloraxis``, so its colour bar shows whatever traces are hidden."""
    figure.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            showlegend=False,
            hoverinfo="skip",
            marker=dict(color=[0.0], coloraxis=coloraxis),
        ),
        row=row,
        col=col,
    )


def neutral_lines(figure: go.Figure, n_rows: int, n_cols: int) -> None:
    """The y = 1 line (no gain), once per panel."""
    for row in range(1, n_rows + 1):
        for col in range(1, n_cols + 1):
            figure.add_hline(y=1, line=NEUTRAL_LINE, row=row, col=col)


def show_all_button(figure: go.Figure, hidden: list[int], n_rows: int, what: str = "checkpoint") -> None:
    """A toggle that shows (and hides again) the checkpoints (or models) an overlay leaves out."""
    figure.update_layout(
        updatemenus=[
            dict(
                type="buttons",
                direction="left",
                x=1.0,
                xanchor="right",
                y=1.0,
                yanchor="bottom",
                pad=dict(b=26),
                showactive=True,
                font=dict(size=11),
                buttons=[
                    dict(
                        label=f"show every {what} ({n_rows})",
                        method="restyle",
                        args=[{"visible": True}, hidden],
                        args2=[{"visible": False}, hidden],
                    )
                ],
            )
        ]
    )


# A figure of one row of panels per model: each this tall, this far apart (pixels).
ROW_PANEL_PX, ROW_GAP_PX = 210, 70


def rows_layout(n_rows: int, top: int = 110, bottom: int = 70) -> tuple[int, float]:
    """Height and ``make_subplots``' vertical spacing (a fraction of the plotting area) of a
    figure with ``n_rows`` rows of ``ROW_PANEL_PX`` panels ``ROW_GAP_PX`` apart."""
    area = n_rows * ROW_PANEL_PX + (n_rows - 1) * ROW_GAP_PX
    return top + bottom + area, (ROW_GAP_PX / area if n_rows > 1 else 0.0)


def what_is_compared(rows) -> str:
    """What a sweep's rows are: "checkpoints" when they are all training steps of one model."""
    return (
        "checkpoints"
        if rows and all(row.step is not None for row in rows) and len({row.base for row in rows}) == 1
        else "models"
    )


def sweep_extent(comparison, rows, components) -> tuple[float, float]:
    """Smallest and largest gain (interval ends included, and 1) the given panels draw."""
    lows, highs = zip(*(result_extent(comparison.results[row.model], components) for row in rows), strict=True)
    return min(lows), max(highs)


def heatmap_scale(z) -> tuple[float, list[float]]:
    """How far the colour scale of log10 gains ``z`` reaches, and its ticks (in gains)."""
    reach = log_reach(z, 0.1)
    # Decades only once the scale spans more than one each way: 1-3 steps would crowd the colorbar.
    candidates = (0.001, 0.01, 0.1, 1, 10, 100, 1000) if reach > 1 else (0.1, 0.3, 1, 3, 10)
    return reach, ticks_within(reach, candidates)


def component_gains(result, component: str) -> np.ndarray:
    return result.combined_gains if component == "combined" else result.gains(component)


def step_axis(steps: list[int]) -> tuple[list[float], dict]:
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
