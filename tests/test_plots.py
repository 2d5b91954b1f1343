"""Figures: the seed's four panels as go.Figure, offline HTML, and `funnel-tl report`.

Most checks use synthetic results whose gains we chose (tests/synthetic_results.py), so the
expected traces, colours, labels and markers follow from the inputs, not from the plotting code.
"""

from __future__ import annotations

import json
import re

import numpy as np
import plotly.graph_objects as go
import pytest
from synthetic_results import from_gains, funnel_like

from funnel_tl import FunnelError, plots
from funnel_tl.analysis.funnel import PYTHIA_1_4B_REFERENCE
from funnel_tl.analysis.report import format_analysis
from funnel_tl.cli.entry import main
from funnel_tl.cli.output import IMAGES_HINT
from funnel_tl.plots.pages import write_html, write_png
from funnel_tl.plots.panels import (
    plot_attention_mlp,
    plot_cumulative,
    plot_funnel,
    plot_mlp_depth,
    plot_net_gain,
    plot_seed_product,
)
from funnel_tl.results.gains import GainResult


def traces_named(fig, fragment):
    return [trace for trace in fig.data if trace.name and fragment in trace.name]


def one(fig, fragment, exact=False):
    found = [t for t in fig.data if t.name == fragment] if exact else traces_named(fig, fragment)
    assert len(found) == 1, (fragment, [t.name for t in fig.data])
    return found[0]


def panel_axes(fig, trace):
    return trace.xaxis, trace.yaxis


@pytest.fixture(scope="module")
def result():
    return funnel_like(n_layers=8, n_prompts=8, noise=0.2).with_intervals(n_resamples=500, seed=0)


def test_plot_funnel_has_the_four_panels(result):
    fig = plot_funnel(result)
    assert isinstance(fig, go.Figure)
    titles = [a.text for a in fig.layout.annotations]
    for title in plots.PANEL_TITLES:
        assert title in titles
    # Each panel's traces sit on their own axes: attention/MLP (1), depth (2), net (3), cumulative (4).
    assert panel_axes(fig, one(fig, "attention gain")) == ("x", "y")
    assert panel_axes(fig, one(fig, "funnel MLP")) == ("x2", "y2")
    # Panel 3's block gain has a y-axis of its own (y4, right, over y3): another denominator.
    assert panel_axes(fig, one(fig, "block")) == ("x3", "y4")
    assert fig.layout.yaxis4.overlaying == "y3" and fig.layout.yaxis4.side == "right"
    bars = [t for t in fig.data if isinstance(t, go.Bar) and t.legendgroup == "contracting"]
    assert {panel_axes(fig, bar) for bar in bars} == {("x3", "y3")}
    assert panel_axes(fig, one(fig, "stream growth")) == ("x4", "y5")
    assert fig.layout.yaxis5.type == "log"


def test_title_names_model_definition_and_prompt_count(result):
    title = plot_funnel(result).layout.title.text
    assert "synthetic/funnel" in title and "definition=seed" in title and "8 prompts" in title
    assert "error bars: 95% t intervals over prompts (products: studentized bootstrap, 500 resamples" in title
    percentile = plot_funnel(result.with_intervals(n_resamples=500, method="percentile")).layout.title.text
    assert "95% percentile-bootstrap intervals over prompts (500 resamples, seed 0)" in percentile


def test_panel_1_attention_and_mlp_with_neutral_line_and_max_mlp_marker(result):
    fig = plot_attention_mlp(result)
    attention, mlp = one(fig, "attention gain"), one(fig, "MLP gain", exact=True)
    np.testing.assert_array_equal(attention.y, result.attn_gains)
    np.testing.assert_array_equal(mlp.y, result.mlp_gains)
    shapes = fig.layout.shapes
    assert any(s.type == "line" and s.y0 == 1 and s.y1 == 1 for s in shapes), "neutral line at gain 1"
    # funnel_like puts the largest MLP gain (3.6) in the last layer, 7.
    assert any(s.type == "line" and s.x0 == 7 and s.x1 == 7 for s in shapes)
    assert any(a.text == "max MLP L7" for a in fig.layout.annotations)


