"""Figures: the four panels, per-head, per-position, effects and sweep figures as Plotly figures, written as offline HTML or PNG.

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "PANEL_TITLES": "panels", "SEED_PRODUCT_TITLE": "panels", "SEED_PRODUCT_NOTE": "panels",
    "plot_attention_mlp": "panels", "plot_mlp_depth": "panels", "plot_net_gain": "panels",
    "plot_cumulative": "panels", "plot_seed_product": "panels", "plot_funnel": "panels",
    "OKABE_ITO": "style", "COLORS": "style", "DIVERGING": "style", "NAMES": "style", "WIDTH": "style",
    "HEIGHT": "style", "MARGIN": "style", "LOG_SPAN": "style", "BAR_WIDTH": "style", "LEGEND_DROP_PX": "style",
    "intervals_of": "style", "gain_trace": "style", "without_first_values": "style", "without_first_trace": "style",
    "broken_at_gaps": "style", "error_bars": "style", "hover_template": "style", "gain_extent": "style",
    "log_axis": "style", "gain_axis": "style", "log_ticks": "style", "one_two_five": "style", "log_reach": "style",
    "ticks_within": "style", "gain_colorbar": "style", "aligned_log_range": "style", "legend_entry": "style",
    "neutral_line": "style", "labelled_trace": "style", "label_spacing": "style", "compact": "style",
    "denominators_of": "style", "layer_ticks": "style", "legend_name": "style", "place_legend": "style",
    "finish_figure": "style", "short_label": "style",
    "PNG_HELP": "pages", "PLOTLYJS": "pages", "plotlyjs_for": "pages", "script_tag": "pages", "figure_div": "pages",
    "page_html": "pages", "write_page": "pages", "write_html": "pages", "find_chrome": "pages",
    "png_missing": "pages", "png_help": "pages", "png_available": "pages", "IMAGE_FORMATS": "pages",
    "require_images": "pages", "write_images": "pages", "write_image": "pages", "write_png": "pages",
    "export_figures": "pages",
    "plot_heads": "heads", "head_figures": "heads", "heads_page": "heads",
    "MIN_LOG10_SPAN": "positions", "ROW_PX": "positions", "HEATMAP_ROW": "positions",
    "plot_position_heatmap": "positions", "plot_position_heatmaps": "positions", "plot_head_positions": "positions",
    "plot_sink_comparison": "positions", "position_figures": "positions", "write_position_page": "positions",
    "INTERVENTION_COLORS": "effects", "SYMBOLS": "effects", "DODGE": "effects", "TITLES": "effects",
    "plot_effects": "effects", "effects_page": "effects", "write_effects_page": "effects",
    "plot_depth_overlay": "compare", "plot_depth_heatmap": "compare",
    "step_heatmap": "training", "plot_training": "training",
    "COMPONENT_TITLES": "sweep_style", "NEUTRAL_LINE": "sweep_style", "MAX_STEP_LABELS": "sweep_style",
    "OVERLAY_LINES": "sweep_style", "THINNED_LINES": "sweep_style", "MAX_LAYER_LEGEND": "sweep_style",
    "MAX_HEATMAP_HEIGHT": "sweep_style", "STEP_HEATMAP_HEIGHT": "sweep_style", "HEATMAP_COLUMNS": "sweep_style",
    "normalized_depth": "sweep_style", "short_labels": "sweep_style", "model_colors": "sweep_style",
    "viridis": "sweep_style", "SEQUENTIAL": "sweep_style", "subtitle": "sweep_style",
    "is_checkpoint_sweep": "sweep_style", "model_groups": "sweep_style", "base_label": "sweep_style",
    "thinned": "sweep_style", "step_scale": "sweep_style", "bar_size": "sweep_style",
    "colorbar_carrier": "sweep_style", "neutral_lines": "sweep_style", "show_all_button": "sweep_style",
    "ROW_PANEL_PX": "sweep_style", "ROW_GAP_PX": "sweep_style", "rows_layout": "sweep_style",
    "what_is_compared": "sweep_style", "sweep_extent": "sweep_style", "heatmap_scale": "sweep_style",
    "component_gains": "sweep_style", "step_axis": "sweep_style",
    "format_seconds": "compare_page", "TABLE_COLUMNS": "compare_page", "table_html": "compare_page",
    "VERDICT_NOTE": "compare_page", "page_figures": "compare_page", "render_html": "compare_page",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.plots.panels import (PANEL_TITLES, SEED_PRODUCT_TITLE, SEED_PRODUCT_NOTE, plot_attention_mlp,
                                        plot_mlp_depth, plot_net_gain, plot_cumulative, plot_seed_product,
                                        plot_funnel)
    from funnel_tl.plots.style import (OKABE_ITO, COLORS, DIVERGING, NAMES, WIDTH, HEIGHT, MARGIN, LOG_SPAN,
                                       BAR_WIDTH, LEGEND_DROP_PX, intervals_of, gain_trace, without_first_values,
                                       without_first_trace, broken_at_gaps, error_bars, hover_template, gain_extent,
                                       log_axis, gain_axis, log_ticks, one_two_five, log_reach, ticks_within,
                                       gain_colorbar, aligned_log_range, legend_entry, neutral_line, labelled_trace,
                                       label_spacing, compact, denominators_of, layer_ticks, legend_name,
                                       place_legend, finish_figure, short_label)
    from funnel_tl.plots.pages import (PNG_HELP, PLOTLYJS, plotlyjs_for, script_tag, figure_div, page_html,
                                       write_page, write_html, find_chrome, png_missing, png_help, png_available,
                                       IMAGE_FORMATS, require_images, write_images, write_image, write_png,
                                       export_figures)
    from funnel_tl.plots.heads import (plot_heads, head_figures, heads_page)
    from funnel_tl.plots.positions import (MIN_LOG10_SPAN, ROW_PX, HEATMAP_ROW, plot_position_heatmap,
                                           plot_position_heatmaps, plot_head_positions, plot_sink_comparison,
                                           position_figures, write_position_page)
    from funnel_tl.plots.effects import (INTERVENTION_COLORS, SYMBOLS, DODGE, TITLES, plot_effects, effects_page,
                                         write_effects_page)
    from funnel_tl.plots.compare import (plot_depth_overlay, plot_depth_heatmap)
    from funnel_tl.plots.training import (step_heatmap, plot_training)
    from funnel_tl.plots.sweep_style import (COMPONENT_TITLES, NEUTRAL_LINE, MAX_STEP_LABELS, OVERLAY_LINES,
                                             THINNED_LINES, MAX_LAYER_LEGEND, MAX_HEATMAP_HEIGHT,
                                             STEP_HEATMAP_HEIGHT, HEATMAP_COLUMNS, normalized_depth, short_labels,
                                             model_colors, viridis, SEQUENTIAL, subtitle, is_checkpoint_sweep,
                                             model_groups, base_label, thinned, step_scale, bar_size,
                                             colorbar_carrier, neutral_lines, show_all_button, ROW_PANEL_PX,
                                             ROW_GAP_PX, rows_layout, what_is_compared, sweep_extent, heatmap_scale,
                                             component_gains, step_axis)
    from funnel_tl.plots.compare_page import (format_seconds, TABLE_COLUMNS, table_html, VERDICT_NOTE, page_figures,
                                              render_html)


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
