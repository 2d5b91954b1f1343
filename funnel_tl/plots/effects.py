"""Effects beside gains as a Plotly figure, and effects.html.

``plot_effects(result)``: two columns (attention, MLP) and two rows sharing the layer axis —

1. Δloss per layer when the sublayer's contribution is changed, one trace per intervention, with
   intervals over prompts as error bars. Where the values span more than ``plots.LOG_SPAN``-fold
   the axis is logarithmic and a negative Δloss (the change *lowers* the loss) is drawn at its
   magnitude with an open marker, so that a sign is never lost; the hover always shows the signed
   value.
2. The gain of the same sublayer on the same prompts (``result.gains``), as in funnel.html's first
   panel, neutral line at 1.

Hovering a Δloss point shows every number of that sublayer and intervention: Δloss, KL, gain, each
with its interval. ``write_effects_page`` writes the figure with the printed reading's answers above
it, offline as funnel.html is (``plots.write_page``).

>>> fig = plot_effects(result)                          # doctest: +SKIP
>>> write_effects_page(result, "runs/demo/effects.html")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from funnel_tl.analysis.effects import gain_versus_effect, reading_intervention, summary_lines
from funnel_tl.components import EFFECT_COMPONENTS, GAIN_COMPONENT
from funnel_tl.plots.pages import figure_div, page_html, write_page
from funnel_tl.plots.style import (
    COLORS,
    LOG_SPAN,
    MARGIN,
    gain_axis,
    gain_extent,
    gain_trace,
    layer_ticks,
    log_axis,
    log_ticks,
    neutral_line,
)
from funnel_tl.results.effects import EffectResult
from funnel_tl.results.folders import short_name

# Okabe & Ito: an intervention's colour on every panel (attention and MLP are told apart by column).
INTERVENTION_COLORS = ("#000000", "#009E73", "#56B4E9", "#E69F00", "#CC79A7", "#0072B2", "#D55E00", "#F0E442")
SYMBOLS = ("circle", "diamond", "triangle-down", "triangle-up", "square", "cross", "x", "star")
WIDTH, HEIGHT = 1400, 900
DODGE = 0.14  # layers between neighbouring interventions' points
TITLES = {"attention": "attention", "mlp": "MLP"}


def plot_effects(result: EffectResult, log: bool | None = None) -> go.Figure:
    """Δloss per layer of every intervention (row 1) above the gains (row 2), attention left, MLP right.

    Row 1 draws ``result.effect("delta_loss", intervention, component)`` (``[layer]``, nats: the
    mean over prompts of the ``[prompt, layer]`` per-prompt values), one trace per intervention,
    side by side within each layer; the intervention the reading ranks by (``zero`` when
    measured) is shown, the others one legend click away. Row 2 draws ``result.gains``' attention
    and MLP gains (``[layer]``) on the same prompts and layers. Points whose interval includes 0
    are faded; the hover gives Δloss, KL and gain, each with its interval.

    Args:
        result: The effects to draw, from ``measure_effects``, with their intervals over prompts
            (``[layer, 2]`` per measure, intervention and component) as error bars when
            ``result.with_intervals()`` drew them.
        log: ``True`` forces a logarithmic Δloss axis, ``False`` a linear one; ``None`` decides
            per panel: logarithmic when the nonzero |Δloss| span more than ``LOG_SPAN``-fold
            (30). On a log axis a negative Δloss (the change lowers the loss) is drawn at its
            magnitude with an open marker. The gain row decides its own axis.

    Returns:
        A 2 × 2 ``go.Figure``, 900 pixels high; nothing is shown (``write_effects_page`` writes it
            with the reading's answers as effects.html).
    """
    fig = make_subplots(
        rows=2,
        cols=2,
        shared_xaxes=True,
        row_heights=[0.62, 0.38],
        vertical_spacing=0.09,
        horizontal_spacing=0.09,
        subplot_titles=[f"{TITLES[c]}: Δloss when its contribution is changed" for c in EFFECT_COMPONENTS]
        + [f"{TITLES[c]} gain (definition={result.gains.definition})" for c in EFFECT_COMPONENTS],
    )
    layers = np.asarray(result.layers)
    shown = reading_intervention(result)  # the others one legend click away: four overlaid hide each other
    explained = False  # the open-marker key, once
    for col, component in enumerate(EFFECT_COMPONENTS, start=1):
        use_log = _effect_log_axis(result, component, log)
        for index, name in enumerate(result.interventions):
            fig.add_trace(
                _effect_trace(result, component, name, index, use_log, show_legend=col == 1, shown=shown),
                row=1,
                col=col,
            )
        if (
            use_log
            and not explained
            and any((result.effect("delta_loss", n, component) < 0).any() for n in result.interventions)
        ):
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name="open marker: Δloss < 0, drawn at |Δloss|",
                    marker=dict(symbol="circle-open", color="#555555", size=9),
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
            explained = True
        if not use_log:
            fig.add_hline(y=0, line=dict(color=COLORS["neutral"], dash="dash", width=1.2), row=1, col=col)
        fig.update_yaxes(
            title_text="Δloss (nats)" + (", |Δloss| (log)" if use_log else ""),
            row=1,
            col=col,
            **(_effect_log_axis_settings(*_magnitude_extent(result, component, (shown,))) if use_log else {}),
        )
        gains = result.gains
        trace = gain_trace(gains, GAIN_COMPONENT[component], layers, legend="legend")
        trace.showlegend = False
        fig.add_trace(trace, row=2, col=col)
        neutral_line(fig, 2, col)
        gain_log = log_axis(None, gains, (GAIN_COMPONENT[component],))
        fig.update_yaxes(
            title_text="gain ‖output‖ / ‖input‖" + (" (log)" if gain_log else ""),
            row=2,
            col=col,
            **gain_axis(gain_log, _gain_extent(gains, GAIN_COMPONENT[component])),
        )
        fig.update_xaxes(**layer_ticks(result.n_layers, result.layers), row=1, col=col)
        fig.update_xaxes(title_text="layer", row=2, col=col, **layer_ticks(result.n_layers, result.layers))
    _finish(fig, result)
    return fig


def _gain_extent(gains, component) -> tuple[float, float]:
    return gain_extent(gains, (component,))


def _effect_log_axis(result: EffectResult, component: str, log: bool | None) -> bool:
    if log is not None:
        return bool(log)
    low, high = _magnitude_extent(result, component)
    return high / low > LOG_SPAN


def _effect_log_axis_settings(low: float, high: float) -> dict:
    """A log axis spanning the point estimates (half a decade of room), so that the whisker of an
    interval reaching 0 or below runs off the bottom instead of stretching the axis to 1e-8."""

    return dict(
        type="log",
        exponentformat="power",
        range=[math.log10(low) - 0.5, math.log10(high) + 0.4],
        **log_ticks(low, high),
    )


def _magnitude_extent(result: EffectResult, component: str, names=None) -> tuple[float, float]:
    """Smallest and largest nonzero |Δloss| of the interventions ``names`` (default all) in a panel."""
    names = result.interventions if names is None else names
    values = np.abs(np.concatenate([result.effect("delta_loss", n, component) for n in names]))
    nonzero = values[values > 0]
    if not nonzero.size:
        return 1.0, 1.0
    return float(nonzero.min()), float(nonzero.max())


def _effect_trace(
    result: EffectResult, component: str, name: str, index: int, use_log: bool, show_legend: bool, shown: str
) -> go.Scatter:
    layers = np.asarray(result.layers)
    delta = result.effect("delta_loss", name, component)
    kl = result.effect("kl", name, component)
    gains = result.gain(component)
    nan = np.full((len(layers), 2), np.nan)
    bounds = result.intervals.of("delta_loss", name, component) if result.intervals is not None else None
    kl_bounds = result.intervals.of("kl", name, component) if result.intervals is not None else nan
    gain_intervals = result.gains.intervals
    gain_bounds = gain_intervals.of(GAIN_COMPONENT[component]) if gain_intervals is not None else nan
    y, lower, upper = (
        (np.abs(delta), *_magnitude_bounds(delta, bounds)) if use_log else (delta, *_plain_bounds(delta, bounds))
    )
    color = INTERVENTION_COLORS[index % len(INTERVENTION_COLORS)]
    symbol = SYMBOLS[index % len(SYMBOLS)]
    symbols = [f"{symbol}-open" if use_log and value < 0 else symbol for value in delta]
    # Faded: the interval includes 0, so the sign of the effect is not known from these prompts.
    opacity = np.where((bounds[:, 0] <= 0) & (bounds[:, 1] >= 0), 0.35, 1.0).tolist() if bounds is not None else 1.0
    interval = " [%{customdata[2]:.3g}, %{customdata[3]:.3g}]" if bounds is not None else ""
    kl_interval = " [%{customdata[5]:.3g}, %{customdata[6]:.3g}]" if result.intervals is not None else ""
    gain_interval = " [%{customdata[8]:.3g}, %{customdata[9]:.3g}]" if gain_intervals is not None else ""
    hover = (
        f"{TITLES[component]} L%{{customdata[0]}} · {html.escape(name)}<br>"
        f"Δloss %{{customdata[1]:.4g}}{interval} nats<br>KL %{{customdata[4]:.4g}}{kl_interval} nats<br>"
        f"gain %{{customdata[7]:.4g}}{gain_interval}<extra></extra>"
    )
    bounds = bounds if bounds is not None else nan
    customdata = np.column_stack(
        [
            layers,
            delta,
            bounds[:, 0],
            bounds[:, 1],
            kl,
            kl_bounds[:, 0],
            kl_bounds[:, 1],
            gains,
            gain_bounds[:, 0],
            gain_bounds[:, 1],
        ]
    )
    # Side by side within each layer, so that the interventions' error bars do not hide each other;
    # the hover names the true layer.
    offset = (index - (len(result.interventions) - 1) / 2) * DODGE
    return go.Scatter(
        x=layers + offset,
        y=y,
        mode="lines+markers",
        name=name,
        legendgroup=name,
        showlegend=show_legend,
        visible=True if name == shown else "legendonly",
        line=dict(color=color, width=1.4),
        marker=dict(size=8, color=color, symbol=symbols, opacity=opacity, line=dict(width=1.5, color=color)),
        error_y=dict(type="data", symmetric=False, array=upper, arrayminus=lower, color=color, thickness=1.1, width=3)
        if result.intervals is not None
        else None,
        customdata=customdata,
        hovertemplate=hover,
    )


def _plain_bounds(values, bounds):
    if bounds is None:
        return None, None
    return values - bounds[:, 0], bounds[:, 1] - values  # error bar below, above


def _magnitude_bounds(values, bounds):
    """Error bars of |value| on a log axis: an interval wholly on one side of 0 maps to its
    magnitudes; one that straddles 0 reaches down to the axis floor (no lower bound on |value|)."""
    if bounds is None:
        return None, None
    magnitude = np.abs(values)
    low, high = bounds[:, 0], bounds[:, 1]
    top = np.maximum(np.abs(low), np.abs(high))
    bottom = np.where(low > 0, low, np.where(high < 0, -high, magnitude * 1e-3))
    return magnitude - np.minimum(bottom, magnitude), np.maximum(top, magnitude) - magnitude


def _finish(fig, result: EffectResult) -> None:
    intervals = result.intervals
    how = (
        "t intervals"
        if intervals is not None and intervals.method == "t"
        else f"percentile-bootstrap intervals, {intervals.n_resamples} resamples"
        if intervals is not None
        else ""
    )
    uncertainty = (
        f"error bars: {100 * intervals.confidence:g}% {how} over prompts"
        if intervals is not None
        else "no intervals (bootstrap skipped)"
    )
    scope = "" if result.all_layers else f" · layers {result.layer_spans} of {result.n_layers}"
    dropped = f" · first {result.drop_first} positions not scored" if result.drop_first else ""
    others = (
        " · faded: interval includes 0 · click the legend for the other interventions"
        if len(result.interventions) > 1
        else " · faded: interval includes 0"
    )
    fig.update_layout(
        template="plotly_white",
        width=None,
        height=HEIGHT,
        hovermode="closest",
        title=dict(
            text=f"<b>{html.escape(result.model)}</b>: what each sublayer's contribution costs the next-token "
            f"loss, beside its gain<br><sup>{result.n_prompts} prompts, {int(result.n_predicted.sum())} "
            f"predicted tokens, clean loss {result.mean_clean_loss:.3f} nats{scope}{dropped} · "
            f"{uncertainty}{others}</sup>",
            x=0.5,
            xanchor="center",
            font=dict(size=20),
        ),
        margin=dict(MARGIN, b=110),
        font=dict(size=14),
        legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.1, yanchor="top", title_text="intervention: "),
    )


def effects_page(result: EffectResult, plotlyjs: str | bool = True) -> str:
    """effects.html: the reading's answers above the figure."""
    reading = gain_versus_effect(result)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(result, reading))
    name = html.escape(short_name(result.model))
    heading = f"<h1>{name}: what each sublayer costs the predictions, beside its gain</h1>\n"
    body = (
        heading
        + f'<div class="reading"><ul>{items}</ul></div>\n'
        + figure_div(
            plot_effects(result),
            "funnel-tl-effects",
            {
                "toImageButtonOptions": {
                    "format": "png",
                    "filename": "effects",
                    "width": WIDTH,
                    "height": HEIGHT,
                    "scale": 2,
                }
            },
        )
    )
    style = (
        "h1{font-family:sans-serif;font-size:24px;max-width:1300px;margin:16px auto 0 auto}"
        ".reading{font-family:sans-serif;font-size:15px;max-width:1300px;margin:12px auto 0 auto;"
        "line-height:1.45}.reading li{margin-bottom:4px}"
    )
    return page_html(f"{short_name(result.model)}: effects beside gains", body, plotlyjs, style=style)


def write_effects_page(
    result: EffectResult, path: str | os.PathLike, self_contained: bool = False, root: str | os.PathLike | None = None
) -> Path:
    """Write effects.html atomically; plotly.js shared beside it (or at ``root``) unless ``self_contained``."""
    return write_page(path, lambda plotlyjs: effects_page(result, plotlyjs), self_contained, root)
