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
    from funnel_tl.plots.compare import plot_depth_heatmap, plot_depth_overlay
    from funnel_tl.plots.compare_page import (
        TABLE_COLUMNS,
        VERDICT_NOTE,
        format_seconds,
        page_figures,
        render_html,
        table_html,
    )
    from funnel_tl.plots.effects import (
        DODGE,
        INTERVENTION_COLORS,
        SYMBOLS,
        TITLES,
        effects_page,
        plot_effects,
        write_effects_page,
    )
    from funnel_tl.plots.heads import head_figures, heads_page, plot_heads
    from funnel_tl.plots.pages import (
        IMAGE_FORMATS,
        PLOTLYJS,
        PNG_HELP,
        export_figures,
        figure_div,
        find_chrome,
        page_html,
        plotlyjs_for,
        png_available,
        png_help,
        png_missing,
        require_images,
        script_tag,
        write_html,
        write_image,
        write_images,
        write_page,
        write_png,
    )
    from funnel_tl.plots.panels import (
        PANEL_TITLES,
        SEED_PRODUCT_NOTE,
        SEED_PRODUCT_TITLE,
        plot_attention_mlp,
        plot_cumulative,
        plot_funnel,
        plot_mlp_depth,
        plot_net_gain,
        plot_seed_product,
    )
    from funnel_tl.plots.positions import (
        HEATMAP_ROW,
        MIN_LOG10_SPAN,
        ROW_PX,
        plot_head_positions,
        plot_position_heatmap,
        plot_position_heatmaps,
        plot_sink_comparison,
        position_figures,
        write_position_page,
    )
    from funnel_tl.plots.style import (
        BAR_WIDTH,
        COLORS,
        DIVERGING,
        HEIGHT,
        LEGEND_DROP_PX,
        LOG_SPAN,
        MARGIN,
        NAMES,
        OKABE_ITO,
        WIDTH,
        aligned_log_range,
        broken_at_gaps,
        compact,
        denominators_of,
        error_bars,
        finish_figure,
        gain_axis,
        gain_colorbar,
        gain_extent,
        gain_trace,
        hover_template,
        intervals_of,
        label_spacing,
        labelled_trace,
        layer_ticks,
        legend_entry,
        legend_name,
        log_axis,
        log_reach,
        log_ticks,
        neutral_line,
        one_two_five,
        place_legend,
        short_label,
        ticks_within,
        without_first_trace,
        without_first_values,
    )
    from funnel_tl.plots.sweep_style import (
        COMPONENT_TITLES,
        HEATMAP_COLUMNS,
        MAX_HEATMAP_HEIGHT,
        MAX_LAYER_LEGEND,
        MAX_STEP_LABELS,
        NEUTRAL_LINE,
        OVERLAY_LINES,
        ROW_GAP_PX,
        ROW_PANEL_PX,
        SEQUENTIAL,
        STEP_HEATMAP_HEIGHT,
        THINNED_LINES,
        bar_size,
        base_label,
        colorbar_carrier,
        component_gains,
        heatmap_scale,
        is_checkpoint_sweep,
        model_colors,
        model_groups,
        neutral_lines,
        normalized_depth,
        rows_layout,
        short_labels,
        show_all_button,
        step_axis,
        step_scale,
        subtitle,
        sweep_extent,
        thinned,
        viridis,
        what_is_compared,
    )
    from funnel_tl.plots.training import plot_training, step_heatmap


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
