"""The seed notebook's printed analysis, with the readings beside it (``format_analysis``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from funnel_tl.analysis.criteria import (
    MLP_EXPANDING_ALLOWED,
    mlp_expanding_allowed,
    not_testable,
    seed_rule_cannot_fail,
)
from funnel_tl.analysis.funnel import PYTHIA_1_4B_REFERENCE, funnel_test, summarize
from funnel_tl.analysis.readings import (
    WITHOUT,
    changed_criteria,
    definition_lines,
    extreme_change,
    factor,
    notable,
    post_norm_lines,
)
from funnel_tl.analysis.robust import robust_funnel_test
from funnel_tl.analysis.stats import dominant_prompts
from funnel_tl.prompts.tokens import dropped_phrase
from funnel_tl.results.folders import short_name

if TYPE_CHECKING:
    from funnel_tl.results.gains import GainResult

# Below this many prompts the printed robust verdict carries a caveat. The t intervals cover what
# they claim from 8 prompts on (stats' docstring), but a handful of prompts gives wide intervals
# and can hold none of a rare kind of prompt that moves a layer's mean; a percentile bootstrap
# over so few also runs narrow.
FEW_PROMPTS = 20
# Dominated layers printed by name; the rest are counted (results.json lists them all).
DOMINANT_SHOWN = 6


def format_analysis(result: GainResult) -> str:
    """The seed notebook's printed analysis, hypothesis test and Pythia-1.4B comparison.

    Measured on some layers only: the counts are over those layers, the layers named are true
    indices, and the hypothesis test and comparison say why they are not given (``not_testable``).

    Beside each headline number, in a column of its own, its value without position 0 (when the
    result has read sums: every default run), with a line in words wherever a headline layer or a
    verdict changes, or a headline gain moves 1.5-fold or more (``funnel_tl.analysis.readings``); then the
    other definition's verdict from the same forward and why the two differ, and, for sandwich and
    post-norm blocks, how much of each seed gain the post-norm supplies.

    Args:
        result: a ``GainResult``; with intervals (``with_intervals``) the robust verdict and the
            layers one prompt dominates are printed too.

    Returns:
        The analysis, one string of lines, as ``funnel-tl run`` and ``funnel-tl report`` print it.
    """
    layers = result.layers or ()  # the measured ones (None only before a result is built)
    n = len(layers)
    attn, mlp, combined = (
        summarize(gains, result.layers) for gains in (result.attn_gains, result.mlp_gains, result.combined_gains)
    )
    without = result.without_first_position if result.drop_first == 0 else None
    plain = (
        (
            summarize(without.attn_gains, without.layers),
            summarize(without.mlp_gains, without.layers),
            summarize(without.combined_gains, without.layers),
        )
        if without is not None
        else None
    )
    why_not = not_testable(result)
    ref = PYTHIA_1_4B_REFERENCE
    rule = "=" * 60

    def beside(line: str, other: str | None, width: int = 42) -> str:
        """The seed's line, and its value without position 0 in a column of its own (a section
        title's leading newline counts in ``width``: its callers add one)."""
        return line if other is None or without is None else f"{line:<{width}} {other}"

    def counts(number: int) -> str:
        return f"{number}/{n} ({100 * number / n:.1f}%)"

    lines = [
        rule,
        f"{short_name(result.model)}: FUNNEL MODEL ANALYSIS",
        f"definition={result.definition}, {result.n_prompts} prompts, {int(result.n_tokens.sum())} tokens"
        + (f", {dropped_phrase(result.drop_first)}" if result.drop_first else ""),
        *([f"layers {result.layer_spans} of {result.n_layers} measured: counts are over these {n}"] if why_not else []),
        rule,
    ]
    for index, (title, summary, component) in enumerate((("ATTENTION", attn, "attn"), ("MLP/FFN", mlp, "mlp"))):
        other = plain[index] if plain is not None else None
        lines += [
            beside(f"\n--- {title} ---", f"{WITHOUT}:", width=43),
            beside(
                f"Contracting layers: {counts(summary.n_contracting)}",
                counts(other.n_contracting) if other is not None else None,
            ),
            beside(
                f"Expanding layers:   {counts(summary.n_expanding)}",
                counts(other.n_expanding) if other is not None else None,
            ),
            beside(
                f"Min gain: {summary.min_gain:.4f} (Layer {summary.min_layer})",
                f"{other.min_gain:.4f} (Layer {other.min_layer})" if other is not None else None,
            ),
            beside(
                f"Max gain: {summary.max_gain:.4f} (Layer {summary.max_layer})",
                f"{other.max_gain:.4f} (Layer {other.max_layer})" if other is not None else None,
            ),
        ]
        if without is not None:
            label = "attention" if component == "attn" else "MLP"
            lines += [
                line for kind in ("min", "max") if (line := extreme_change(label, kind, result, without, component))
            ]
    other = plain[2] if plain is not None else None
    lines += [
        beside("\n--- COMBINED (Attn x MLP) ---", f"{WITHOUT}:", width=43),
        beside(
            f"Net contracting: {counts(combined.n_contracting)}",
            counts(other.n_contracting) if other is not None else None,
        ),
        beside(
            f"Net expanding:   {counts(combined.n_expanding)}", counts(other.n_expanding) if other is not None else None
        ),
        beside(
            f"Max combined gain: {combined.max_gain:.4f} (Layer {combined.max_layer})",
            f"{other.max_gain:.4f} (Layer {other.max_layer})" if other is not None else None,
        ),
    ]
    if without is not None:
        lines += [line for line in [extreme_change("combined", "max", result, without, "combined")] if line]
    lines += [
        "\n--- BLOCK (||resid_post|| / ||resid_pre||) ---",
        ("Gains: " if not why_not else f"Gains (layers {result.layer_spans}): ")
        + " ".join(f"{g:.3f}" for g in result.block_gains),
        *([f"Gains {WITHOUT}: " + " ".join(f"{g:.3f}" for g in without.block_gains)] if without is not None else []),
        *_stream_lines(result, without),
        "\n" + rule,
    ]
    if why_not:
        return "\n".join(
            lines
            + [
                "HYPOTHESIS TEST: Funnel Model Universality",
                rule,
                f">>> FUNNEL MODEL: {why_not} <<<",
                "The test, its robust version and the Pythia-1.4B comparison need every layer from 0:",
                "measure without --layers (layers=None) for them.",
            ]
        )
    test = funnel_test(result)
    plain_test = funnel_test(without) if without is not None else None
    wide = 50

    def verdict(line: str, other: str | None) -> str:
        return beside(line, other, width=wide)

    # Value and layer right-aligned as one cell (padding the layer alone printed `7.996  (L0)`).
    reference_max = f"{ref['mlp_max_gain']:.3f} (L{ref['n_layers'] - 1})"
    own_max = f"{mlp.max_gain:.3f} (L{mlp.max_layer})"
    # The column without position 0, where the result has one (plain_test, plain and without go together).
    others: list[str | None] = [None] * 4
    if plain_test is not None and plain is not None and without is not None:
        others = [
            f"{plain_test.attention_always_contracts} ({plain[0].n_contracting}/{n})",
            f"{plain_test.mlp_mostly_contracts} ({plain[1].n_contracting}/{n})",
            f"{plain_test.last_layer_expands} (gain={without.mlp_gains[-1]:.3f})",
            f"{plain_test.last_layer_is_max} (L{plain[1].max_layer})",
        ]
    lines += [
        verdict("HYPOTHESIS TEST: Funnel Model Universality", f"{WITHOUT}:"),
        rule,
        verdict(
            f"1. Attention ALWAYS contracts: {test.attention_always_contracts} ({attn.n_contracting}/{n})",
            others[0],
        ),
        verdict(
            f"2. MLP mostly contracts: {test.mlp_mostly_contracts} ({mlp.n_contracting}/{n})"
            + (
                f"  [cannot fail at {n} layers: the seed allows {MLP_EXPANDING_ALLOWED} expanding]"
                if seed_rule_cannot_fail(n)
                else ""
            ),
            others[1],
        ),
        verdict(
            f"3. Last layer MLP expands: {test.last_layer_expands} (gain={result.mlp_gains[-1]:.3f})",
            others[2],
        ),
        verdict(
            f"4. Last layer has MAX MLP gain: {test.last_layer_is_max} (L{mlp.max_layer})",
            others[3],
        ),
        f"\n>>> FUNNEL MODEL CONFIRMED: {test.funnel_confirmed} <<<"
        + (f"   ({WITHOUT}: {plain_test.funnel_confirmed})" if plain_test is not None else ""),
    ]
    if plain_test is not None and without is not None:  # the one is measured where the other is
        changed = changed_criteria(test, plain_test)
        if plain_test.funnel_confirmed != test.funnel_confirmed:
            lines.append(f">>> {WITHOUT.upper()} THE VERDICT CHANGES: {', '.join(changed)} <<<")
        elif changed:
            lines.append(f"{WITHOUT} the verdict stays, but {', '.join(changed)}")
        last, last_without = float(result.mlp_gains[-1]), float(without.mlp_gains[-1])
        if notable(last, last_without):
            lines.append(
                f"  the last layer's MLP gain is {factor(last, last_without)} {WITHOUT} "
                f"({last:.4g} -> {last_without:.4g})"
            )
    lines += [
        *_robust_lines(result, rule, without),
        "\n" + rule,
        "CROSS-MODEL COMPARISON"
        + ("" if result.definition == "seed" else " (reference measured with definition=seed)"),
        rule,
    ]
    columns = [f"{'Metric':<30} {'Pythia-1.4B':>15} {_short(result.model):>15}"]
    rows = [
        ("Layers", f"{ref['n_layers']:>15}", f"{n:>15}", f"{n:>15}"),
        (
            "Attn contracting %",
            f"{100 * ref['attn_contracting'] / ref['n_layers']:>14.1f}%",
            f"{100 * attn.n_contracting / n:>14.1f}%",
            plain and f"{100 * plain[0].n_contracting / n:>14.1f}%",
        ),
        (
            "Attn min gain",
            f"{ref['attn_min_gain']:>15.3f}",
            f"{attn.min_gain:>15.3f}",
            plain and f"{plain[0].min_gain:>15.3f}",
        ),
        (
            "Attn max gain",
            f"{ref['attn_max_gain']:>15.3f}",
            f"{attn.max_gain:>15.3f}",
            plain and f"{plain[0].max_gain:>15.3f}",
        ),
        (
            "MLP contracting %",
            f"{100 * ref['mlp_contracting'] / ref['n_layers']:>14.1f}%",
            f"{100 * mlp.n_contracting / n:>14.1f}%",
            plain and f"{100 * plain[1].n_contracting / n:>14.1f}%",
        ),
        (
            "MLP min gain",
            f"{ref['mlp_min_gain']:>15.3f}",
            f"{mlp.min_gain:>15.3f}",
            plain and f"{plain[1].min_gain:>15.3f}",
        ),
        (
            "MLP max gain (layer)",
            f"{reference_max:>15}",
            f"{own_max:>15}",
            plain and f"{f'{plain[1].max_gain:.3f} (L{plain[1].max_layer})':>15}",
        ),
        (
            "MLP last-layer gain",
            f"{ref['last_layer_mlp_gain']:>15.3f}",
            f"{result.mlp_gains[-1]:>15.3f}",
            without and f"{without.mlp_gains[-1]:>15.3f}",
        ),
        (
            "Combined max gain",
            f"{ref['combined_max_gain']:>15.3f}",
            f"{combined.max_gain:>15.3f}",
            plain and f"{plain[2].max_gain:>15.3f}",
        ),
    ]
    if without is not None:
        columns[0] += f" {'w/o position 0':>15}"
        # The seed's own max-MLP layer without position 0: what its headline is without the sink.
        row = layers.index(mlp.max_layer)
        rows.append(
            (
                f"MLP gain at L{mlp.max_layer}",
                f"{'':>15}",
                f"{float(result.mlp_gains[row]):>15.3f}",
                f"{float(without.mlp_gains[row]):>15.3f}",
            )
        )
    lines += columns + ["-" * len(columns[0])]
    for label, *cells in rows:
        shown = cells if without is not None else cells[:2]
        lines.append(f"{label:<30} " + " ".join(str(cell) for cell in shown))  # all text where shown
    lines += _other_definition_lines(result, rule)
    lines += _post_norm_section(result, rule)
    return "\n".join(lines)


