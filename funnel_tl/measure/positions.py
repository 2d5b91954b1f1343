"""Gains by position, measured: position buckets and the torch accumulators that sum norms into them."""

from __future__ import annotations

import einops
import numpy as np
import torch
from jaxtyping import Float

from funnel_tl.components import COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.results.positions import HeadPositionSums, PositionSums, bucket_edges, bucket_labels  # noqa: F401  (bucket_labels: in the doctest)

# ---- buckets ------------------------------------------------------------------------------------


def bucket_one_hot(n_positions: int, edges, device=None) -> Float[torch.Tensor, "pos bucket"]:
    """``[pos, bucket]``: 1 where position p falls in bucket b (every position in exactly one)."""
    edges = torch.as_tensor(np.asarray(edges), device=device)
    if int(edges[-1]) < n_positions:
        raise FunnelError(f"bucket edges end at {int(edges[-1])}, before position {n_positions - 1}")
    positions = torch.arange(n_positions, device=device)[:, None]  # [pos, 1]
    return ((positions >= edges[None, :-1]) & (positions < edges[None, 1:])).float()  # [pos, bucket]


def position_sums(
    norms: Float[torch.Tensor, "layer batch pos"], counted: torch.Tensor, edges
) -> tuple[Float[torch.Tensor, "batch layer bucket"], Float[torch.Tensor, "batch bucket"]]:
    """Sum per-token norms by position bucket over the counted tokens of each prompt.

    ``counted`` is ``[batch, pos]`` (real tokens not dropped). Returns the ``[batch, layer, bucket]``
    sums and the ``[batch, bucket]`` token counts, in float32 as the norms. One one-hot matmul:
    the per-prompt sum with the bucket as an extra output axis. Uncounted tokens are masked out
    by selection before it, not by a zero weight: a non-finite norm at a padded position must not
    poison its prompt's sums (0 × inf is NaN), and a counted one must.
    """
    counted = counted.bool()
    one_hot = bucket_one_hot(norms.shape[-1], edges, device=norms.device)  # [pos, bucket]
    kept = torch.where(counted[None], norms, torch.zeros((), dtype=norms.dtype, device=norms.device))
    sums = einops.einsum(kept, one_hot, "layer batch pos, pos bucket -> batch layer bucket")
    counts = einops.einsum(counted.float(), one_hot, "batch pos, pos bucket -> batch bucket")
    return sums, counts


def grown(array: np.ndarray, n_rows: int, n_buckets: int | None = None) -> np.ndarray:
    """``array`` with room for ``n_rows`` rows (capacity doubled, so a growing corpus copies each
    row O(1) times) and, if given, ``n_buckets`` on its last axis; new cells are 0."""
    rows = array.shape[0] if array.shape[0] >= n_rows else max(n_rows, 2 * array.shape[0])
    if n_buckets is None or n_buckets == array.shape[-1]:
        if rows == array.shape[0]:
            return array
        bigger = np.zeros((rows,) + array.shape[1:], dtype=array.dtype)
        bigger[: array.shape[0]] = array
        return bigger
    if array.ndim < 2 or n_buckets < array.shape[-1]:
        raise ValueError(f"cannot fit an array of shape {array.shape} to {n_buckets} buckets")
    bigger = np.zeros((rows,) + array.shape[1:-1] + (n_buckets,), dtype=array.dtype)
    bigger[: array.shape[0], ..., : array.shape[-1]] = array
    return bigger


class _Growing:
    """Per-prompt arrays ``[prompt, ..., bucket]`` that grow with a streamed corpus (``grow``).

    The bucket edges are those of the longest prompt seen so far; ``bucket_edges`` of a longer
    one extends them (the edges are a prefix), so growing appends buckets, 0 for earlier prompts,
    and the final edges are the ones the whole corpus at once would get.
    """

    _arrays: tuple[str, ...] = ()
    edges: np.ndarray  # set by the subclasses' __init__
    n_prompts: int

    def grow(self, n_prompts: int, n_positions: int) -> None:
        """Make room for ``n_prompts`` prompts of up to ``n_positions`` tokens."""
        edges = bucket_edges(max(n_positions, int(self.edges[-1])))
        n_buckets = len(edges) - 1
        for name in self._arrays:
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, {key: grown(array, n_prompts, n_buckets) for key, array in value.items()})
            else:
                setattr(self, name, grown(value, n_prompts, n_buckets))
        self.edges = edges
        self.n_prompts = max(self.n_prompts, n_prompts)

    def _trimmed(self, name: str):
        value = getattr(self, name)
        if isinstance(value, dict):
            return {key: array[: self.n_prompts] for key, array in value.items()}
        return value[: self.n_prompts]


