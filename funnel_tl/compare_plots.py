"""Figures and the HTML page of a sweep (``Comparison``): gains on normalized depth overlaid,
a models × depth heatmap, gains against training step, and the verdict table.

Every figure is returned as a ``go.Figure``; ``render_html`` puts them on one page that opens
with no network (plotly.js embedded, or loaded from a ``plotly.min.js`` beside it).

Model lines use Okabe and Ito's colour-blind-safe palette (up to eight unordered models); an
ordered sweep (checkpoints, many sizes) and the layers of a training figure use Viridis, which
stays ordered in grey and for red-green colour-blind readers. Log axes carry 1-2-5 ticks per decade.
"""

from __future__ import annotations

import html
import math
import os
import re

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


def _model_colors(rows) -> list[str]:
    """Sequential colours for an ordered sweep (checkpoints, many sizes); distinct ones otherwise."""
    if not rows:
        return []
    palette = OKABE_ITO
    if len(rows) <= len(palette) and not any(row.step is not None for row in rows):
        return list(palette[: len(rows)])
    # Stop at 0.9 of Viridis: its last yellows vanish on a white background.
    positions = [0.9 * i / max(len(rows) - 1, 1) for i in range(len(rows))]
    return plotly.colors.sample_colorscale("Viridis", positions)


def _subtitle(comparison) -> str:
    settings = comparison.settings
    parts = [f"definition={settings.get('definition', '?')}", f"{settings.get('n_prompts', '?')} prompts"]
    if settings.get("drop_first"):
        parts.append(dropped_phrase(settings["drop_first"]))
    return ", ".join(parts)


def plot_depth_overlay(comparison, components=("attn", "mlp", "block")) -> go.Figure:
    """One panel per component, every model's per-layer gains on normalized depth, log scale."""
    rows = comparison.ok
    if not rows:
        raise FunnelError("no model in this comparison was measured successfully: nothing to plot")
    names = short_labels(rows)
    figure = make_subplots(rows=1, cols=len(components), shared_yaxes=True, horizontal_spacing=0.03,
                           subplot_titles=[PANEL_TITLES[c] for c in components])
    for row, color in zip(rows, _model_colors(rows)):
        result = comparison.results[row.model]
        depth = normalized_depth(result.n_layers)
        layers = np.arange(result.n_layers)
        for column, component in enumerate(components, start=1):
            gains = result.gains(component)  # [layer]
            bounds = _intervals(result, component)  # [layer, 2] or None
            figure.add_trace(go.Scatter(
                x=depth, y=gains, mode="lines+markers",
                customdata=layers if bounds is None else np.column_stack([layers, bounds]),
                name=names[row.model], legendgroup=row.model, showlegend=column == 1,
                line=dict(color=color, width=1.8), marker=dict(color=color, size=5),
                error_y=None if bounds is None else dict(
                    type="data", symmetric=False, array=bounds[:, 1] - gains, arrayminus=gains - bounds[:, 0],
                    color=color, thickness=1, width=0),
                hovertemplate=(f"<b>{html.escape(row.model)}</b><br>layer %{{customdata{'' if bounds is None else '[0]'}}}"
                               f" (depth %{{x:.2f}})<br>{COMPONENT_TITLES[component]} %{{y:.3f}}"
                               + ("" if bounds is None else " [%{customdata[1]:.3f}, %{customdata[2]:.3f}]")
                               + "<extra></extra>"),
            ), row=1, col=column)
            figure.add_hline(y=1, line=NEUTRAL_LINE, row=1, col=column)
    low, high = _extent(comparison, rows, components)
    figure.update_yaxes(type="log", showgrid=True, **_log_ticks(low, high))
    figure.update_yaxes(title_text="gain  (< 1 contracts, > 1 expands; log scale)", row=1, col=1)
    figure.update_xaxes(title_text="normalized depth", range=[-0.04, 1.04], zeroline=False)
    figure.update_layout(
        title=dict(text=f"Gains across {'training checkpoints' if _what(rows) == 'checkpoints' else 'models'}"
                        f"<br><sup>{_subtitle(comparison)}; "
                        "depth = layer / (layers − 1); bars: 95% intervals over prompts, where drawn</sup>"),
        template="plotly_white", height=460, legend=dict(title="checkpoint" if _what(rows) == "checkpoints" else "model"),
        hovermode="closest",
        margin=dict(t=90),
    )
    return figure


def _what(rows) -> str:
    """What a sweep's rows are: "checkpoints" when they are all training steps of one model."""
    return "checkpoints" if rows and all(row.step is not None for row in rows) and len({row.base for row in rows}) == 1 \
        else "models"