def _stream_lines(result, without) -> list[str]:
    """The stream's real growth by the last layer (``block_cumulative_gains``), beside the seed's product."""
    if not result.stream_layers or not result.all_layers:
        return []
    growth = result.block_cumulative_gains
    line = (
        f"Stream growth ||resid_post_L|| / ||resid_pre_0||: x{growth[-1]:.3g} by the last layer "
        f"(largest x{growth.max():.3g}, L{int(np.argmax(growth))})"
    )
    if without is not None and without.stream_layers:
        line += f"; {WITHOUT}: x{without.block_cumulative_gains[-1]:.3g}"
    return [
        line,
        f"(the seed's cumulative attn x MLP product reaches {result.cumulative_gains[-1]:.3g}: a product of "
        "ratios with a denominator each, not the norm ratio of any activation)",
    ]


def _other_definition_lines(result, rule: str) -> list[str]:
    """The other definition's verdict from the same forward, and why the two differ."""
    other = result.other_definition
    if other is None or not other.all_layers:
        return []
    n = len(result.layers)
    pair = {result.definition: result, other.definition: other}
    seed, residual = pair["seed"], pair["residual"]
    tests = {name: funnel_test(value) for name, value in pair.items()}

    def cells(get) -> str:
        return f"{get(seed):>14} {get(residual):>14}"

    def plain(value):
        return value.without_first_position if value.drop_first == 0 else None

    lines = [
        "\n" + rule,
        f"BOTH DEFINITIONS (the same forward; this run's is {result.definition})",
        rule,
        f"{'':<32}{'seed':>14} {'residual':>14}",
        f"{'Attention contracting':<32}" + cells(lambda r: f"{summarize(r.attn_gains).n_contracting}/{n}"),
        f"{'MLP contracting':<32}" + cells(lambda r: f"{summarize(r.mlp_gains).n_contracting}/{n}"),
        f"{'Last-layer MLP gain':<32}" + cells(lambda r: f"{r.mlp_gains[-1]:.4g}"),
        f"{'MLP max gain (layer)':<32}" + cells(lambda r: f"{r.mlp_gains.max():.4g} (L{int(np.argmax(r.mlp_gains))})"),
        f"{'Funnel confirmed':<32}" + cells(lambda r: str(tests[r.definition].funnel_confirmed)),
    ]
    if plain(seed) is not None and plain(residual) is not None:
        lines.append(f"{'... ' + WITHOUT:<32}" + cells(lambda r: str(funnel_test(plain(r)).funnel_confirmed)))
    return lines + definition_lines(result)


