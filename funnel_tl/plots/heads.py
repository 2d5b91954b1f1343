"""Figures of a ``HeadResult``: the layer × head heatmap and the heads page (heads.html).

Gains are coloured as ``compare.html`` colours them: log10 of the gain on a diverging scale
centred at 1, symmetric so that equal ratios get equal colours either side. For a head, red means
the head alone writes more than its layer's attention reads, blue less; it does not mean the layer
expands or contracts: the layer's gain is the norm of its heads' sum, and heads add up (and
partly cancel), so a layer of blue heads can expand. Projection shares are signed and diverge at 0;
norms and norm shares are sequential (no neutral value).
"""

from __future__ import annotations

import html

import numpy as np

from funnel_tl.errors import FunnelError
from funnel_tl.prompts.tokens import dropped_phrase
from funnel_tl.results.folders import short_name
from funnel_tl.results.head_names import VALUES, label, norm_decimals, shown_heads


def _subtitle(result) -> str:
    dropped = f" · {dropped_phrase(result.drop_first)}" if result.drop_first else ""
    before = f" · read before the post-norm ({result.read_at}): module gains" if result.read_at else ""
    return (
        f"definition={result.definition} · {result.n_prompts} prompts, "
        f"{int(result.n_tokens.sum())} tokens{dropped}{before}"
    )


# A head's gain is its own output over the layer's input: below 1 is not a contracting layer.
_GAIN_LEGEND = (
    "<br>red: the head alone writes more than its layer's attention reads, blue: less; "
    "heads add up, so blue heads can still make a layer expand"
)


def plot_heads(result, value: str = "gain", title: str | None = None):
    """A layer × head heatmap of ``value`` (``"gain"``, ``"norm"``, ``"norm_share"`` or
    ``"projection_share"``), every statistic of a head in its hover."""
    import plotly.graph_objects as go

    # Imported on use: keeps plotly out of importing this module.
    from funnel_tl.plots.style import DIVERGING, gain_colorbar, log_reach, one_two_five, ticks_within

    if value not in VALUES:
        raise FunnelError(f"unknown heatmap value {value!r}: choose {', '.join(VALUES)}")
    shown = getattr(result, VALUES[value])  # [layer, head]
    group = result.group_size  # query heads per key/value head (GQA), or None
    hover = [
        [
            f"<b>{label(layer, head)}</b><br>gain {result.head_gains[row, head]:.4f} "
            f"(layer attn gain {result.attn_gains[row]:.4f})<br>mean norm {result.head_norms[row, head]:.4g}"
            f"<br>norm share {result.norm_shares[row, head]:.3f}<br>projection share "
            f"{result.projection_shares[row, head]:.3f}" + (f"<br>key/value head {head // group}" if group else "")
            for head in range(result.n_heads)
        ]
        for row, layer in enumerate(result.layers)
    ]
    name = value.replace("_", " ")
    colour: dict = {"colorbar": {"title": {"text": name}}}
    z = shown
    if value == "gain":
        # log10 so that 0.5 and 2 sit equally far from the neutral 1; a gain of 0 (a head that
        # writes nothing) is drawn at the smallest positive one.
        positive = shown[shown > 0]
        floor = float(positive.min()) if positive.size else 1.0
        z = np.log10(np.maximum(shown, floor))
        reach = log_reach(z, 0.3)
        # 1-2-5 per decade: gains of heads span one to three decades.
        ticks = ticks_within(reach, one_two_five(-4, 3))
        colour = {
            "colorscale": DIVERGING,
            "zmid": 0,
            "zmin": -reach,
            "zmax": reach,
            "colorbar": gain_colorbar(ticks, title={"text": "head gain<br>(log scale)"}),
        }
    elif value == "projection_share":
        colour |= {"colorscale": "RdBu", "zmid": 0}
    else:
        colour |= {"colorscale": "Viridis"}
    figure = go.Figure(
        go.Heatmap(z=z, x=list(range(result.n_heads)), y=list(result.layers), text=hover, hoverinfo="text", **colour)
    )
    heading = title or f"<b>{html.escape(short_name(result.model))}</b>: per-head {name}"
    top_margin = 110 if value == "gain" else 90
    figure.update_layout(
        title=dict(
            text=f"{heading}<br><sup>{_subtitle(result)}" + (_GAIN_LEGEND if value == "gain" else "") + "</sup>",
            x=0.5,
            xanchor="center",
        ),
        xaxis={"title": "head", "dtick": 1 if result.n_heads <= 32 else None},
        yaxis={"title": "layer", "autorange": "reversed", "type": "category"},
        template="plotly_white",
        font=dict(size=13),
        margin=dict(t=top_margin + (24 if group else 0)),
        height=max(360, 160 + 28 * len(result.layers)),
    )
    if group:
        _group_by_key_value_head(figure, result, group)
    return figure