def test_every_shaded_area_is_named_in_a_legend(result):
    """A shade under panel 1's attention line (linear axis) had no legend entry and read as an interval."""
    _, narrow = wide_and_narrow()  # panel 1 on a linear axis, where the shade was drawn
    for shown in (result, narrow.with_intervals(n_resamples=100, seed=0)):
        fig = plot_funnel(shown)
        filled = [trace for trace in fig.data if getattr(trace, "fill", None) not in (None, "none")]
        # Only the stream growth's interval band (its upper edge is the unnamed trace it fills to).
        assert [trace.name for trace in filled] == ["95% interval"] and filled[0].showlegend is not False


def test_error_bars_are_the_intervals(result):
    fig = plot_attention_mlp(result)
    mlp = one(fig, "MLP gain", exact=True)
    lo, hi = result.intervals.mlp.T
    np.testing.assert_allclose(mlp.error_y.array, hi - result.mlp_gains)
    np.testing.assert_allclose(mlp.error_y.arrayminus, result.mlp_gains - lo)


def test_hover_shows_layer_value_and_interval(result):
    mlp = one(plot_funnel(result), "MLP gain", exact=True)
    assert mlp.hovertemplate.startswith("L%{customdata[0]}<br>MLP gain %{customdata[1]")
    assert "95% interval [%{customdata[2]:.4g}, %{customdata[3]:.4g}]" in mlp.hovertemplate
    data = np.asarray(mlp.customdata)
    np.testing.assert_array_equal(data[:, 0], np.arange(8))
    np.testing.assert_array_equal(data[:, 1], result.mlp_gains)
    np.testing.assert_allclose(data[:, 2:], result.intervals.mlp)


def test_panel_2_plots_mlp_on_normalized_depth_with_the_reference(result):
    fig = plot_mlp_depth(result)
    mlp = one(fig, "funnel MLP")
    np.testing.assert_allclose(mlp.x, np.arange(8) / 7)
    reference = one(fig, "Pythia-1.4B")
    assert (reference.x[0], reference.y[0]) == (1.0, PYTHIA_1_4B_REFERENCE["mlp_max_gain"])
    assert any(s.y0 == PYTHIA_1_4B_REFERENCE["mlp_max_gain"] for s in fig.layout.shapes)


def test_panel_3_colours_bars_and_labels_the_expanding_ones():
    # Known combined gains: layer 2 (1.5 × 1.0) and layer 3 (2.0 × 1.5) expand; 0 and 1 contract.
    gains = {
        "attn": np.tile([0.5, 0.9, 1.5, 2.0], (5, 1)),
        "mlp": np.tile([0.5, 1.0, 1.0, 1.5], (5, 1)),
        "block": np.tile([1.1, 1.2, 1.3, 1.4], (5, 1)),
    }
    result = from_gains(gains).with_intervals(n_resamples=100)
    fig = plot_net_gain(result)
    bars = [t for t in fig.data if isinstance(t, go.Bar) and t.x is not None and t.x[0] is not None]
    by_kind = {t.legendgroup: t for t in bars}
    assert list(by_kind["contracting"].x) == [0, 1] and list(by_kind["expanding"].x) == [2, 3]
    assert by_kind["expanding"].marker.color == plots.COLORS["expanding"]
    assert by_kind["contracting"].marker.color == plots.COLORS["contracting"]
    np.testing.assert_allclose(by_kind["expanding"].y, [1.5, 3.0], rtol=1e-9)  # 1e-9: the seed's 1e-10 epsilon
    labels = sorted(a.text for a in fig.layout.annotations if a.text.startswith("L"))
    assert labels == ["L2<br>1.50", "L3<br>3.00"]
    block = one(fig, "block")
    np.testing.assert_allclose(block.y, [1.1, 1.2, 1.3, 1.4], rtol=1e-9)  # 1e-9: the seed's epsilon


