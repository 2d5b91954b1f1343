"""The readings beside the seed's numbers: what a headline is made of, in results.json and in words.

On a real model the seed's headline numbers can each rest on something the seed output never
names (measured on SmolLM2-135M, docs/reading.md):

- **position 0**: the attention sink's massive activations make one token's norm 100× the
  others', and a layer's ratio of means follows it (``GainResult.without_first_position``);
- **the definition**: the seed divides by the normalized input u (whose norm the norm's weights
  and √d set), the residual definition by the stream x; the same output reads as expansion by one
  and as contraction by the other (``GainResult.other_definition``);
- **the post-norm** of sandwich and post-norm blocks (Gemma 2/3, OLMo 2): what the stream receives
  is normalized again, so a seed gain is the module's own gain times the post-norm's
  (``GainResult.module_gains``, ``post_norm_gains``);
- **the seed's cumulative gain** multiplies sublayer gains with a denominator each: the stream's
  real growth is ``GainResult.block_cumulative_gains``.

``add_readings`` writes them into results.json (keys listed in ``funnel_tl.results``);
``changes``, ``definition_lines`` and ``post_norm_lines`` are what ``funnel.format_analysis`` prints.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from funnel_tl.analysis.criteria import not_testable
from funnel_tl.analysis.funnel import funnel_test, summarize
from funnel_tl.analysis.robust import robust_funnel_test
from funnel_tl.components import KEYS
from funnel_tl.measure.reads import definition_roles

# Below this factor between a headline with and without position 0, the analysis does not call it a change.
NOTABLE_FACTOR = 1.5
# Below this factor a change is said as a percentage: rounded to two digits, x1.04 reads "x1".
PERCENT_BELOW = 1.1
WITHOUT = "without position 0"


def _floats(values) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=np.float64)]


def headlines(result) -> dict[str, Any]:
    """The headline numbers of a result: every component's extremes and counts, and the verdict."""
    block: dict[str, Any] = {}
    for component in ("attn", "mlp", "combined", "block"):
        gains = result.combined_gains if component == "combined" else result.gains(component)
        summary = summarize(gains, result.layers)
        block[KEYS[component]] = {
            "min_gain": summary.min_gain,
            "L_star_min": summary.min_layer,
            "max_gain": summary.max_gain,
            "L_star_max": summary.max_layer,
            "n_contracting": summary.n_contracting,
            "n_expanding": summary.n_expanding,
        }
    if result.layers[-1] == result.n_layers - 1:
        block["mlp"]["last_layer_gain"] = float(result.mlp_gains[-1])
    testable = not_testable(result) is None
    block["funnel_test"] = funnel_test(result).to_dict() if testable else None
    if testable and result.intervals is not None:
        block["robust_funnel_test"] = robust_funnel_test(result).to_dict()
    return block


