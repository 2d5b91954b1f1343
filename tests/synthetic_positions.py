"""A ``GainResult`` with position sums whose gains we chose: an attention sink at position 0."""

from __future__ import annotations

import numpy as np

from funnel_tl.measure.positions import bucket_edges
from funnel_tl.results.gains import GainResult
from funnel_tl.results.positions import PositionSums


def sink_result(sink_gain: float, n_layers: int = 3, empty_last_bucket: bool = False) -> GainResult:
    """Two prompts of 4 tokens: attention and MLP contract (gain 0.5) everywhere but at position 0,
    whose norms are 100x the others' and whose attention gain is ``sink_gain``; the last layer's
    MLP expands (3.0). ``empty_last_bucket``: the second prompt has 3 tokens, so position 3 is
    reached by one prompt only."""
    edges = bucket_edges(4)
    n_tokens = np.ones((2, 4), dtype=np.int64)
    if empty_last_bucket:
        n_tokens[1, 3] = 0
    ones = np.ones((2, n_layers, 4)) * n_tokens[:, None, :]
    in_sums = {c: ones.copy() for c in ("attn", "mlp", "block")}
    for sums in in_sums.values():
        sums[:, :, 0] = 100.0
    out = {"attn": 0.5 * ones, "mlp": 0.5 * ones, "block": ones.copy()}
    out["attn"][:, :, 0] = 100.0 * sink_gain
    out["mlp"][:, :, 0] = 50.0
    out["mlp"][:, -1, :] = 3.0 * in_sums["mlp"][:, -1, :]
    positions = PositionSums(edges=edges, n_tokens=n_tokens, out_sums=out, in_sums=in_sums)
    return GainResult(
        model="synthetic/sink",
        definition="seed",
        n_layers=n_layers,
        d_model=8,
        parallel_blocks=True,
        prompts=("a", "b"),
        n_tokens=n_tokens.sum(axis=1),
        out_sums={c: v.sum(axis=2) for c, v in out.items()},
        in_sums={c: v.sum(axis=2) for c, v in in_sums.items()},
        positions=positions,
    )