def test_panel_3_bars_are_one_layer_wide_however_far_apart():
    # SmolLM2 under the residual definition: only layers 0 and 11 expand. Without a width Plotly
    # sized the bars by the gap between them: 11 layers wide.
    n_layers = 30
    combined = np.full(n_layers, 0.05)
    combined[[0, 11]] = [15.9, 2.4]
    gains = {"attn": np.tile(combined, (4, 1)), "mlp": np.ones((4, n_layers)), "block": np.ones((4, n_layers))}
    fig = plot_funnel(from_gains(gains))
    bars = [t for t in fig.data if isinstance(t, go.Bar) and t.x is not None and t.x[0] is not None]
    assert {t.legendgroup for t in bars} == {"expanding", "contracting"}
    assert all(t.width == plots.BAR_WIDTH < 1 for t in bars)


def test_panel_3_labels_of_neighbouring_layers_never_overlap():
    # SmolLM2's seed definition: every layer expands, L23-L29 large. Labels of adjacent layers
    # (~18 px apart on the 2 x 2 figure, each label ~40 px wide) overlapped.
    n_layers = 30
    combined = np.linspace(20, 60, n_layers)
    combined[[11, 23, 24, 25, 26, 27, 28, 29]] = [2691, 163, 567, 132, 137, 538, 1991, 762]
    gains = {"attn": np.tile(combined, (4, 1)), "mlp": np.ones((4, n_layers)), "block": np.ones((4, n_layers))}
    result = from_gains(gains)
    labelled = sorted(int(a.x) for a in plot_funnel(result).layout.annotations if str(a.text).startswith("L"))
    assert 11 in labelled and 28 in labelled  # the largest are named
    assert min(np.diff(labelled)) >= 2, labelled
    # A panel of its own is wider: at least as many labels fit.
    alone = sorted(int(a.x) for a in plot_net_gain(result).layout.annotations if str(a.text).startswith("L"))
    assert len(alone) >= len(labelled), alone


def test_titles_name_a_model_by_its_short_name_never_a_path():
    from dataclasses import replace

    gains = {c: np.full((2, 3), 0.9) for c in ("attn", "mlp", "block")}
    result = replace(from_gains(gains), model="/tmp/checkpoints/smollm2-hf")
    title = plot_funnel(result).layout.title.text
    assert "<b>smollm2-hf</b>" in title and "/tmp" not in title
    assert "/tmp" not in format_analysis(result).splitlines()[1]  # the analysis' heading too
    assert "EleutherAI/pythia-70m" in plot_funnel(replace(result, model="EleutherAI/pythia-70m")).layout.title.text


def test_panel_3_hatches_bars_whose_interval_crosses_one():
    rng = np.random.default_rng(0)
    # Layer 0 varies around 1 from prompt to prompt; layer 1 is steady at 0.25.
    attn = np.column_stack([rng.uniform(0.5, 1.5, 10), np.full(10, 0.5)])
    result = from_gains({"attn": attn, "mlp": np.ones((10, 2)) * [1.0, 0.5], "block": np.ones((10, 2))})
    result = result.with_intervals(n_resamples=500)
    assert result.intervals.combined[0, 0] < 1 < result.intervals.combined[0, 1]
    fig = plot_net_gain(result)
    patterns = {}
    for trace in fig.data:
        if isinstance(trace, go.Bar) and trace.x is not None and trace.x[0] is not None:
            patterns.update(zip(trace.x, trace.marker.pattern.shape, strict=False))
    assert patterns == {0: "/", 1: ""}
    assert traces_named(fig, "hatched: interval crosses 1")