def add_readings(result, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (results.json of ``result``) with the readings' keys added; the seed's keys untouched."""
    if result.stream_layers:
        data["block"]["cumulative_gains"] = _floats(result.block_cumulative_gains)
        if result.block_cumulative_intervals is not None:
            data["block"]["cumulative_intervals"] = result.block_cumulative_intervals.tolist()
    for component in ("attn", "mlp", "block"):
        median = result.median_gains(component)
        if median is not None:
            data[KEYS[component]]["median_gains"] = _floats(median)
    if result.token_histograms is not None:
        data["token_histograms"] = result.token_histograms.to_dict()
    if result.reads is None:
        return data
    for component in ("attn", "mlp"):
        module = result.module_gains(component)
        if module is not None:
            data[KEYS[component]]["module_gains"] = _floats(module)
            data[KEYS[component]]["post_norm_gains"] = _floats(result.post_norm_gains(component))
    without = result.without_first_position
    if without is not None:
        for component in ("attn", "mlp", "block", "combined"):
            data[KEYS[component]]["gains_without_first"] = _floats(result.gains_without_first(component))
        if without.stream_layers:
            data["block"]["cumulative_gains_without_first"] = _floats(without.block_cumulative_gains)
            if without.block_cumulative_intervals is not None:
                data["block"]["cumulative_intervals_without_first"] = without.block_cumulative_intervals.tolist()
        data["without_first"] = {
            "k": 1,
            "n_prompts": int(without.n_prompts),
            "n_tokens": int(without.n_tokens.sum()),
            **headlines(without),
        }
        before, after = data.get("funnel_test"), data["without_first"]["funnel_test"]
        if before is not None and after is not None:
            data["without_first"]["changed_criteria"] = [key for key in before if before[key] != after[key]]
    other = result.other_definition
    if other is not None:
        block = {"definition": other.definition, **headlines(other)}
        for component in ("attn", "mlp"):
            block[KEYS[component]]["gains"] = _floats(other.gains(component))
            without_other = other.without_first_position
            if without_other is not None:
                block[KEYS[component]]["gains_without_first"] = _floats(without_other.gains(component))
        if other.without_first_position is not None:
            block["without_first"] = headlines(other.without_first_position)
        block["input_norms"] = input_norms(result)
        data["other_definition"] = block
    roles = definition_roles(result.definition, result.parallel_blocks)
    written = {role: None for pair in roles.values() for role in pair}
    data["per_prompt"]["reads"] = result.reads.to_dict(written)
    return data


def input_norms(result) -> dict[str, dict[str, list]]:
    """``{"attention": {"seed": [layer], "residual": [layer]}, "mlp": ...}``: the mean input norm
    each definition divides by (mean over prompts of each prompt's mean norm)."""
    norms: dict[str, dict[str, list[float | None]]] = {}
    for component in ("attn", "mlp"):
        norms[KEYS[component]] = {}
        for definition in ("seed", "residual"):
            _, role = definition_roles(definition, result.parallel_blocks)[component]
            values = result.mean_input_norms(role)
            if values is not None:
                norms[KEYS[component]][definition] = _floats(values)
    return norms


# ---- in words ------------------------------------------------------------------------------------
def factor(before: float, after: float) -> str:
    """How ``after`` relates to ``before`` in words: ``"x50 smaller"``, ``"x2.1 larger"``; a
    change under ``PERCENT_BELOW`` as a percentage of ``before``, which a rounded factor would
    call ``"x1"``.

    >>> factor(485.0, 9.6), factor(1.0, 2.5), factor(1.084, 1.092), factor(3.396, 3.287)
    ('x51 smaller', 'x2.5 larger', '0.74% larger', '3.2% smaller')
    """
    if before <= 0 or after <= 0:
        return "changed sign"
    if after == before:
        return "unchanged"
    direction = "smaller" if after < before else "larger"
    ratio = before / after if after < before else after / before
    if ratio < PERCENT_BELOW:
        return f"{100 * abs(after - before) / before:.2g}% {direction}"
    return f"x{ratio:.2g} {direction}"


def notable(before: float, after: float) -> bool:
    """Whether a gain moved by ``NOTABLE_FACTOR`` or more between two readings."""
    if before <= 0 or after <= 0:
        return before != after
    return max(before / after, after / before) >= NOTABLE_FACTOR


def extreme_change(label: str, kind: str, result, without, component: str) -> str | None:
    """A line saying how the ``kind`` (``"min"``/``"max"``) ``component`` gain moves without
    position 0, when its layer changes or it moves by ``NOTABLE_FACTOR``; None otherwise."""

    def values(of):
        return of.combined_gains if component == "combined" else of.gains(component)

    before, after = summarize(values(result), result.layers), summarize(values(without), without.layers)
    layer_before = getattr(before, f"{kind}_layer")
    layer_after = getattr(after, f"{kind}_layer")
    gain_before, gain_after = getattr(before, f"{kind}_gain"), getattr(after, f"{kind}_gain")
    row = result.layers.index(layer_before)
    own_after = float(values(without)[row])  # the headline layer's own gain without position 0
    word = "largest" if kind == "max" else "smallest"
    if layer_before != layer_after:
        return (
            f"  {WITHOUT} the {word} {label} gain is L{layer_after}'s ({gain_after:.4g}), not L{layer_before}'s; "
            f"L{layer_before}'s own gain is {own_after:.4g}, {factor(gain_before, own_after)} than with it"
        )
    if notable(gain_before, gain_after):
        return (
            f"  {WITHOUT} L{layer_before}'s {label} gain is {gain_after:.4g}, {factor(gain_before, gain_after)}: "
            "position 0 makes much of it"
        )
    return None


CRITERIA = {
    "attention_always_contracts": "1. attention always contracts",
    "mlp_mostly_contracts": "2. the MLP mostly contracts",
    "last_layer_expands": "3. the last layer's MLP expands",
    "last_layer_is_max": "4. the last layer has the max MLP gain",
    "funnel_confirmed": "the verdict",
}


def changed_criteria(before, after) -> list[str]:
    """The criteria (``FunnelTest``/``RobustFunnelTest``) that differ, in words with both values."""
    first, second = before.to_dict(), after.to_dict()
    return [f"{CRITERIA[key]} ({first[key]} -> {second[key]})" for key in CRITERIA if first[key] != second[key]]


def _span(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{np.nanmin(values):.3g}-{np.nanmax(values):.3g}"


def definition_lines(result) -> list[str]:
    """Two lines on why the two definitions read one forward differently, with the input norms."""
    norms = input_norms(result)
    if any(len(norms[key]) < 2 for key in ("attention", "mlp")):
        return []
    if result.provenance.get("reads", {}).get("block_shape") == "post-norm":
        return [
            "The two definitions coincide here: post-norm blocks have no norm before a sublayer, so each reads "
            "the stream itself (u = x)."
        ]
    u = np.concatenate([norms["attention"]["seed"], norms["mlp"]["seed"]])
    x = np.concatenate([norms["attention"]["residual"], norms["mlp"]["residual"]])
    ratio = x / u
    without = result.without_first_position if result.drop_first == 0 else None
    if without is not None:  # position 0's massive norm dominates a prompt's mean ||x||: the typical token's too
        later = input_norms(without)
        x_later = np.concatenate([later["attention"]["residual"], later["mlp"]["residual"]])
        typical = f"; {WITHOUT} {_span(x_later)}"
    else:
        typical = ""
    return [
        f"Why they differ: the seed divides by what the module receives, the normalized input u, whose norm the "
        f"norm's weights and sqrt(d_model) = {np.sqrt(result.d_model):.3g} set (mean ||u|| {_span(u)} over the "
        "layers here); "
        f"the residual definition divides by the stream x (mean ||x|| {_span(x)}{typical}).",
        f"So a seed gain is about ||x|| / ||u|| = x{np.min(ratio):.2g} to x{np.max(ratio):.2g} (median "
        f"x{np.median(ratio):.2g}) times the residual one: {_flips(result)} of the {2 * len(result.layers)} "
        "sublayers expand by one definition and contract by the other; both are true, of different denominators.",
    ]


def _flips(result) -> int:
    """How many sublayers (attn and MLP of every layer) one definition calls expanding, the other contracting."""
    other = result.other_definition
    return int(sum(np.sum((result.gains(c) >= 1) != (other.gains(c) >= 1)) for c in ("attn", "mlp")))


def post_norm_lines(result) -> list[str]:
    """How much of each seed gain a post-norm supplies (sandwich and post-norm blocks); [] otherwise."""
    lines = []
    for component, label in (("attn", "Attention"), ("mlp", "MLP")):
        module, post = result.module_gains(component), result.post_norm_gains(component)
        if module is None:
            continue
        seed = result.in_definition("seed").gains(component) if result.definition != "seed" else result.gains(component)
        lines += [
            f"{label}: seed gain {_span(seed)} = its module's own gain (output before the post-norm over its input) "
            f"{_span(module)}, times the post-norm's gain {_span(post)}",
            "  post-norm factor per layer: " + " ".join(f"{value:.3g}" for value in post),
            "  module gain per layer:      " + " ".join(f"{value:.3g}" for value in module),
        ]
    return lines
