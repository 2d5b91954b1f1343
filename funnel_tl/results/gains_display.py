"""How a ``GainResult`` shows itself: a one-line repr without its per-prompt arrays, and a small
per-layer table in notebooks.

>>> brief([7.9959, 1.0839, 0.25])
'[7.996, 1.084, 0.25]'
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from funnel_tl.analysis.funnel import funnel_test

if TYPE_CHECKING:
    from funnel_tl.results.gains import GainResult


def result_repr(result: GainResult) -> str:
    """``repr(result)``: the fields of ``repr_fields``, no prompts nor per-prompt arrays (they would
    flood a notebook cell)."""
    return f"GainResult({', '.join(f'{key}={value}' for key, value in repr_fields(result).items())})"


def result_html(result: GainResult) -> str:
    """``result._repr_html_()``: one row per layer, gains and (when drawn) intervals, under the short repr."""
    rows = []
    for row, layer in enumerate(result.layers or ()):
        cells = "".join(f"<td>{gain_cell(result, c, row)}</td>" for c in ("attn", "mlp", "block"))
        rows.append(f"<tr><td>{layer}</td>{cells}</tr>")
    summary = ", ".join(f"{key}={html.escape(str(value))}" for key, value in repr_fields(result, short=True).items())
    return (
        f"<div><code>GainResult({summary})</code><table><thead><tr><th>layer</th><th>attention</th>"
        f"<th>MLP</th><th>block</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def repr_fields(result: GainResult, short: bool = False) -> dict[str, str]:
    """The repr's fields, each as it reads there; ``short`` (the notebook table's) leaves the gains out."""
    summary = {"model": repr(result.model), "definition": repr(result.definition), "n_layers": str(result.n_layers)}
    if not result.all_layers:
        summary["layers"] = repr(result.layer_spans)
    summary |= {"n_prompts": str(result.n_prompts), "n_tokens": str(int(result.n_tokens.sum()))}
    if result.drop_first:
        summary["drop_first"] = str(result.drop_first)
    if result.intervals is not None:
        summary["intervals"] = f"'{100 * result.intervals.confidence:g}%, {result.intervals.n_resamples} resamples'"
    if not short:
        for component in ("attn", "mlp"):
            summary[f"{component}_gains"] = brief(result.gains(component))
    summary["funnel_confirmed"] = str(funnel_test(result).funnel_confirmed) if result.all_layers else "'not testable'"
    return summary


def brief(values, most: int = 12) -> str:
    """Gains in a repr: every layer up to ``most`` layers, else the first and last few.

    Four significant digits: three rounded 7.996 to ``8``, which reads as an exact gain.
    """
    shown = [f"{v:.4g}" for v in values]
    if len(shown) > most:
        shown = shown[:4] + ["…"] + shown[-4:]
    return "[" + ", ".join(shown) + "]"


def gain_cell(result: GainResult, component: str, row: int) -> str:
    """One cell of the notebook table: the gain of ``component`` at ``row`` (a position in
    ``result.layers``) and, when drawn, its interval."""
    text = f"{result.gains(component)[row]:.4g}"
    if result.intervals is not None:
        low, high = result.intervals.of(component)[row]
        text += f" [{low:.3g}, {high:.3g}]"
    return text
