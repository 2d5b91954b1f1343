"""compare.html: the sweep's figures, its verdict table and the page that holds them."""

from __future__ import annotations

import html
import math
import re

import plotly.graph_objects as go

from funnel_tl.plots.pages import figure_div, page_html
from funnel_tl.plots.sweep_style import (
    base_label,
    is_checkpoint_sweep,
    model_groups,
    short_labels,
    subtitle,
    what_is_compared,
)
from funnel_tl.results.folders import slug


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
    (
        "model",
        "the model or checkpoint (full name in each cell's tooltip); a failed one says why across its row, "
        "one measured by an earlier run into this folder says so below its name",
    ),
    ("funnel seed", "the seed notebook's funnel test (see the note below the table)"),
    ("funnel robust", "the funnel test on 95% intervals over prompts (see the note below the table)"),
    ("shape", "layers × d_model (hidden size)"),
    ("params", "parameters: the checkpoint's own count"),
    ("attn\u00a0<\u00a01", "layers whose attention contracts (gain below 1), of all layers"),
    ("attn min", "smallest attention gain, and its layer"),
    ("attn max", "largest attention gain, and its layer"),
    ("MLP min", "smallest MLP gain, and its layer"),
    ("MLP max", "largest MLP gain, and its layer"),
    ("last MLP", "the last layer's MLP gain"),
    ("comb. max", "largest combined (attention × MLP) gain, and its layer"),
    (
        "measure time",
        "measuring the prompts alone, after loading and one untimed warm-up prompt, so that the "
        "first model carries no one-time costs; the load time is in each cell's tooltip",
    ),
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
            lines.append(
                f'<tr class="failed">{name}<td class="no" colspan="{len(TABLE_COLUMNS) - 1}">'
                f"failed: {html.escape(row.error or '')}</td></tr>"
            )
            continue
        cells = [
            name,
            _verdict_cell(row.funnel_confirmed),
            _verdict_cell(row.robust_funnel_confirmed),
            f"<td>{row.n_layers}&thinsp;×&thinsp;{row.hidden_dim}</td>",
            f"<td>{_format_count(row.n_parameters)}</td>",
            f"<td>{row.attn_contracting}/{row.n_layers}</td>",
            _gain_at(row.attn_min_gain, row.attn_min_layer),
            _gain_at(row.attn_max_gain, row.attn_max_layer),
            _gain_at(row.mlp_min_gain, row.mlp_min_layer),
            _gain_at(row.mlp_max_gain, row.mlp_max_layer),
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
td.name { text-align: left; max-width: 16em; overflow: hidden; white-space: normal; }
td.name span { white-space: nowrap; }
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
    "the CPU it is the process's peak resident set.</p>"
)


def _verdict_summary(base: str | None, rows) -> str:
    """One line over a folded table: how many checkpoints, and where the funnel holds."""
    ok = [row for row in rows if row.ok]
    confirmed = [row for row in ok if row.funnel_confirmed]
    parts = [f"{len(rows)} checkpoint{'s' if len(rows) != 1 else ''}"]
    failed = len(rows) - len(ok)
    if failed:
        parts.append(f"{failed} failed")
    parts.append(
        f"funnel (seed test) at {len(confirmed)} of {len(ok)}"
        + (f", from step {confirmed[0].step:,}" if confirmed else "")
    )
    robust = [row for row in ok if row.robust_funnel_confirmed]
    if any(row.robust_funnel_confirmed is not None for row in ok):
        parts.append(f"robust at {len(robust)}")
    name = f"<b>{html.escape(base_label(base))}</b>: " if base is not None else ""
    return f"{name}{', '.join(parts)} (click for the table)"


def page_figures(comparison) -> dict[str, go.Figure]:
    """The figures of compare.html by name, as ``render_html`` draws them (the export hook:
    ``plots.export_figures`` writes them as PNG, SVG and PDF for ``--png``)."""
    figures: dict[str, go.Figure] = {}
    if comparison.ok:
        figures |= {
            "compare-depth": comparison.figure(),
            "compare-heatmap-attn": comparison.heatmap("attn"),
            "compare-heatmap-mlp": comparison.heatmap("mlp"),
        }
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
    sections = []
    settings = comparison.settings
    checkpoints = is_checkpoint_sweep(comparison.rows)
    groups = model_groups(comparison.rows)
    if checkpoints:
        counted = f"checkpoint{'s' if len(comparison.rows) != 1 else ''}" + (
            f" of {len(groups)} models" if len(groups) > 1 else ""
        )
        heading = "checkpoints" + (f" of {len(groups)} models" if len(groups) > 1 else "")
    else:
        counted = what_is_compared(comparison.rows)
        counted = counted[:-1] if len(comparison.rows) == 1 else counted
        heading = what_is_compared(comparison.ok)
    meta = (
        f"{len(comparison.rows)} {counted}, {len(comparison.failed)} failed · {html.escape(subtitle(comparison))}"
        f" · dtype {html.escape(str(settings.get('dtype', '?')))} on {html.escape(str(settings.get('device', '?')))}"
        f" · prompts sha256 {html.escape(str(settings.get('prompts_sha256', '?'))[:12])}…"
    )
    div = figure_div
    if checkpoints:
        if comparison.checkpoint_models:
            sections += ["<h2>Gains against training step</h2>", div(comparison.training_figure())]
        if comparison.ok:
            sections += [
                "<h2>By depth</h2>",
                div(comparison.figure()),
                div(comparison.heatmap("attn")),
                div(comparison.heatmap("mlp")),
            ]
        sections.append("<h2>Verdicts</h2>")
        for base, rows in groups:
            sections.append(
                f'<details class="verdicts"><summary>{_verdict_summary(base, rows)}</summary>\n'
                f"{table_html(comparison, rows)}\n</details>"
            )
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
    body = f'<h1>Funnel Model across {heading}</h1>\n<p class="meta">{meta}</p>\n' + "\n".join(sections)
    return page_html("funnel_tl — comparison", body, plotlyjs, style=_STYLE)
