"""The Funnel Model hypothesis test and the seed notebook's printed analysis.

The hypothesis (from Pythia-1.4B): attention contracts in every layer, the MLP contracts in
nearly all, and only a late MLP expands. The test, the counts and the reference numbers are the
seed notebook's, criterion for criterion.

The verdicts are about every layer ("attention contracts in *every* layer", "the *last* MLP
expands"), so a result measured on some layers only (``measure_gains(..., layers=...)``) is not
testable: ``funnel_test`` and ``stats.robust_funnel_test`` refuse it with the reason
``not_testable`` gives, which results.json (``"not_testable"``), the printed analysis and the
figure's subtitle show in place of the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .criteria import (MLP_EXPANDING_ALLOWED, mlp_expanding_allowed, not_testable, require_all_layers,  # noqa: F401
                       seed_rule_cannot_fail)
from .outputs import short_name
from .prompts import dropped_phrase

# Below this many prompts the printed robust verdict carries a caveat. The t intervals cover what
# they claim from 8 prompts on (stats' docstring), but a handful of prompts gives wide intervals
# and can hold none of a rare kind of prompt that moves a layer's mean; a percentile bootstrap
# over so few also runs narrow.
FEW_PROMPTS = 20
# Dominated layers printed by name; the rest are counted (results.json lists them all).
DOMINANT_SHOWN = 6

# Measured on Pythia-1.4B by the seed notebook's method (definition="seed"), copied from it.
PYTHIA_1_4B_REFERENCE = {
    "n_layers": 24,
    "attn_min_gain": 0.083,
    "attn_max_gain": 0.527,
    "attn_contracting": 24,
    "mlp_min_gain": 0.261,
    "mlp_max_gain": 3.604,
    "mlp_contracting": 22,
    "mlp_expanding": 2,
    "last_layer_mlp_gain": 3.604,
    "combined_max_gain": 1.338,
}


@dataclass(frozen=True)
class LayerSummary:
    """Counts and extremes of one component's per-layer gains (a gain < 1 contracts)."""

    n_contracting: int
    n_expanding: int
    min_gain: float
    min_layer: int
    max_gain: float
    max_layer: int


def summarize(gains, layers=None) -> LayerSummary:
    """``layers``: the true index of each gain's layer (a result's ``layers``); default 0, 1, ..."""
    gains = np.asarray(gains, dtype=np.float64)
    layers = np.arange(len(gains)) if layers is None else np.asarray(layers)
    return LayerSummary(
        n_contracting=int(np.sum(gains < 1)), n_expanding=int(np.sum(gains >= 1)),
        min_gain=float(gains.min()), min_layer=int(layers[gains.argmin()]),
        max_gain=float(gains.max()), max_layer=int(layers[gains.argmax()]),
    )


@dataclass(frozen=True)
class FunnelTest:
    """The seed's four criteria and its verdict (the fourth is reported, not required)."""

    attention_always_contracts: bool
    mlp_mostly_contracts: bool
    last_layer_expands: bool
    last_layer_is_max: bool
    funnel_confirmed: bool

    def to_dict(self) -> dict[str, bool]:
        return {key: bool(value) for key, value in asdict(self).items()}


def funnel_test(result) -> FunnelTest:
    """Test the Funnel Model on a ``GainResult`` exactly as the seed notebook does.

    Criterion 2 is the seed's literal ``mlp_contracting >= n_layers - 3``, which cannot fail for a
    model of three layers or fewer (``format_analysis`` says so); the robust verdict
    (``funnel_tl.stats``) scales the allowance with depth (``funnel_tl.criteria``). A result
    measured on some layers only is refused (FunnelError; see ``not_testable``).
    """
    require_all_layers(result)
    n_layers = result.n_layers
    attn, mlp = summarize(result.attn_gains), summarize(result.mlp_gains)
    attention_contracts = attn.n_contracting == n_layers
    mlp_mostly = mlp.n_contracting >= n_layers - MLP_EXPANDING_ALLOWED
    last_expands = bool(result.mlp_gains[-1] > 1.0)
    return FunnelTest(
        attention_always_contracts=attention_contracts,
        mlp_mostly_contracts=mlp_mostly,
        last_layer_expands=last_expands,
        last_layer_is_max=mlp.max_layer == n_layers - 1,
        funnel_confirmed=attention_contracts and mlp_mostly and last_expands,
    )