class PositionAccumulator(_Growing):
    """Collects ``position_sums`` batch by batch into per-prompt arrays (the measurement loop's side).

    ``add`` takes what the loop already has: each hook's norms ``[layer, batch, pos]`` by suffix,
    the counted mask, and the hook plan that says which suffix is each component's output and input.
    A streamed measurement starts it empty and ``grow``s it chunk by chunk.
    """

    _arrays = ("out_sums", "in_sums", "n_tokens")

    def __init__(self, n_prompts: int, n_layers: int, n_positions: int):
        self.edges = bucket_edges(n_positions)
        self.n_prompts = n_prompts
        shape = (n_prompts, n_layers, len(self.edges) - 1)
        self.out_sums = {c: np.zeros(shape) for c in COMPONENTS}
        self.in_sums = {c: np.zeros(shape) for c in COMPONENTS}
        self.n_tokens = np.zeros((n_prompts, shape[2]), dtype=np.int64)

    def add(self, indices, stacked: dict[str, torch.Tensor], counted: torch.Tensor, plan) -> None:
        suffixes = list(stacked)
        # Every hook in one reduction (one matmul, one copy to the host), not one per hook.
        together = einops.rearrange([stacked[s] for s in suffixes], "hook layer batch pos -> (hook layer) batch pos")
        by_bucket, counts = position_sums(together, counted, self.edges)  # [batch, (hook layer), bucket]
        per_hook = einops.rearrange(
            by_bucket.double().cpu().numpy(), "batch (hook layer) bucket -> hook batch layer bucket", hook=len(suffixes)
        )
        sums = dict(zip(suffixes, per_hook, strict=True))  # suffix -> [batch, layer, bucket]
        for component in COMPONENTS:
            self.out_sums[component][indices] = sums[plan.outputs[component]]
            self.in_sums[component][indices] = sums[plan.inputs[component]]
        self.n_tokens[indices] = counts.round().long().cpu().numpy()

    def result(self) -> PositionSums:
        return PositionSums(
            edges=self.edges,
            n_tokens=self._trimmed("n_tokens"),
            out_sums=self._trimmed("out_sums"),
            in_sums=self._trimmed("in_sums"),
        )


class HeadPositionAccumulator(_Growing):
    """Collects per-head sums by position bucket batch by batch (``heads.head_gains``' side).

    ``add_heads`` takes every measured layer's per-token head norms ``[layer, batch, pos, head]``;
    ``add_inputs`` the denominators' norms ``[layer, batch, pos]``: one reduction and one copy to
    the host each per batch.
    """

    _arrays = ("head_norm_sums", "in_sums", "n_tokens")

    def __init__(self, n_prompts: int, n_layers: int, n_heads: int, n_positions: int):
        self.edges = bucket_edges(n_positions)
        self.n_prompts = n_prompts
        n_buckets = len(self.edges) - 1
        self.head_norm_sums = np.zeros((n_prompts, n_layers, n_heads, n_buckets))
        self.in_sums = np.zeros((n_prompts, n_layers, n_buckets))
        self.n_tokens = np.zeros((n_prompts, n_buckets), dtype=np.int64)

    def add_heads(self, indices, head_norms: torch.Tensor, counted: torch.Tensor) -> None:
        n_layers = head_norms.shape[0]
        flat = einops.rearrange(head_norms, "layer batch pos head -> (layer head) batch pos")
        sums, _ = position_sums(flat, counted, self.edges)  # [batch, layer·head, bucket]
        sums = einops.rearrange(sums, "batch (layer head) bucket -> batch layer head bucket", layer=n_layers)
        self.head_norm_sums[indices] = sums.double().cpu().numpy()

    def add_inputs(self, indices, in_norms: torch.Tensor, counted: torch.Tensor) -> None:
        sums, counts = position_sums(in_norms, counted, self.edges)  # [batch, layer, bucket], [batch, bucket]
        self.in_sums[indices] = sums.double().cpu().numpy()
        self.n_tokens[indices] = counts.round().long().cpu().numpy()

    def result(self) -> HeadPositionSums:
        return HeadPositionSums(
            edges=self.edges,
            n_tokens=self._trimmed("n_tokens"),
            head_norm_sums=self._trimmed("head_norm_sums"),
            in_sums=self._trimmed("in_sums"),
        )
