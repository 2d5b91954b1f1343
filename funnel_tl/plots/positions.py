"""Figures of position-resolved gains (``measure_gains(..., by_position=True)``).

- ``plot_position_heatmap(result, component)``: layer × position gain, on a log colour scale
  diverging at gain 1 (red expands, blue contracts); cells no prompt reaches are left blank;
  hovering a cell shows its gain, bootstrap interval and the number of prompts behind it.
- ``plot_position_heatmaps(result)``: attention, MLP and block stacked on one figure.
- ``plot_head_positions(heads, k)``: the top ``k`` heads' gain by position (``head_gains(...,
  by_position=True)``), on the same colour scale.
- ``plot_sink_comparison(result, k)``: the seed's four panels with every line drawn twice, over
  all positions (solid) and without the first ``k`` (dashed), so the attention sink's effect
  on the verdict shows at a glance. The title says whether the verdict changes.

``write_position_page(result, path)`` writes both figures to one offline HTML page. Every
function returns figures; nothing is shown from here.

>>> from funnel_tl import load_model, measure_gains                                   # doctest: +SKIP
>>> result = measure_gains(load_model(), "seed", by_position=True).with_intervals()    # doctest: +SKIP
>>> write_position_page(result, "runs/demo/positions.html")                         # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from funnel_tl.analysis.funnel import PYTHIA_1_4B_REFERENCE
from funnel_tl.analysis.sink import cached_sink_effect, sink_unavailable
from funnel_tl.errors import FunnelError
from funnel_tl.plots.pages import figure_div, page_html, write_page
from funnel_tl.plots.style import (
    COLORS,
    DIVERGING,
    LOG_SPAN,
    NAMES,
    WIDTH,
    gain_colorbar,
    layer_ticks,
    log_reach,
    log_ticks,
    one_two_five,
    ticks_within,
)
from funnel_tl.prompts.tokens import dropped_phrase
from funnel_tl.results.folders import short_name

# The colour scale spans at least gain 1/2 … 2, so a model whose gains all sit near 1 is not
# painted in saturated colours for differences of a few percent.
MIN_LOG10_SPAN = math.log10(2)
ROW_PX = 30  # per layer of a heatmap, up to the limits below
HEATMAP_ROW = (220, 420)  # the least and most px for one heatmap


# ---- heatmaps ---------------------------------------------------------------------------------
def plot_position_heatmap(result, component: str = "mlp") -> go.Figure:
    """One component's layer × position heatmap (``component``: attn, mlp, block or combined)."""
    return _heatmaps(result, [component])


def _typeset(labels: list[str]) -> list[str]:
    """Bucket labels as a figure shows them: ``16–31`` with an en dash (the data keeps ``16-31``)."""
    return [label.replace("-", "–") for label in labels]


def plot_position_heatmaps(result, components=("attn", "mlp", "block")) -> go.Figure:
    """Several components' heatmaps stacked, each with its own log colour scale, white at gain 1."""
    return _heatmaps(result, list(components))