def wide_and_narrow():
    """Known gains: one set spanning 0.01 to 5 (500-fold), one spanning 0.5 to 1.2."""
    wide = {
        "attn": np.tile([0.01, 0.1, 0.5], (4, 1)),
        "mlp": np.tile([0.5, 1.0, 5.0], (4, 1)),
        "block": np.tile([1.1, 1.2, 1.3], (4, 1)),
    }
    narrow = {
        "attn": np.tile([0.5, 0.6, 0.7], (4, 1)),
        "mlp": np.tile([0.8, 0.9, 1.2], (4, 1)),
        "block": np.tile([1.0, 1.1, 1.2], (4, 1)),
    }
    return from_gains(wide), from_gains(narrow)


def test_gain_panels_go_to_a_log_axis_only_when_the_gains_span_widely():
    wide, narrow = wide_and_narrow()
    wide_fig, narrow_fig = plot_funnel(wide), plot_funnel(narrow)
    # Panel 1 of `wide` spans 5 / 0.01 = 500 > LOG_SPAN; `narrow` spans 1.2 / 0.5 = 2.4.
    assert wide_fig.layout.yaxis.type == "log" and narrow_fig.layout.yaxis.type != "log"
    # Panel 3 of `wide`: combined 0.005 .. 2.5; of `narrow`: 0.4 .. 1.2.
    assert wide_fig.layout.yaxis3.type == "log" and narrow_fig.layout.yaxis3.type != "log"
    assert plot_funnel(narrow, log_gains=True).layout.yaxis.type == "log"
    assert plot_funnel(wide, log_gains=False).layout.yaxis.type != "log"
    assert plot_net_gain(narrow, log_gains=True).layout.yaxis.type == "log"


def test_on_a_log_axis_bars_span_from_one_to_the_gain():
    wide, _ = wide_and_narrow()
    fig = plot_net_gain(wide, log_gains=True)
    bars = {t.legendgroup: t for t in fig.data if isinstance(t, go.Bar) and t.x is not None and t.x[0] is not None}
    combined = [0.005, 0.1, 2.5]
    contracting, expanding = bars["contracting"], bars["expanding"]
    assert contracting.base == 1 and expanding.base == 1
    # 1e-9: the seed's epsilon in every per-prompt gain.
    np.testing.assert_allclose(np.asarray(contracting.y) + 1, combined[:2], rtol=1e-9)
    np.testing.assert_allclose(np.asarray(expanding.y) + 1, combined[2:], rtol=1e-9)
    np.testing.assert_allclose(np.asarray(expanding.customdata)[:, 1], [2.5], rtol=1e-9)  # hover shows the gain
    label = next(a for a in fig.layout.annotations if a.text == "L2<br>2.50")
    assert label.y == pytest.approx(np.log10(2.5))  # annotations on log axes are in log10 units


def test_panel_4_is_the_streams_growth_with_and_without_position_0():
    """Issue 20: panel 4 draws a quantity of the model, mean ||resid_post_L|| / mean ||resid_pre_0||."""
    from dataclasses import replace

    # Two prompts of 2 tokens; resid_pre_0 sums 2 and 4; resid_post sums grow layer by layer.
    in_block = np.array([[2.0, 6.0, 18.0], [4.0, 8.0, 16.0]])
    out_block = np.array([[6.0, 18.0, 36.0], [8.0, 16.0, 64.0]])
    result = replace(from_gains({c: np.ones((2, 3)) for c in ("attn", "mlp", "block")}, n_tokens=2))
    result = replace(
        result, out_sums={**result.out_sums, "block": out_block}, in_sums={**result.in_sums, "block": in_block}
    )
    expected = ((out_block / 2) / (in_block[:, :1] / 2 + 1e-10)).mean(axis=0)  # [3, 9, 18] and [2, 4, 16]
    np.testing.assert_allclose(expected, [2.5, 6.5, 17.0])
    np.testing.assert_allclose(result.block_cumulative_gains, expected, rtol=1e-12)
    fig = plot_cumulative(result)
    assert fig.layout.yaxis.type == "log"
    np.testing.assert_allclose(one(fig, "stream growth", exact=True).y, expected, rtol=1e-12)
    assert "x17" in one(fig, "output L2").name
    assert not traces_named(fig, "seed")  # the seed's product is not on this panel
    assert "resid_pre_0" in plots.PANEL_TITLES[3]


