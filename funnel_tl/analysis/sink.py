"""The attention-sink reading: how much of each gain position 0 carries, and the verdict without it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from funnel_tl.analysis.funnel import funnel_test
from funnel_tl.analysis.readings import changed_criteria, factor
from funnel_tl.analysis.robust import robust_funnel_test
from funnel_tl.results.positions import SINGLE_POSITIONS


# ---- the sink's effect on the verdict -----------------------------------------------------------
@dataclass(frozen=True)
class SinkEffect:
    """The seed's hypothesis test on all positions and without the first ``k``, side by side.

    ``without`` is the result without the first ``k`` positions (``GainResult.without_first``),
    carrying the intervals its robust verdict was drawn from: the printed analysis and the figure
    read it instead of deriving it, and drawing its bootstrap, again.
    """

    k: int
    all_positions: Any  # funnel.FunnelTest
    without_first: Any  # funnel.FunnelTest
    # results.GainResult without the first k positions, with its own intervals when drawn: kept out of
    # == (numpy arrays have no truth value) and of the repr (its sums).
    without: Any = field(repr=False, compare=False)
    # The robust verdicts (robust.RobustFunnelTest) when the result carries intervals; the second
    # from intervals drawn the same way on the prompts left.
    robust_all_positions: Any = None
    robust_without_first: Any = None

    @property
    def n_prompts_left(self) -> int:
        """Prompts with a token after the first k positions."""
        return self.without.n_prompts

    @property
    def changed(self) -> list[str]:
        """Names of the criteria (and the verdict) that differ between the two."""
        before, after = self.all_positions.to_dict(), self.without_first.to_dict()
        return [key for key in before if before[key] != after[key]]

    @property
    def verdict_changes(self) -> bool:
        return self.all_positions.funnel_confirmed != self.without_first.funnel_confirmed

    @property
    def robust_verdict_changes(self) -> bool | None:
        if self.robust_all_positions is None or self.robust_without_first is None:
            return None
        return self.robust_all_positions.funnel_confirmed != self.robust_without_first.funnel_confirmed

    def to_dict(self) -> dict[str, Any]:
        robust = {}
        if self.robust_verdict_changes is not None:
            robust = {
                "robust_verdict_changes": self.robust_verdict_changes,
                "robust_funnel_test_all_positions": self.robust_all_positions.to_dict(),
                "robust_funnel_test_without_first": self.robust_without_first.to_dict(),
            }
        return {
            "k": self.k,
            "verdict_changes": self.verdict_changes,
            "changed_criteria": self.changed,
            "n_prompts_left": self.n_prompts_left,
            "funnel_test_all_positions": self.all_positions.to_dict(),
            "funnel_test_without_first": self.without_first.to_dict(),
            **robust,
        }


def sink_effect(result, k: int | None = None, without=None) -> SinkEffect:
    """Whether the funnel verdict of ``result`` (a ``GainResult`` with positions) changes without
    its first ``k`` positions (default: ``result.positions.sink_positions``).

    Each call draws the bootstrap of the result without them anew, unless ``without`` gives that
    result (without the first ``k``, with intervals when ``result`` has them); ``result.sink`` is
    this with the default ``k``, computed once per result (results.json, the printed analysis and
    positions.html all show it), reusing ``result.without_first_position`` for position 0.
    """
    k = result.positions.sink_positions if k is None else k
    robust = {}
    intervals = result.intervals
    if without is not None and without.drop_first == k and (intervals is None or without.intervals is not None):
        pass  # given (``GainResult.sink``: ``without_first_position``, its intervals drawn as these would be)
    else:
        without = result.without_first(k)
        if intervals is not None and without.n_prompts >= 2:
            # Imported on use: looked up in its own module on each call (where tests replace it).
            from funnel_tl.analysis.stats import bootstrap_intervals

            # The layers' intervals alone: the figure draws them; no page shows its position cells'.
            without = replace(
                without,
                intervals=bootstrap_intervals(
                    without,
                    n_resamples=intervals.n_resamples,
                    seed=intervals.seed,
                    confidence=intervals.confidence,
                    method=intervals.method,
                ),
            )
    if intervals is not None and without.intervals is not None:
        robust = {
            "robust_all_positions": robust_funnel_test(result),
            "robust_without_first": robust_funnel_test(without),
        }
    return SinkEffect(
        k=k, all_positions=funnel_test(result), without_first=funnel_test(without), without=without, **robust
    )


def sink_unavailable(result, k: int | None = None) -> str | None:
    """Why the verdict of ``result`` cannot be compared without its first ``k`` positions (default:
    ``result.positions.sink_positions``), in words; None when it can. They may already be dropped,
    or no prompt reaches past them (``--sink-positions 16`` on short prompts): the measurement is
    kept either way, and results.json, the analysis and positions.html say so instead."""
    positions = result.positions
    k = positions.sink_positions if k is None else k
    first = "position 0" if k == 1 else f"positions 0-{k - 1}"
    if result.drop_first >= k:
        return f"{first} already dropped (drop_first={result.drop_first}): nothing to compare"
    if k not in positions.edges[: SINGLE_POSITIONS + 1] or not positions.n_tokens[:, positions.edges[:-1] >= k].any():
        longest = int(positions.n_tokens.sum(axis=1).max()) + result.drop_first
        return (
            f"no prompt has a token after {first} (the longest has {longest} tokens): nothing to compare; give "
            f"longer prompts, or a smaller --sink-positions"
        )
    return None


def cached_sink_effect(result, k: int | None = None) -> SinkEffect:
    """``result.sink``, computed once per result, for the default ``k``; ``sink_effect`` for another."""
    if k is None or k == result.positions.sink_positions:
        return result.sink
    return sink_effect(result, k)


def format_sink_analysis(result, k: int | None = None) -> str:
    """The printed paragraph: the verdict with and without the first k positions, and the layers
    whose gain moves most, for the analysis the CLI prints after the seed's."""
    k = result.positions.sink_positions if k is None else k
    rule = "=" * 60
    first = "position 0" if k == 1 else f"positions 0-{k - 1}"
    yes = {True: "CONFIRMED", False: "not confirmed"}
    lines = ["\n" + rule, f"POSITIONS: is the verdict about {first}?", rule]
    why_not = sink_unavailable(result, k)
    if why_not:
        lines.append(why_not)
        return "\n".join(lines)
    effect = cached_sink_effect(result, k)
    without = effect.without
    positions = result.positions
    counts = positions.prompt_counts()[positions.prompt_counts() > 0]
    behind = (
        f"{counts[0]} prompts reach every one"
        if counts.min() == counts.max()
        else f"{counts.max()} prompts reach the first, {counts.min()} the last"
    )
    lines.append(f"position buckets: {', '.join(positions.labels)} ({behind})")
    # Massive activations: position 0's residual stream norm against that of the later positions.
    norms = positions.mean_norms("block")  # [layer, bucket]: ||resid_pre|| in both definitions
    if positions.n_buckets > k:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.nanmean(norms[:, :k], axis=1) / np.nanmean(norms[:, k:], axis=1)  # [layer]
        if np.isfinite(ratio).any():
            top = int(np.nanargmax(ratio))
            lines.append(
                f"||resid_pre|| of {first} over the later positions: x{np.nanmin(ratio):.3g} to "
                f"x{np.nanmax(ratio):.3g} (largest at L{top})"
            )
    for component, label in (("attn", "Attention"), ("mlp", "MLP")):
        ratio = without.gains(component) / result.gains(component)
        layer = int(np.argmax(np.abs(np.log(ratio))))
        lines.append(
            f"{label:<10} gain without {first}: x{ratio.min():.3f} to x{ratio.max():.3f} of all positions "
            f"(largest change at L{layer}: {result.gains(component)[layer]:.3f} -> "
            f"{without.gains(component)[layer]:.3f})"
        )
    lines.append(f"Funnel verdict, all positions:   {yes[effect.all_positions.funnel_confirmed]}")
    lines.append(
        f"Funnel verdict, without {first}: {yes[effect.without_first.funnel_confirmed]}"
        + (
            f" ({effect.n_prompts_left} of {result.n_prompts} prompts have tokens left)"
            if effect.n_prompts_left < result.n_prompts
            else ""
        )
    )
    if effect.robust_verdict_changes is not None:
        percent = f"{100 * result.intervals.confidence:g}%"
        both = (yes[effect.robust_all_positions.funnel_confirmed], yes[effect.robust_without_first.funnel_confirmed])
        lines.append(f"Robust verdict ({percent} intervals): {both[0]} on all positions, {both[1]} without {first}")

    criteria = [
        text
        for text in changed_criteria(effect.all_positions, effect.without_first)
        if not text.startswith("the verdict")
    ]
    # The largest move of a layer's gain, in words: a 50x change is named as one, not played down.
    moves = []
    for component, label in (("attn", "attention"), ("mlp", "MLP")):
        before, after = result.gains(component), without.gains(component)
        layer = int(np.argmax(np.abs(np.log(after / before))))
        moves.append((abs(np.log(after[layer] / before[layer])), label, layer, before[layer], after[layer]))
    _, label, layer, before, after = max(moves)
    largest = f"L{layer}'s {label} gain is {factor(before, after)} without {first} ({before:.4g} -> {after:.4g})"
    if effect.verdict_changes:
        lines.append(f">>> THE VERDICT DEPENDS ON {first.upper()}: {', '.join(criteria)} <<<")
    elif criteria:
        lines.append(f">>> The verdict does not depend on {first}, but criteria do: {', '.join(criteria)} <<<")
    else:
        lines.append(f">>> The verdict does not depend on {first} <<<")
    lines.append(f"largest change: {largest}")
    return "\n".join(lines)