def _heatmaps(result, components: list[str]) -> go.Figure:
    positions = _positions(result)
    labels = _typeset(positions.labels)
    counts = positions.prompt_counts()  # [bucket]
    row_px = int(np.clip(ROW_PX * result.n_layers, *HEATMAP_ROW))
    gap_px = 110  # room for an x-axis title and the next subplot's title
    height = 130 + len(components) * row_px + (len(components) - 1) * gap_px + 70
    fig = make_subplots(
        rows=len(components),
        cols=1,
        vertical_spacing=gap_px / (height - 200),
        subplot_titles=[f"{NAMES[c]} gain by position" for c in components],
    )
    intervals = positions.intervals
    layout = {}
    for row, component in enumerate(components, start=1):
        values = result.position_gains(component)  # [layer, bucket]
        colour = _log_colour(values)
        # Each component its own scale, symmetric about gain 1: block gains of 100 in layer 0 would
        # otherwise wash out attention gains of 0.5.
        reach = log_reach(colour, MIN_LOG10_SPAN)
        bounds = (
            intervals.gains[component] if intervals is not None else np.full(values.shape + (2,), np.nan)
        )  # [layer, bucket, 2]
        customdata = np.stack(
            [values, bounds[..., 0], bounds[..., 1], np.broadcast_to(counts, values.shape)], axis=-1
        )  # [layer, bucket, 4]
        hover = "L%{y}, position %{x}<br>" + f"{NAMES[component]} gain " + "%{customdata[0]:.4g}"
        if intervals is not None:
            hover += f"<br>{100 * intervals.confidence:g}% interval " + "[%{customdata[1]:.4g}, %{customdata[2]:.4g}]"
        hover += "<br>%{customdata[3]} prompts reach it<extra></extra>"
        axis = "coloraxis" if row == 1 else f"coloraxis{row}"
        fig.add_trace(
            go.Heatmap(
                z=colour,
                x=labels,
                y=np.arange(result.n_layers),
                customdata=customdata,
                coloraxis=axis,
                hovertemplate=hover,
                hoverongaps=False,
                xgap=1,
                ygap=1,
                name=NAMES[component],
            ),
            row=row,
            col=1,
        )
        fig.update_xaxes(title_text="position (0 = first token; buckets past 15)", type="category", row=row, col=1)
        fig.update_yaxes(
            title_text="layer",
            autorange="reversed",
            row=row,
            col=1,
            **{k: v for k, v in layer_ticks(result.n_layers).items() if k != "range"},
        )
        low, high = fig.layout[f"yaxis{'' if row == 1 else row}"].domain
        layout[axis] = dict(
            colorscale=DIVERGING,
            cmid=0,
            cmin=-reach,
            cmax=reach,
            colorbar=gain_colorbar(
                _gain_ticks(reach),
                title=dict(text="gain", side="top"),
                len=high - low,
                y=high,
                yanchor="top",
                thickness=16,
            ),
        )
    fig.update_layout(
        template="plotly_white",
        height=height,
        **layout,
        title=dict(
            text=f"<b>{html.escape(short_name(result.model))}</b>: gain by layer and "
            f"position<br><sup>{_subtitle(result)}"
            " · log colour scale: red expands, blue contracts, white is gain 1; blank: no prompt "
            "reaches the position</sup>",
            x=0.5,
            xanchor="center",
            font=dict(size=20),
        ),
        margin=dict(t=110, l=70, r=30, b=70),
        font=dict(size=15),
    )
    return fig


def plot_head_positions(heads, k: int = 20) -> go.Figure:
    """Head × position heatmap of the ``k`` heads with the largest gain (``heads.HeadResult`` measured
    with ``by_position=True``): the same log colour scale, white at gain 1, as the layers' heatmaps."""
    if getattr(heads, "positions", None) is None:
        raise FunnelError(
            f"{heads.model}: no position-resolved head sums: measure with by_position=True "
            "(funnel-tl heads --by-position)"
        )
    top = heads.top(k)
    gains = heads.head_position_gains()  # [layer, head, bucket]
    values = np.stack([gains[heads.layer_index(row.layer), row.head] for row in top])  # [top head, bucket]
    counts = heads.positions.prompt_counts()  # [bucket]
    colour = _log_colour(values)
    reach = log_reach(colour, MIN_LOG10_SPAN)
    labels = [row.label for row in top]
    customdata = np.stack([values, np.broadcast_to(counts, values.shape)], axis=-1)  # [top head, bucket, 2]
    fig = go.Figure(
        go.Heatmap(
            z=colour,
            x=_typeset(heads.positions.labels),
            y=labels,
            customdata=customdata,
            hoverongaps=False,
            xgap=1,
            ygap=1,
            colorscale=DIVERGING,
            zmid=0,
            zmin=-reach,
            zmax=reach,
            colorbar=gain_colorbar(_gain_ticks(reach), title=dict(text="gain", side="top"), thickness=16),
            hovertemplate="%{y}, position %{x}<br>head gain %{customdata[0]:.4g}<br>%{customdata[1]} prompts reach it"
            "<extra></extra>",
        )
    )
    fig.update_layout(
        template="plotly_white",
        height=int(np.clip(28 * len(top), 260, 900)) + 160,
        title=dict(
            text=f"<b>{heads.model}</b>: the top {len(top)} heads' gain by position<br><sup>definition="
            f"{heads.definition} · {heads.n_prompts} prompts · log colour scale, white at gain 1; "
            "blank: no prompt reaches the position</sup>",
            x=0.5,
            xanchor="center",
        ),
        xaxis=dict(title="position (0 = first token; buckets past 15)", type="category"),
        yaxis=dict(title="head (ranked by gain)", autorange="reversed", type="category"),
        margin=dict(t=100, l=80, r=30, b=60),
        font=dict(size=15),
    )
    return fig