def test_seed_product_is_titled_as_what_it_is():
    fig = plot_seed_product(funnel_like())
    assert plots.SEED_PRODUCT_TITLE in fig.layout.title.text
    assert "not a norm ratio of any activation" in fig.layout.title.text


def test_seed_product_marks_bottleneck_and_output_on_a_log_scale():
    # Combined gains 0.5, 0.5, 2, 1.5: cumulative 0.5, 0.25, 0.5, 0.75; bottleneck L1, output L3.
    gains = {"attn": np.tile([0.5, 0.5, 2.0, 1.5], (4, 1)), "mlp": np.ones((4, 4)), "block": np.ones((4, 4))}
    fig = plot_seed_product(from_gains(gains))
    assert fig.layout.yaxis.type == "log"
    np.testing.assert_allclose(one(fig, "cumulative attn × MLP gain").y, [0.5, 0.25, 0.5, 0.75], rtol=1e-9)
    bottleneck, output = one(fig, "bottleneck"), one(fig, "output")
    assert (bottleneck.x[0], output.x[0]) == (1, 3)
    assert "L1" in bottleneck.name and "L3" in output.name


def test_seed_product_marks_no_bottleneck_on_a_rising_curve_and_one_marker_when_they_coincide():
    # Combined gains 0.5, 2, 2: cumulative 0.5, 1, 2 — lowest at L0, then only rising.
    rising = {"attn": np.tile([0.5, 2.0, 2.0], (4, 1)), "mlp": np.ones((4, 3)), "block": np.ones((4, 3))}
    fig = plot_seed_product(from_gains(rising))
    assert [t.name for t in fig.data if t.name and t.name.startswith("bottleneck")] == [] and one(fig, "output").x[
        0
    ] == 2
    assert traces_named(fig, "no bottleneck")
    # Combined gains 0.5, 0.5, 0.5: cumulative falls to the last layer, which is bottleneck and output.
    falling = {"attn": np.tile([0.5, 0.5, 0.5], (4, 1)), "mlp": np.ones((4, 3)), "block": np.ones((4, 3))}
    fig = plot_seed_product(from_gains(falling))
    marker = one(fig, "bottleneck = output")
    assert marker.x[0] == 2 and [t.name for t in fig.data if t.name and t.name.startswith("output")] == []


def test_panel_3_block_gain_has_its_own_axis_and_does_not_set_the_bars_range():
    # A block gain of 95 at L0 (nano-8l's case) beside attn × MLP gains near 1.
    gains = {
        "attn": np.tile([0.5, 0.9, 1.2], (4, 1)),
        "mlp": np.tile([1.0, 1.0, 1.1], (4, 1)),
        "block": np.tile([95.0, 1.1, 1.2], (4, 1)),
    }
    result = from_gains(gains)
    result.provenance["normalization"] = "LN"  # what measure_gains records (TransformerLens' cfg)
    fig = plot_net_gain(result, log_gains=False)
    block = one(fig, "block")
    assert block.yaxis == "y2" and fig.layout.yaxis2.overlaying == "y"
    assert fig.layout.yaxis.range[1] < 2  # the bars' axis: 1.15 × the largest combined gain (1.32)
    assert "LayerNorm outputs" in fig.layout.yaxis.title.text and "resid_pre" in block.name


