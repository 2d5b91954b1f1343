"""What a ``GainResult`` derives from its own sums, no model needed: the result without its first
positions, under the other definition, and the residual stream read as one block.

Each function returns a new result of the same type, built from sums the result already holds
(the read sums of ``funnel_tl.measure.reads``, the position sums of ``funnel_tl.results.positions``);
``GainResult``'s methods of the same meaning (``without_first``, ``in_definition``,
``block_cumulative_gains``) document them and are the way in.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from funnel_tl.components import COMPONENTS, DEFINITIONS, gain_ratio
from funnel_tl.errors import FunnelError
from funnel_tl.measure.reads import definition_roles
from funnel_tl.results.files import prompts_subset

if TYPE_CHECKING:
    from funnel_tl.results.gains import GainResult


def drop_first_positions(result: GainResult, k: int) -> GainResult:
    """``GainResult.without_first(k)``: from the read sums for ``k=1``, else from the position sums."""
    if k <= result.drop_first:
        return replace(result, intervals=None)
    if k == 1 and result.reads is not None:
        return from_position_1(result)
    if result.positions is None:
        raise FunnelError(f"{result.model}: leaving out positions after the fact needs by_position=True")
    out_sums, in_sums, n_tokens = result.positions.from_position(k)
    kept, prompts, provenance = prompts_with_tokens(result, n_tokens, f"the first {k} positions")
    return type(result)(
        model=result.model,
        definition=result.definition,
        n_layers=result.n_layers,
        d_model=result.d_model,
        parallel_blocks=result.parallel_blocks,
        prompts=prompts,
        n_tokens=n_tokens[kept],
        out_sums={c: out_sums[c][kept] for c in COMPONENTS},
        in_sums={c: in_sums[c][kept] for c in COMPONENTS},
        drop_first=k,
        provenance=dict(provenance, drop_first=k, derived_from_drop_first=result.drop_first),
        positions=result.positions.without_first(k).subset(kept),
        layers=result.layers,
    )


def prompts_with_tokens(
    result: GainResult, n_tokens: np.ndarray, after: str
) -> tuple[np.ndarray, tuple[str, ...] | None, dict]:
    """The prompts that keep a token (``n_tokens > 0``) once the tokens up to ``after`` are left
    out: their indices, texts and provenance (the result's own when every prompt keeps one)."""
    kept = np.flatnonzero(n_tokens > 0)
    if kept.size == 0:
        raise FunnelError(f"{result.model}: no prompt has a token after {after}")
    if kept.size == result.n_prompts:
        return kept, result.prompts, result.provenance
    prompts, provenance = prompts_subset(result.prompts, result.provenance, kept)
    return kept, prompts, provenance


def from_position_1(result: GainResult) -> GainResult:
    """``without_first(1)`` from the read sums over positions >= 1: the very sums a
    ``drop_first=1`` run of the same batches adds up."""
    reads = result.reads
    kept, prompts, provenance = prompts_with_tokens(result, reads.n_tokens_from_1, "position 0")
    roles = definition_roles(result.definition, result.parallel_blocks)
    return type(result)(
        model=result.model,
        definition=result.definition,
        n_layers=result.n_layers,
        d_model=result.d_model,
        parallel_blocks=result.parallel_blocks,
        prompts=prompts,
        n_tokens=reads.n_tokens_from_1[kept],
        out_sums={c: reads.sums_from_1[out][kept] for c, (out, _) in roles.items()},
        in_sums={c: reads.sums_from_1[inp][kept] for c, (_, inp) in roles.items()},
        drop_first=1,
        provenance=dict(provenance, drop_first=1, derived_from_drop_first=result.drop_first),
        positions=None if result.positions is None else result.positions.without_first(1).subset(kept),
        layers=result.layers,
        reads=reads.from_position_1().subset(kept),
    )


def under_definition(result: GainResult, definition: str) -> GainResult:
    """``GainResult.in_definition(definition)``: the same forward's gains under ``definition``,
    from the read sums."""
    if definition not in DEFINITIONS:
        raise FunnelError(f"unknown definition {definition!r}: choose seed or residual")
    if definition == result.definition:
        return result
    roles = definition_roles(definition, result.parallel_blocks)
    if result.reads is None or not result.reads.has(*(role for pair in roles.values() for role in pair)):
        raise FunnelError(
            f"{result.model}: the {definition} definition's inputs were not read "
            + (
                "(a result without read sums: rerun funnel-tl run)"
                if result.reads is None
                else "(the model has no norm output to read)"
            )
        )
    reads = result.reads
    described = {"block_shape": result.provenance.get("reads", {}).get("block_shape")}
    for component, (out, inp) in roles.items():
        described |= {f"{component}_in": reads.reads[inp], f"{component}_out": reads.reads[out]}
    return type(result)(
        model=result.model,
        definition=definition,
        n_layers=result.n_layers,
        d_model=result.d_model,
        parallel_blocks=result.parallel_blocks,
        prompts=result.prompts,
        n_tokens=result.n_tokens,
        out_sums={c: reads.sums[out] for c, (out, _) in roles.items()},
        in_sums={c: reads.sums[inp] for c, (_, inp) in roles.items()},
        drop_first=result.drop_first,
        provenance=dict(result.provenance, reads=described, derived_from_definition=result.definition),
        layers=result.layers,
        reads=reads,
    )


def stream_stack(result: GainResult) -> GainResult | None:
    """Blocks 0..L read as one block: ``block`` sums of ‖resid_post_L‖ over ‖resid_pre_0‖ (the
    other components as the result's), so that its block gains and intervals are the stream's
    growth; None unless layer 0 was measured (``stream_layers``)."""
    if not result.stream_layers:
        return None
    # [prompt, layer]: resid_pre_0 in every column (stream_layers: every measured layer)
    first = np.repeat(result.in_sums["block"][:, :1], len(result.stream_layers), axis=1)
    return type(result)(
        model=result.model,
        definition=result.definition,
        n_layers=result.n_layers,
        d_model=result.d_model,
        parallel_blocks=result.parallel_blocks,
        prompts=result.prompts,
        n_tokens=result.n_tokens,
        out_sums=dict(result.out_sums),
        in_sums={**result.in_sums, "block": first},
        drop_first=result.drop_first,
        provenance=result.provenance,
        layers=result.layers,
    )


def mean_ratio(out_sums: np.ndarray, in_sums: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """``[layer]``: the seed's aggregation of two ``[prompt, layer]`` sums, mean over prompts of
    mean‖out‖ / (mean‖in‖ + 1e-10)."""
    counts = n_tokens[:, None]
    return gain_ratio(out_sums / counts, in_sums / counts).mean(axis=0)