def _extent(comparison, rows, components) -> tuple[float, float]:
    """Smallest and largest gain (interval ends included, and 1) the given panels draw."""
    lows, highs = zip(*(_result_extent(comparison.results[row.model], components) for row in rows))
    return min(lows), max(highs)


def plot_depth_heatmap(comparison, component: str = "mlp") -> go.Figure:
    """Models (rows, in sweep order) × depth (columns) coloured by log gain, centred on 1.

    Models of different depths share the columns of the deepest one: a cell shows the gain of the
    layer that covers that fraction of the network (nearest layer; nothing is interpolated).
    """
    if component not in COMPONENT_TITLES:
        raise FunnelError(f"unknown component {component!r}: choose {', '.join(COMPONENT_TITLES)}")
    rows = comparison.ok
    if not rows:
        raise FunnelError("no model in this comparison was measured successfully: nothing to plot")
    results = [comparison.results[row.model] for row in rows]
    n_columns = max(result.n_layers for result in results)
    centers = (np.arange(n_columns) + 0.5) / n_columns  # fraction of the network at each column
    log_gains, hover = [], []
    for result in results:
        gains = result.combined_gains if component == "combined" else result.gains(component)  # [layer]
        layer = np.minimum(np.floor(centers * result.n_layers).astype(int), result.n_layers - 1)  # [column]
        log_gains.append(np.log10(gains[layer]))
        hover.append(np.stack([layer, gains[layer]], axis=-1))  # [column, 2]
    z = np.asarray(log_gains)  # [model, column]
    reach = log_reach(z, 0.1)
    # Decades only once the scale spans more than one each way: 1-3 steps would crowd the colorbar.
    candidates = (0.001, 0.01, 0.1, 1, 10, 100, 1000) if reach > 1 else (0.1, 0.3, 1, 3, 10)
    ticks = ticks_within(reach, candidates)
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
        title=dict(text=f"{PANEL_TITLES[component]} by {'checkpoint' if _what(rows) == 'checkpoints' else 'model'} and depth<br>"
                        f"<sup>{_subtitle(comparison)}; blue contracts, red expands</sup>"),
        template="plotly_white", height=max(320, 160 + 32 * len(rows)), margin=dict(t=90),
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
    """Per-layer attention and MLP gains of one model's checkpoints against training step.

    Checkpoints are ordered by step as numbers (``step500`` before ``step10000``).
    """
    candidates = comparison.checkpoint_models
    if not candidates:
        raise FunnelError("no model in this comparison has two or more measured checkpoints: "
                          "run compare with --checkpoints")
    base = base if base is not None else candidates[0]
    if base not in candidates:
        raise FunnelError(f"{base} has fewer than two measured checkpoints here: choose one of {', '.join(candidates)}")
    rows = sorted((row for row in comparison.ok if row.base == base and row.step is not None), key=lambda r: r.step)
    results = [comparison.results[row.model] for row in rows]
    n_layers = {result.n_layers for result in results}
    if len(n_layers) != 1:
        raise FunnelError(f"the checkpoints of {base} have different layer counts {sorted(n_layers)}")
    n_layers = n_layers.pop()
    steps = [row.step for row in rows]
    x, axis = _step_axis(steps)
    colors = plotly.colors.sample_colorscale("Viridis", [0.9 * l / max(n_layers - 1, 1) for l in range(n_layers)])
    figure = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                           subplot_titles=["Attention gain per layer", "MLP gain per layer"])
    for column, component in enumerate(("attn", "mlp"), start=1):
        gains = np.stack([result.gains(component) for result in results])  # [checkpoint, layer]
        bounds = [_intervals(result, component) for result in results]
        # [checkpoint, layer, 2] when every checkpoint carries intervals
        bounds = np.stack(bounds) if all(b is not None for b in bounds) else None
        for layer in range(n_layers):
            low_high = None if bounds is None else bounds[:, layer]  # [checkpoint, 2]
            figure.add_trace(go.Scatter(
                x=x, y=gains[:, layer], mode="lines+markers", name=f"L{layer}",
                customdata=np.column_stack([steps] + ([] if low_high is None else [low_high])),
                legendgroup=f"L{layer}", showlegend=column == 1,
                line=dict(color=colors[layer], width=1.6), marker=dict(color=colors[layer], size=5),
                error_y=None if low_high is None else dict(
                    type="data", symmetric=False, array=low_high[:, 1] - gains[:, layer],
                    arrayminus=gains[:, layer] - low_high[:, 0], color=colors[layer], thickness=1, width=2),
                hovertemplate=(f"layer {layer}, step %{{customdata[0]:,}}<br>{COMPONENT_TITLES[component]} "
                               "%{y:.3f}" + ("" if low_high is None else " [%{customdata[1]:.3f}, %{customdata[2]:.3f}]")
                               + "<extra></extra>"),
            ), row=1, col=column)
        figure.add_hline(y=1, line=NEUTRAL_LINE, row=1, col=column)
    figure.update_xaxes(**axis)
    low, high = _extent(comparison, rows, ("attn", "mlp"))
    figure.update_yaxes(type="log", **_log_ticks(low, high))  # 1, 2, 5 per decade: no crowded minor labels
    figure.update_yaxes(title_text="gain  (< 1 contracts; log scale)", row=1, col=1)
    figure.update_layout(
        title=dict(text=f"Gains across training checkpoints of {html.escape(base)}<br><sup>{_subtitle(comparison)}; "
                        f"{len(rows)} checkpoints, colour = layer (dark early, light late)"
                        + ("; bars: 95% intervals over prompts" if bounds is not None else "") + "</sup>"),
        template="plotly_white", height=460, legend=dict(title="layer"), margin=dict(t=90),
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


def table_html(comparison) -> str:
    """The verdict table: one row per model, failed ones with their error."""
    head = "".join(f'<th title="{html.escape(tip)}">{html.escape(name)}</th>' for name, tip in TABLE_COLUMNS)
    lines = ['<div class="scroll"><table class="verdicts">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    names = short_labels(comparison.rows)
    for row in comparison.rows:
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
"""


def page_figures(comparison) -> dict[str, go.Figure]:
    """The figures of compare.html by name (the export hook: ``plots.export_figures`` writes them
    as PNG, SVG and PDF for ``--png``)."""
    figures = {}
    if comparison.ok:
        figures |= {"compare-depth": comparison.figure(), "compare-heatmap-attn": comparison.heatmap("attn"),
                    "compare-heatmap-mlp": comparison.heatmap("mlp")}
    for base in comparison.checkpoint_models:
        figures[f"compare-training-{slug(base)}"] = comparison.training_figure(base)
    return figures


def render_html(comparison, plotlyjs: str | bool = True) -> str:
    """The whole sweep on one page: overlay, verdict table, heatmaps, training.

    ``plotlyjs``: True embeds plotly.js (a standalone page); a string is the relative path of a
    shared ``plotly.min.js`` (what ``Comparison.save`` writes by default).
    """
    from .plots import figure_div, page_html

    sections = []
    settings = comparison.settings
    counted = _what(comparison.rows)  # a checkpoint sweep counts checkpoints, not models
    counted = counted[:-1] if len(comparison.rows) == 1 else counted
    meta = (f"{len(comparison.rows)} {counted}, {len(comparison.failed)} failed · {html.escape(_subtitle(comparison))}"
            f" · dtype {html.escape(str(settings.get('dtype', '?')))} on {html.escape(str(settings.get('device', '?')))}"
            f" · prompts sha256 {html.escape(str(settings.get('prompts_sha256', '?'))[:12])}…")
    def div(figure: go.Figure) -> str:
        return figure_div(figure)

    if comparison.ok:
        sections.append(div(comparison.figure()))
    sections.append("<h2>Verdicts</h2>")
    sections.append(table_html(comparison))
    sections.append('<p class="note">funnel seed: the notebook\'s test — attention contracts in every layer, '
                    "the MLP in all but at most three (a rule that cannot fail with three layers or fewer), and the "
                    "last-layer MLP expands. funnel robust: the same test counting a layer only when its "
                    "95% interval over prompts lies on one side of 1, with at most one eighth of the MLP layers "
                    "(the seed's 3 of 24, rounded down, at least one) allowed to fail to contract (– when the results hold "
                    "no intervals). Parameters: the checkpoint's own count. Layers are numbered from 0 (L0 under a "
                    "gain: its layer). Measure time: the prompts alone, after loading and one untimed warm-up prompt "
                    "(load time in the tooltip, both in compare.json). Peak memory covers loading and measuring; on "
                    "the CPU it is the process's peak resident set.</p>")
    if comparison.ok:
        sections.append("<h2>By depth</h2>")
        sections.append(div(comparison.heatmap("attn")))
        sections.append(div(comparison.heatmap("mlp")))
    for base in comparison.checkpoint_models:
        sections.append(f"<h2>Training checkpoints: {html.escape(base)}</h2>")
        sections.append(div(comparison.training_figure(base)))
    body = (f"<h1>Funnel Model across {_what(comparison.ok)}</h1>\n"
            f"<p class=\"meta\">{meta}</p>\n" + "\n".join(sections))
    return page_html("funnel_tl — comparison", body, plotlyjs, style=_STYLE)


__all__ = ["normalized_depth", "page_figures", "plot_depth_heatmap", "plot_depth_overlay", "plot_training", "render_html",
           "short_labels", "table_html"]