def test_panel_3_draws_the_block_axis_1_where_it_cannot_sit_level_with_the_bars_1():
    """SmolLM2's case: bars all far above 1 (their 1 at the bottom) beside block gains below 1.
    The block axis then keeps its own range, and its 1 gets a dotted line of its own, or a block
    gain of 0.55 would read as above the bars' dashed 1."""

    def block_lines(fig):
        return [shape for shape in fig.layout.shapes if shape.yref and shape.yref.startswith("y2")]

    expanding = {
        "attn": np.tile([20.0, 30.0, 40.0], (4, 1)),
        "mlp": np.tile([20.0, 30.0, 90.0], (4, 1)),
        "block": np.tile([0.55, 3.0, 20.0], (4, 1)),
    }
    lines = block_lines(plot_net_gain(from_gains(expanding)))
    assert len(lines) == 1 and lines[0].y0 == lines[0].y1 == 1 and lines[0].line.dash == "dot"
    level = {c: np.tile([0.5, 0.9, 1.2], (4, 1)) for c in ("attn", "mlp", "block")}
    assert block_lines(plot_net_gain(from_gains(level))) == []  # level: the one dashed line serves both


def test_panel_3_names_the_norms_the_model_has():
    """SmolLM2 (Llama) has RMSNorm: its axis said "LayerNorm outputs"."""
    from dataclasses import replace

    gains = {c: np.full((2, 3), 0.9) for c in ("attn", "mlp", "block")}

    def axis(result):
        return plot_net_gain(result).layout.yaxis.title.text

    base = from_gains(gains)
    for recorded, words in (("RMS", "RMSNorm outputs"), ("LN", "LayerNorm outputs"), (None, "norm outputs")):
        assert f"(÷ {words})" in axis(replace(base, provenance={"normalization": recorded})), recorded
    assert "residual stream" in axis(replace(base, definition="residual", provenance={"normalization": "RMS"}))
    # Post-norm blocks (OLMo 2) read the stream itself under the seed definition too.
    post = replace(base, provenance={"normalization": "RMS", "reads": {"block_shape": "post-norm"}})
    assert "residual stream" in axis(post)


def test_colours_are_okabe_ito():
    for key in ("attn", "mlp", "expanding", "contracting", "reference"):
        assert plots.COLORS[key] in plots.OKABE_ITO, key
    assert len({plots.COLORS[k] for k in ("attn", "mlp", "expanding", "contracting", "reference")}) == 5


def test_log_ticks_are_one_two_five_per_decade():
    ticks = plots.log_ticks(0.03, 4.0)["tickvals"]
    assert {round(t / 10 ** np.floor(np.log10(t))) for t in ticks} == {1, 2, 5}


def test_without_intervals_there_are_no_error_bars_and_the_title_says_so():
    fig = plot_funnel(funnel_like())
    assert "bootstrap skipped" in fig.layout.title.text
    for trace in fig.data:
        assert trace.error_y.array is None
        assert "interval" not in (trace.hovertemplate or "")


def test_each_panel_alone_is_a_figure(result):
    for function in (plot_attention_mlp, plot_mlp_depth, plot_net_gain, plot_cumulative, plot_seed_product):
        fig = function(result)
        assert isinstance(fig, go.Figure) and len(fig.data) >= 1


def test_figures_work_for_a_single_layer_model():
    gains = {c: np.array([[0.5], [0.7], [0.6]]) for c in ("attn", "mlp", "block")}
    fig = plot_funnel(from_gains(gains).with_intervals(n_resamples=50))
    assert one(fig, "model MLP").x[0] == 0


