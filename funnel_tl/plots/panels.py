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

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from funnel_tl.plots.panel_traces import (
    draw_attention_mlp,
    draw_cumulative,
    draw_mlp_depth,
    draw_net_gain,
    draw_seed_product,
)
from funnel_tl.plots.style import (
    HEIGHT,
    finish_figure,
    legend_name,
    place_legend,
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
    return _single(result, draw_attention_mlp, 0, log_gains)


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
    return _single(result, draw_mlp_depth, 1, log_gains)


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
    return _single(result, draw_net_gain, 2, log_gains)


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
    return _single(result, draw_cumulative, 3, True)


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
    draw_seed_product(fig, result, row=1, col=1, legend="legend")
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
    for index, panel in enumerate((draw_attention_mlp, draw_mlp_depth, draw_net_gain, draw_cumulative)):
        panel(
            fig,
            result,
            row=index // 2 + 1,
            col=index % 2 + 1,
            legend=legend_name(index),
            log=True if panel is draw_cumulative else log_gains,
        )
        place_legend(fig, index, row=index // 2 + 1, col=index % 2 + 1)
    finish_figure(fig, result, height=HEIGHT)
    return fig


def _single(result, panel, index: int, log: bool | None) -> go.Figure:
    fig = make_subplots(rows=1, cols=1, specs=[[{"secondary_y": panel is draw_net_gain}]])
    fig.update_layout(height=560)
    panel(fig, result, row=1, col=1, legend="legend", log=log)
    place_legend(fig, index, single=True, row=1, col=1)
    finish_figure(fig, result, height=560, heading=PANEL_TITLES[index])
    return fig
