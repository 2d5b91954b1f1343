"""What a ``GainResult``'s parts must agree on, checked once when it is built.

A token count for every prompt, ``[prompt, layer]`` sums of every component, and intervals,
position sums, read sums and token histograms of the same prompts, layers and tokens. A part
that disagrees raises ``ValueError`` naming it (a results.json that does not fit its schema is
refused earlier, by ``funnel_tl.results.schema``, in one line naming the key).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from funnel_tl.components import COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.measure.reads import definition_roles

if TYPE_CHECKING:
    from funnel_tl.results.gains import GainResult


def check_sums(result: GainResult) -> None:
    """At least one prompt, each counting a token, and ``[prompt, layer]`` sums of every component,
    finite and non-negative; each sum array is stored back into its dict as float64."""
    n_prompts = len(result.prompts) if result.prompts is not None else len(result.n_tokens)
    n_layers = len(result.layers or ())
    if result.n_tokens.shape != (n_prompts,):
        raise ValueError(f"n_tokens has shape {result.n_tokens.shape}, expected ({n_prompts},)")
    if n_prompts == 0:  # every gain would be the NaN mean of nothing
        raise FunnelError(f"{result.model}: a result needs at least one prompt, got none")
    if result.n_tokens.min() < 1:
        raise ValueError("every prompt must count at least one token")
    for sums in (result.out_sums, result.in_sums):
        if set(sums) != set(COMPONENTS):
            raise ValueError(f"sums must have the components {COMPONENTS}, got {sorted(sums)}")
        for component in COMPONENTS:
            array = np.asarray(sums[component], dtype=np.float64)
            if array.shape != (n_prompts, n_layers):
                raise ValueError(f"{component} sums have shape {array.shape}, expected {(n_prompts, n_layers)}")
            if not np.all(np.isfinite(array)) or np.any(array < 0):
                raise ValueError(f"{component} sums must be finite and non-negative")
            sums[component] = array


def check_parts(result: GainResult) -> None:
    """The intervals, position sums, read sums and token histograms a result holds (each may be
    None) cover its layers, prompts and tokens."""
    n_layers = len(result.layers or ())
    intervals = result.intervals
    if intervals is not None and (intervals.n_layers, len(intervals.cumulative)) != (
        n_layers,
        len(result.cumulative_layers),
    ):
        raise ValueError(
            f"intervals cover {intervals.n_layers} layers ({len(intervals.cumulative)} "
            f"cumulative), the result {n_layers} ({len(result.cumulative_layers)} cumulative)"
        )
    if result.positions is not None:
        check_positions(result)
    if result.reads is not None:
        check_reads(result)
    if result.token_histograms is not None and result.token_histograms.n_layers != n_layers:
        raise ValueError(f"token histograms cover {result.token_histograms.n_layers} layers, the result {n_layers}")


def check_reads(result: GainResult) -> None:
    """The definition's own sums must be the reads' sums of their roles: the same norms."""
    reads = result.reads
    if reads.n_prompts != result.n_prompts or next(iter(reads.sums.values())).shape[1] != len(result.layers or ()):
        raise ValueError(f"read sums cover {reads.n_prompts} prompts, the result {result.n_prompts}")
    if np.any(reads.n_tokens_from_1 > result.n_tokens):
        raise ValueError("read sums count more tokens from position 1 than in all")
    for component, (out_role, in_role) in definition_roles(result.definition, result.parallel_blocks).items():
        for role, sums in ((out_role, result.out_sums[component]), (in_role, result.in_sums[component])):
            if role not in reads.sums or not np.array_equal(reads.sums[role], sums):
                raise ValueError(f"{component} sums are not the read sums of {role}")


def check_positions(result: GainResult) -> None:
    """Position sums must add up, over buckets, to the per-prompt sums: the same tokens."""
    positions = result.positions
    n_layers = len(result.layers or ())
    if positions.n_prompts != result.n_prompts or positions.n_layers != n_layers:
        raise ValueError(
            f"position sums cover {positions.n_prompts} prompts x {positions.n_layers} layers, "
            f"the result {result.n_prompts} x {n_layers}"
        )
    if not np.array_equal(positions.n_tokens.sum(axis=1), result.n_tokens):
        raise ValueError("position token counts do not add up to the per-prompt token counts")
    for component in COMPONENTS:
        for by_position, total in ((positions.out_sums, result.out_sums), (positions.in_sums, result.in_sums)):
            # Both are float32 sums of the same norms grouped differently (~1e-6 relative apart).
            if not np.allclose(by_position[component].sum(axis=2), total[component], rtol=1e-4, atol=1e-6):
                raise ValueError(f"{component} position sums do not add up to the per-prompt sums")