# ---- output ---------------------------------------------------------------------------------------
def test_write_html_shares_plotlyjs_deterministic_and_atomic(tmp_path, result):
    fig = plot_funnel(result)
    first = write_html(fig, tmp_path / "a" / "funnel.html")
    html = first.read_text(encoding="utf-8")
    # One plotly.min.js beside the page, loaded by relative path: offline, and shared by the pages there.
    assert re.findall(r"<script[^>]+src=\"([^\"]+)\"", html) == ["plotly.min.js"]
    shared = first.parent / "plotly.min.js"
    assert "plotly.js v" in shared.read_text(encoding="utf-8")[:500] and len(html) < 300_000
    assert "Plotly.newPlot" in html
    assert "<title>synthetic/funnel: attention, MLP and block gain per layer</title>" in html
    second = write_html(plot_funnel(result), tmp_path / "b" / "funnel.html")
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in first.parent.iterdir()) == ["funnel.html", "plotly.min.js"]  # no temporary
    assert first.stat().st_mode & 0o777 == 0o644
    # Pages lower in a tree load the one at its root.
    nested = write_html(fig, tmp_path / "a" / "model" / "funnel.html", root=tmp_path / "a")
    assert '<script src="../plotly.min.js"' in nested.read_text() and not (nested.parent / "plotly.min.js").exists()


def test_self_contained_html_embeds_plotlyjs(tmp_path, result):
    page = write_html(plot_funnel(result), tmp_path / "funnel.html", self_contained=True)
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", html), "every script must be inline: the file opens alone"
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js itself is inside
    assert [p.name for p in tmp_path.iterdir()] == ["funnel.html"]


def test_png_is_skipped_with_a_message_without_chrome(tmp_path, monkeypatch, result):
    monkeypatch.setattr(plots.pages, "find_chrome", lambda: None)
    monkeypatch.setitem(__import__("sys").modules, "kaleido", object())  # kaleido "installed", Chrome not
    with pytest.warns(UserWarning, match="no Chrome/Chromium"):
        assert write_png(plot_funnel(result), tmp_path / "funnel.png") is None
    assert not (tmp_path / "funnel.png").exists()
    assert plots.png_help().startswith("PNG skipped: kaleido found no Chrome") and "\n" not in plots.png_help()
    assert "pip install kaleido" in plots.PNG_HELP and "\n" not in plots.PNG_HELP


@pytest.mark.slow
@pytest.mark.skipif(not plots.png_available(), reason="kaleido and Chrome/Chromium are not installed")
def test_png_svg_and_pdf_through_kaleido(tmp_path, result):
    path = write_png(plot_funnel(result), tmp_path / "funnel.png", scale=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = plots.export_figures({"funnel": plot_funnel(result), "mlp": plot_mlp_depth(result)}, tmp_path / "images")
    assert sorted(p.name for p in written) == sorted(
        f"{name}.{kind}" for name in ("funnel", "mlp") for kind in ("png", "svg", "pdf")
    )
    assert (tmp_path / "images" / "funnel.svg").read_text(encoding="utf-8").lstrip().startswith("<svg")
    assert "synthetic/funnel" in (tmp_path / "images" / "funnel.svg").read_text(encoding="utf-8")  # the title
    assert (tmp_path / "images" / "funnel.pdf").read_bytes()[:5] == b"%PDF-"
    assert not list((tmp_path / "images").glob(".*"))  # no temporary left behind
    with pytest.raises(FunnelError, match="cannot write a figure as funnel.bmp"):
        plots.write_images({tmp_path / "funnel.bmp": plot_funnel(result)})


def test_png_option_is_refused_before_any_work_without_chrome(tmp_path, monkeypatch, capsys):
    import funnel_tl.models.loading
    import funnel_tl.sweep.one_target

    monkeypatch.setattr(plots.pages, "find_chrome", lambda: None)
    monkeypatch.setitem(__import__("sys").modules, "kaleido", object())
    # Patched where each command looks it up: the sweep binds load_model at its import, which (if
    # first imported under this patch) kept the failing stand-in for every later test.
    for module in (funnel_tl.models.loading, funnel_tl.sweep.one_target):
        monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    for command in (["run"], ["heads"], ["compare", "--models", "nano-2l"], ["report", str(tmp_path)]):
        assert (
            main([*command, "--png", "--out", str(tmp_path / "x")] if command[0] != "report" else [*command, "--png"])
            == 2
        )
        error = capsys.readouterr().err
        assert "--png needs kaleido and a Chrome/Chromium" in error and error.count("\n") == 1, command


# ---- funnel-tl report ------------------------------------------------------------------------------
def test_report_rerenders_from_results_json_without_a_model(tmp_path, monkeypatch, capsys, result):
    import funnel_tl.models.loading

    def no_model(*args, **kwargs):
        raise AssertionError("report must not load a model")

    monkeypatch.setattr(funnel_tl.models.loading, "load_model", no_model)
    monkeypatch.setattr(plots.pages, "find_chrome", lambda: None)  # keep the test free of a browser
    result.save(tmp_path / "results.json")
    other = funnel_like(n_layers=4, model="synthetic/other")
    other.save(tmp_path / "sweep" / "other" / "results.json")

    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "funnel.html").is_file() and (tmp_path / "sweep" / "other" / "funnel.html").is_file()
    assert "synthetic/funnel: FUNNEL MODEL ANALYSIS" in out and "synthetic/other: FUNNEL MODEL ANALYSIS" in out
    assert "FUNNEL MODEL CONFIRMED (robust)" in out  # the stored intervals were used
    assert out.count(IMAGES_HINT) == 1  # said once, not per page; no browser started without --png
    expected = write_html(
        plot_funnel(GainResult.load(tmp_path / "results.json")), tmp_path / "expected" / "funnel.html"
    )
    assert (tmp_path / "funnel.html").read_bytes() == expected.read_bytes()