def comparison_1_4b(result) -> dict[str, bool]:
    """The seed's ``comparison_1_4b`` block: does the pattern match Pythia-1.4B's?"""
    require_all_layers(result, "the Pythia-1.4B comparison")
    attn = summarize(result.attn_gains)
    return {
        "attn_contraction_match": bool(abs(100 * attn.n_contracting / result.n_layers - 100) < 5),
        "mlp_expansion_in_last": bool(result.mlp_gains[-1] > 1.0),
        "pattern_match": funnel_test(result).funnel_confirmed,
    }


def format_analysis(result) -> str:
    """The seed notebook's printed analysis, hypothesis test and Pythia-1.4B comparison.

    Measured on some layers only: the counts are over those layers, the layers named are true
    indices, and the hypothesis test and comparison say why they are not given (``not_testable``).
    """
    n = len(result.layers)
    attn, mlp, combined = (summarize(gains, result.layers) for gains in
                           (result.attn_gains, result.mlp_gains, result.combined_gains))
    why_not = not_testable(result)
    ref = PYTHIA_1_4B_REFERENCE
    rule = "=" * 60
    lines = [
        rule,
        f"{short_name(result.model)}: FUNNEL MODEL ANALYSIS",
        f"definition={result.definition}, {result.n_prompts} prompts, {int(result.n_tokens.sum())} tokens"
        + (f", {dropped_phrase(result.drop_first)}" if result.drop_first else ""),
        *([f"layers {result.layer_spans} of {result.n_layers} measured: counts are over these {n}"] if why_not else []),
        rule,
    ]
    for title, summary in (("ATTENTION", attn), ("MLP/FFN", mlp)):
        lines += [
            f"\n--- {title} ---",
            f"Contracting layers: {summary.n_contracting}/{n} ({100 * summary.n_contracting / n:.1f}%)",
            f"Expanding layers:   {summary.n_expanding}/{n} ({100 * summary.n_expanding / n:.1f}%)",
            f"Min gain: {summary.min_gain:.4f} (Layer {summary.min_layer})",
            f"Max gain: {summary.max_gain:.4f} (Layer {summary.max_layer})",
        ]
    lines += [
        "\n--- COMBINED (Attn x MLP) ---",
        f"Net contracting: {combined.n_contracting}/{n} ({100 * combined.n_contracting / n:.1f}%)",
        f"Net expanding:   {combined.n_expanding}/{n} ({100 * combined.n_expanding / n:.1f}%)",
        f"Max combined gain: {combined.max_gain:.4f} (Layer {combined.max_layer})",
        "\n--- BLOCK (||resid_post|| / ||resid_pre||) ---",
        ("Gains: " if not why_not else f"Gains (layers {result.layer_spans}): ")
        + " ".join(f"{g:.3f}" for g in result.block_gains),
        "\n" + rule,
    ]
    if why_not:
        return "\n".join(lines + [
            "HYPOTHESIS TEST: Funnel Model Universality",
            rule,
            f">>> FUNNEL MODEL: {why_not} <<<",
            "The test, its robust version and the Pythia-1.4B comparison need every layer from 0:",
            "measure without --layers (layers=None) for them.",
        ])
    test = funnel_test(result)
    # Value and layer right-aligned as one cell (padding the layer alone printed `7.996  (L0)`).
    reference_max = f"{ref['mlp_max_gain']:.3f} (L{ref['n_layers'] - 1})"
    own_max = f"{mlp.max_gain:.3f} (L{mlp.max_layer})"
    lines += [
        "HYPOTHESIS TEST: Funnel Model Universality",
        rule,
        f"1. Attention ALWAYS contracts: {test.attention_always_contracts} ({attn.n_contracting}/{n})",
        f"2. MLP mostly contracts: {test.mlp_mostly_contracts} ({mlp.n_contracting}/{n})"
        + (f"  [cannot fail at {n} layers: the seed allows {MLP_EXPANDING_ALLOWED} expanding]"
           if seed_rule_cannot_fail(n) else ""),
        f"3. Last layer MLP expands: {test.last_layer_expands} (gain={result.mlp_gains[-1]:.3f})",
        f"4. Last layer has MAX MLP gain: {test.last_layer_is_max} (L{mlp.max_layer})",
        f"\n>>> FUNNEL MODEL CONFIRMED: {test.funnel_confirmed} <<<",
        *_robust_lines(result, rule),
        "\n" + rule,
        "CROSS-MODEL COMPARISON"
        + ("" if result.definition == "seed" else " (reference measured with definition=seed)"),
        rule,
        f"{'Metric':<30} {'Pythia-1.4B':>15} {_short(result.model):>15}",
        "-" * 60,
        f"{'Layers':<30} {ref['n_layers']:>15} {n:>15}",
        f"{'Attn contracting %':<30} {100 * ref['attn_contracting'] / ref['n_layers']:>14.1f}% {100 * attn.n_contracting / n:>14.1f}%",
        f"{'Attn min gain':<30} {ref['attn_min_gain']:>15.3f} {attn.min_gain:>15.3f}",
        f"{'Attn max gain':<30} {ref['attn_max_gain']:>15.3f} {attn.max_gain:>15.3f}",
        f"{'MLP contracting %':<30} {100 * ref['mlp_contracting'] / ref['n_layers']:>14.1f}% {100 * mlp.n_contracting / n:>14.1f}%",
        f"{'MLP min gain':<30} {ref['mlp_min_gain']:>15.3f} {mlp.min_gain:>15.3f}",
        f"{'MLP max gain (layer)':<30} {reference_max:>15} {own_max:>15}",
        f"{'MLP last-layer gain':<30} {ref['last_layer_mlp_gain']:>15.3f} {result.mlp_gains[-1]:>15.3f}",
        f"{'Combined max gain':<30} {ref['combined_max_gain']:>15.3f} {combined.max_gain:>15.3f}",
    ]
    return "\n".join(lines)