def _post_norm_section(result, rule: str) -> list[str]:
    text = post_norm_lines(result)
    if not text:
        return []
    return [
        "\n" + rule,
        "POST-NORMS: a norm after each sublayer rescales what the stream receives",
        rule,
        "seed gain = the module's own gain x its post-norm's gain (per prompt exactly)",
        *text,
    ]


def _robust_lines(result, rule: str, without=None) -> list[str]:
    """The robust verdict (intervals wholly on one side of 1), when the result carries intervals;
    its verdict without position 0 beside it when ``without`` (that result) carries its own."""
    intervals = getattr(result, "intervals", None)
    if intervals is None:
        return []

    robust = robust_funnel_test(result)
    robust_without = (
        robust_funnel_test(without) if without is not None and getattr(without, "intervals", None) is not None else None
    )
    n = result.n_layers
    lo, hi = intervals.mlp[-1]
    if intervals.method == "t":
        caveat = (
            f"few prompts: t intervals cover what they claim (94-95% for 95%, measured on SmolLM2-135M from "
            f"8 prompts on), but "
            f"{result.n_prompts} make them wide and may hold none of a rare kind of prompt that moves a layer's "
            "gain; for a firmer "
            "verdict measure more: --prompts varied (300 passages of varied English, offline), a prompt "
            "file, or --dataset"
        )
    else:
        caveat = (
            f"few prompts: a percentile bootstrap over {result.n_prompts} runs narrow (it covers ~88% for a "
            "95% interval at 8 prompts): prefer the default t intervals, and measure more prompts "
            "(--prompts varied, a prompt file, or --dataset)"
        )
    lines = [
        "\n" + rule,
        f"ROBUST TEST: {intervals.describe(result.n_prompts)}",
        "a layer counts only when its whole interval lies on one side of 1",
        *([caveat] if result.n_prompts < FEW_PROMPTS else []),
        rule,
        f"{'':<12}{'contracting':>12}{'expanding':>11}{'undetermined':>14}",
    ]
    for key, label in (("attention", "Attention"), ("mlp", "MLP"), ("combined", "Combined"), ("block", "Block")):
        count = {kind: f"{number}/{n}" for kind, number in robust.counts[key].items()}
        lines.append(f"{label:<12}{count['n_contracting']:>12}{count['n_expanding']:>11}{count['n_undetermined']:>14}")
    lines += [
        f"1. Attention ALWAYS contracts: {robust.attention_always_contracts} "
        f"({robust.counts['attention']['n_contracting']}/{n})",
        f"2. MLP mostly contracts: {robust.mlp_mostly_contracts} ({robust.counts['mlp']['n_contracting']}/{n}; "
        f"depth-scaled: at most {mlp_expanding_allowed(n)} of {n} may fail, one eighth as the seed's 3 of 24, at "
        "least 1)",
        f"3. Last layer MLP expands: {robust.last_layer_expands} (interval [{lo:.3f}, {hi:.3f}])",
        f"4. Last layer has MAX MLP gain: {robust.last_layer_is_max} (its interval must lie above every other layer's)",
        f"\n>>> FUNNEL MODEL CONFIRMED (robust): {robust.funnel_confirmed} <<<"
        + (f"   ({WITHOUT}: {robust_without.funnel_confirmed})" if robust_without is not None else ""),
        *_dominance_lines(result, intervals.confidence),
    ]
    if robust_without is not None:
        changed = changed_criteria(robust, robust_without)
        if changed:
            lines.append(f"{WITHOUT}, robust: {', '.join(changed)}")
    return lines


def _dominance_lines(result, confidence: float) -> list[str]:
    """The layers whose gain one prompt dominates (``stats.dominant_prompts``), when there are any."""
    flags = dominant_prompts(result, confidence)
    if not flags:
        return []
    more = len(flags) - DOMINANT_SHOWN
    return [
        f"\nOne prompt dominates {len(flags)} layer gain(s): with it, the gain lies outside the interval of the "
        "other prompts, so it describes that prompt, and no interval here covers it reliably:",
        *(f"  {flag.describe()}" for flag in flags[:DOMINANT_SHOWN]),
        *([f"  and {more} more (results.json: dominant_prompts)"] if more > 0 else []),
    ]


def _short(name: str, width: int = 15) -> str:
    name = name.rstrip("/").split("/")[-1]
    return name if len(name) <= width else name[: width - 1] + "…"