def test_report_can_redraw_or_drop_intervals(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plots.pages, "find_chrome", lambda: None)
    funnel_like().save(tmp_path / "results.json")
    assert main(["report", str(tmp_path), "--bootstrap", "300", "--bootstrap-seed", "3"]) == 0
    assert (
        "ROBUST TEST: 95% t intervals over 8 prompts (products: studentized bootstrap, 300 resamples, seed 3)"
        in capsys.readouterr().out
    )
    assert (
        main(["report", str(tmp_path), "--bootstrap", "300", "--bootstrap-seed", "3", "--intervals", "percentile"]) == 0
    )
    assert "percentile-bootstrap intervals over 8 prompts (300 resamples, seed 3)" in capsys.readouterr().out
    assert "300 resamples" in (tmp_path / "funnel.html").read_text(encoding="utf-8")
    assert "intervals" not in json.loads((tmp_path / "results.json").read_text())  # report never rewrites results


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no results.json" in err and err.count("\n") == 1
    (tmp_path / "results.json").write_text('{"model": "x"}')
    assert main(["report", str(tmp_path)]) == 2
    assert "not a funnel_tl results file" in capsys.readouterr().err


@pytest.mark.slow
def test_run_writes_funnel_html_that_report_reproduces(tmp_path, checkpoints, capsys, monkeypatch):
    monkeypatch.setattr(plots.pages, "find_chrome", lambda: None)
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--model",
                str(checkpoints["neox-parallel"]),
                "--device",
                "cpu",
                "--out",
                str(out),
                "--bootstrap",
                "200",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "FUNNEL MODEL CONFIRMED (robust)" in printed and IMAGES_HINT in printed
    data = json.loads((out / "results.json").read_text())
    assert data["intervals"]["n_resamples"] == 200 and "robust_funnel_test" in data
    written = (out / "funnel.html").read_bytes()
    (out / "funnel.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "funnel.html").read_bytes() == written


@pytest.mark.slow
def test_run_with_bootstrap_0_skips_intervals(tmp_path, checkpoints, monkeypatch):
    monkeypatch.setattr(plots.pages, "find_chrome", lambda: None)
    assert (
        main(
            ["run", "--model", str(checkpoints["gpt2"]), "--device", "cpu", "--out", str(tmp_path), "--bootstrap", "0"]
        )
        == 0
    )
    assert "intervals" not in json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "funnel.html").is_file()
    assert main(["run", "--model", str(checkpoints["gpt2"]), "--bootstrap", "-1"]) == 2