def _robust_lines(result, rule: str) -> list[str]:
    """The robust verdict (intervals wholly on one side of 1), when the result carries intervals."""
    intervals = getattr(result, "intervals", None)
    if intervals is None:
        return []
    from .stats import robust_funnel_test

    robust = robust_funnel_test(result)
    n = result.n_layers
    lo, hi = intervals.mlp[-1]
    if intervals.method == "t":
        caveat = (f"few prompts: t intervals cover what they claim (94-95% for 95%, measured on SmolLM2-135M from "
                  f"8 prompts on), but "
                  f"{result.n_prompts} make them wide and may hold none of a rare kind of prompt that moves a layer's gain; for a firmer "
                  "verdict measure more: --prompts varied (300 passages of varied English, offline), a prompt "
                  "file, or --dataset")
    else:
        caveat = (f"few prompts: a percentile bootstrap over {result.n_prompts} runs narrow (it covers ~88% for a "
                  "95% interval at 8 prompts): prefer the default t intervals, and measure more prompts "
                  "(--prompts varied, a prompt file, or --dataset)")
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
        f"depth-scaled: at most {mlp_expanding_allowed(n)} of {n} may fail, one eighth as the seed's 3 of 24, at least 1)",
        f"3. Last layer MLP expands: {robust.last_layer_expands} (interval [{lo:.3f}, {hi:.3f}])",
        f"4. Last layer has MAX MLP gain: {robust.last_layer_is_max} (its interval must lie above every other layer's)",
        f"\n>>> FUNNEL MODEL CONFIRMED (robust): {robust.funnel_confirmed} <<<",
        *_dominance_lines(result, intervals.confidence),
    ]
    return lines


def _dominance_lines(result, confidence: float) -> list[str]:
    """The layers whose gain one prompt dominates (``stats.dominant_prompts``), when there are any."""
    from .stats import dominant_prompts

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