def _log_colour(values: np.ndarray) -> np.ndarray:
    """log10 of the gains, NaN (a blank cell) where no prompt reaches the cell."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log10(values), np.nan)


def _gain_ticks(reach: float) -> list[float]:
    """1-2-5 gains within ``10**±reach``, powers of ten only past one decade each side (1 always)."""
    steps = (1, 2, 5) if reach <= 1.2 else (1,)
    # A tick up to 0.1% past either end of the scale is still listed.
    return ticks_within(reach, one_two_five(-math.ceil(reach) - 1, math.ceil(reach), steps), slack=math.log10(1.001))


# ---- the four panels, all positions vs without the first k -------------------------------------
def plot_sink_comparison(result, k: int | None = None, log_gains: bool | None = None) -> go.Figure:
    """The seed's four panels, all positions (solid) against without the first ``k`` (dashed).

    ``k`` defaults to ``result.positions.sink_positions`` (1: position 0). The second result is
    ``result.without_first(k)``, derived from the position sums; when ``result`` carries
    intervals, it gets its own, drawn with the same resamples, as error bars on panel 1 (both
    from ``positions.sink_effect``: the verdicts in the title were drawn from the same).
    """
    positions = _positions(result)
    k = positions.sink_positions if k is None else k
    effect = cached_sink_effect(result, k)
    without = effect.without
    first = "position 0" if k == 1 else f"positions 0–{k - 1}"
    versions = (("all positions", result, "solid"), (f"without {first}", without, "dash"))
    fig = make_subplots(
        rows=2,
        cols=2,
        horizontal_spacing=0.08,
        vertical_spacing=0.2,
        subplot_titles=(
            "Attention vs MLP gain per layer",
            "MLP gain on normalized depth vs Pythia-1.4B",
            "Net effect per layer: attn × MLP",
            "The stream's growth: ‖resid_post_L‖ / ‖resid_pre_0‖",
        ),
    )
    layers = np.arange(result.n_layers)
    depth = np.linspace(0, 1, result.n_layers)
    panel_log, extent = {}, {}
    for panel, components in ((1, ("attn", "mlp")), (2, ("mlp",)), (3, ("combined",))):
        values = np.concatenate([_values(r, c) for _, r, _ in versions for c in components] + [np.ones(1)])
        extra = [PYTHIA_1_4B_REFERENCE["mlp_max_gain"]] if panel == 2 else []
        values = np.concatenate([values, extra])
        extent[panel] = (float(values.min()), float(values.max()))
        panel_log[panel] = (values.max() / values.min() > LOG_SPAN) if log_gains is None else bool(log_gains)
    for label, version, dash in versions:
        for component in ("attn", "mlp"):
            intervals = version.intervals.of(component) if version.intervals is not None else None
            fig.add_trace(
                _line(
                    layers,
                    _values(version, component),
                    f"{NAMES[component]} gain, {label}",
                    COLORS[component],
                    dash,
                    intervals,
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            _line(
                depth, _values(version, "mlp"), f"MLP gain on depth, {label}", COLORS["mlp"], dash, None, layers=layers
            ),
            row=1,
            col=2,
        )
        gains = _values(version, "combined")
        bar = dict(base=1, y=gains - 1) if panel_log[3] else dict(y=gains)
        fig.add_trace(
            go.Bar(
                x=layers,
                **bar,
                name=f"attn × MLP, {label}",
                offsetgroup=label,
                marker=dict(
                    color=np.where(gains >= 1, COLORS["expanding"], COLORS["contracting"]).tolist(),
                    opacity=0.8 if dash == "solid" else 0.45,
                    line=dict(color="black", width=0.5),
                    pattern=dict(shape="" if dash == "solid" else "/", fgcolor="white", size=6),
                ),
                customdata=np.column_stack([layers, gains]),
                hovertemplate=f"L%{{customdata[0]}}<br>attn × MLP gain %{{customdata[1]:.4g}} ({label})<extra></extra>",
            ),
            row=2,
            col=1,
        )
        # The stream's real growth (the seed's product of sublayer gains is no norm ratio of any activation).
        fig.add_trace(
            _line(layers, version.block_cumulative_gains, f"stream growth, {label}", COLORS["attn"], dash, None),
            row=2,
            col=2,
        )
    for row, col in ((1, 1), (1, 2), (2, 1), (2, 2)):
        fig.add_hline(y=1, line=dict(color=COLORS["neutral"], dash="dot", width=1.2), row=row, col=col)
    fig.add_hline(
        y=PYTHIA_1_4B_REFERENCE["mlp_max_gain"],
        line=dict(color=COLORS["reference"], dash="dot", width=1.5),
        row=1,
        col=2,
        annotation=dict(text="Pythia-1.4B max MLP", font=dict(color=COLORS["reference"])),
        annotation_position="bottom right",
    )
    for (row, col), panel in (((1, 1), 1), ((1, 2), 2), ((2, 1), 3)):
        title = "gain" + (" (log)" if panel_log[panel] else "")
        axis = (
            dict(type="log", exponentformat="power", **log_ticks(*extent[panel]))
            if panel_log[panel]
            else dict(rangemode="tozero")
        )
        fig.update_yaxes(title_text=title, row=row, col=col, **axis)
    cumulative = np.concatenate([v.block_cumulative_gains for _, v, _ in versions] + [np.ones(1)])
    fig.update_yaxes(
        title_text="stream norm / input norm",
        type="log",
        exponentformat="power",
        row=2,
        col=2,
        **log_ticks(cumulative.min(), cumulative.max()),
    )
    for row, col in ((1, 1), (2, 1), (2, 2)):
        fig.update_xaxes(title_text="layer", row=row, col=col, **layer_ticks(result.n_layers))
    fig.update_xaxes(title_text="normalized layer position (0 = first, 1 = last)", range=[-0.03, 1.05], row=1, col=2)
    yes = {True: "confirmed", False: "not confirmed"}
    verdict = (
        f"funnel {yes[effect.all_positions.funnel_confirmed]} on all positions, "
        f"{yes[effect.without_first.funnel_confirmed]} without {first}: "
        + ("<b>the verdict depends on it</b>" if effect.verdict_changes else "the verdict does not depend on it")
    )
    fig.update_layout(
        template="plotly_white",
        height=1000,
        barmode="group",
        hovermode="closest",
        title=dict(
            text=f"<b>{html.escape(short_name(result.model))}</b>: all positions (solid) vs without {first} (dashed, "
            "hatched)<br>"
            f"<sup>{verdict} · {_subtitle(result)}</sup>",
            x=0.5,
            xanchor="center",
            font=dict(size=20),
        ),
        legend=dict(orientation="h", x=0, y=-0.08, xanchor="left", yanchor="top", font=dict(size=13)),
        margin=dict(t=110, l=70, r=30, b=150),
        font=dict(size=15),
    )
    return fig


def _values(result, component: str) -> np.ndarray:
    if component == "combined":
        return result.combined_gains
    return result.gains(component)


def _line(x, y, name, color, dash, intervals, layers=None) -> go.Scatter:
    errors = {}
    if intervals is not None:
        errors = {
            "error_y": dict(
                type="data",
                symmetric=False,
                array=intervals[:, 1] - y,
                arrayminus=y - intervals[:, 0],
                color=color,
                thickness=1,
                width=2,
            )
        }
    layers = np.arange(len(y)) if layers is None else layers
    return go.Scatter(
        x=x,
        y=y,
        mode="lines+markers",
        name=name,
        line=dict(color=color, width=2, dash=dash),
        marker=dict(size=6, color=color, symbol="circle" if dash == "solid" else "circle-open"),
        customdata=np.column_stack([layers, y]),
        hovertemplate=f"L%{{customdata[0]}}<br>{name} %{{customdata[1]:.4g}}<extra></extra>",
        **errors,
    )


# ---- output -------------------------------------------------------------------------------------
def position_figures(result) -> dict[str, go.Figure]:
    """The figures of positions.html by name, in page order (``plots.export_figures`` writes them
    as images): the heatmaps, and the panels with and without the first positions (unless those
    are already dropped, or no prompt reaches past them)."""
    figures = {"positions-heatmaps": plot_position_heatmaps(result)}
    if sink_unavailable(result) is None:  # dropped already, or no prompt reaches past them
        figures["positions-sink"] = plot_sink_comparison(result)
    return figures


def write_position_page(
    result, path: str | os.PathLike, self_contained: bool = False, root: str | os.PathLike | None = None
) -> Path:
    """positions.html: the heatmaps, then the four panels with and without the first positions.

    plotly.js as ``plots.write_html`` gives it: a ``plotly.min.js`` shared by the pages of the
    output folder (or of ``root``), or embedded with ``self_contained=True``; offline either way.
    """
    figures = position_figures(result).values()
    divs = "\n".join(figure_div(figure, div_id=f"funnel-tl-positions-{index}") for index, figure in enumerate(figures))
    # The page is taller than a window: reserve the scrollbar from the start, or the responsive
    # figures are sized before it appears and overflow sideways.
    return write_page(
        path,
        lambda plotlyjs: page_html(
            f"{short_name(result.model)}: gains by position",
            divs,
            plotlyjs,
            style="html { overflow-y: scroll; }",
            body_style=f"max-width:{WIDTH}px;margin:auto",
        ),
        self_contained,
        root,
    )


def _positions(result):
    if getattr(result, "positions", None) is None:
        raise FunnelError(
            f"{result.model}: no position-resolved sums: measure with by_position=True (funnel-tl run --by-position)"
        )
    return result.positions


def _subtitle(result) -> str:
    dropped = f" · {dropped_phrase(result.drop_first)}" if result.drop_first else ""
    return f"definition={result.definition} · {result.n_prompts} prompts{dropped}"