def _group_by_key_value_head(figure, result, group: int) -> None:
    """Grouped-query attention: a white rule between the query heads of consecutive key/value
    heads, and each group named above the map (``kv 0``, ``kv 1``, ...)."""
    for start in range(group, result.n_heads, group):
        figure.add_vline(x=start - 0.5, line=dict(color="white", width=4))
    for kv in range(result.n_key_value_heads):
        figure.add_annotation(
            x=kv * group + (group - 1) / 2,
            y=1,
            yref="paper",
            yanchor="bottom",
            showarrow=False,
            text=f"kv {kv}: heads {kv * group}–{(kv + 1) * group - 1}",
            font=dict(size=12),
        )
    figure.update_xaxes(
        title_text=f"query head ({result.n_heads} heads over {result.n_key_value_heads} key/value heads, {group} each)"
    )


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 4px; } h2 { font-size: 1.15em; margin-top: 28px; }
p.meta { color: #555; margin-top: 0; max-width: 70em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th { background: #f4f4f4; }
"""


def head_figures(result, k: int = 20, title: str | None = None) -> dict:
    """The figures of heads.html by name (``plots.export_figures`` writes them as images): the
    gain heatmap (titled ``title``, or with the model's name), and with by_position where in the
    sequence the top ``k`` heads write."""
    figures = {"heads": plot_heads(result, title=title)}
    if getattr(result, "positions", None) is not None:
        # Imported on use: keeps plotly out of importing this module.
        from funnel_tl.plots.positions import plot_head_positions

        figures["heads-positions"] = plot_head_positions(result, k=k)
    return figures


def heads_page(result, k: int = 20, plotlyjs: str | bool = True) -> str:
    """heads.html: the gain heatmap and the top-``k`` heads table.

    ``plotlyjs``: True embeds plotly.js; a string is the relative path of a shared plotly.min.js.
    The page heading names the model once; the figure carries only the settings line.
    """
    # Imported on use: keeps plotly out of importing this module.
    from funnel_tl.plots.pages import figure_div, page_html

    figures = head_figures(result, k, title="Head gain by layer and head")
    top = result.top(k)
    shown = shown_heads(len(top), result.head_gains.size)
    decimals = norm_decimals([row.norm for row in top])  # one precision down the column
    grouped = result.group_size is not None
    rows = "\n".join(
        f"<tr><td>{rank}</td><td>{row.label}</td>"
        + (f"<td>{row.key_value_head}</td>" if grouped else "")
        + f"<td>{row.gain:.4f}</td><td>{row.norm:.{decimals}f}</td>"
        f"<td>{row.norm_share:.3f}</td><td>{row.projection_share:.3f}</td><td>{row.layer_attn_gain:.4f}</td></tr>"
        for rank, row in enumerate(top, start=1)
    )
    gqa_note = (
        f" Grouped-query attention: {result.n_heads} query heads read {result.n_key_value_heads} key/value "
        f"heads, {result.group_size} each (query head <i>h</i> reads key/value head <i>h</i> // "
        f"{result.group_size}); the map groups them and the table names each one's (kv)."
        if grouped
        else ""
    )
    name = html.escape(short_name(result.model))
    dropped = f", {dropped_phrase(result.drop_first)}" if result.drop_first else ""
    body = f"""<h1>{name}: per-head gains</h1>
<p class="meta">Definition <code>{result.definition}</code>, {result.n_prompts} prompts{dropped}.
Head gain = mean‖z<sub>i</sub> W<sub>O</sub><sup>i</sup>‖ (what head <i>i</i> alone writes) over the
layer's attention-gain denominator (the mean norm of what the attention reads): red, the head alone writes
more than the layer reads; blue, less. A head's gain below 1 does not mean its layer contracts: the layer's
attention gain (the table's last column) is the norm of all its heads' sum, and heads add up, partly cancelling, so a
layer of blue heads can expand.{gqa_note}</p>
{f'<p class="meta">{html.escape(result.relative_to())}.</p>' if result.read_at else ""}
{"".join(figure_div(figure) + chr(10) for figure in figures.values())}<h2>{shown} heads by gain</h2>
<table><tr><th>rank</th><th>head</th>{"<th>kv</th>" if grouped else ""}<th>gain</th><th>mean norm</th>
<th>norm share</th><th>projection share</th>
<th>layer attn gain</th></tr>
{rows}
</table>
<p class="meta">Mean norm: mean‖z<sub>i</sub> W<sub>O</sub><sup>i</sup>‖ over the counted tokens. Norm share:
the head's part of its layer's summed head norms. Projection share: its part of ‖a‖, the attention's
output, measured along a (the shares of a layer and its b<sub>O</sub> add up to 1). Layer attn gain: the
layer's attention gain, the norm of all its heads' sum over what it reads.</p>"""
    return page_html(f"{short_name(result.model)}: per-head gains", body, plotlyjs, style=_STYLE)
