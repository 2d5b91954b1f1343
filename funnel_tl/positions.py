"""Position-resolved gains: where in the sequence a layer expands or contracts what it reads.

The seed averages every token of a prompt together. Position 0 (and the first few positions)
carry attention sinks and massive activations whose norms can be orders of magnitude larger than
the rest, so a layer's gain can be a statement about one token. Here the per-token norms that
``measure_gains`` already holds are also summed by position bucket:

- positions 0 … 15 one by one (``SINGLE_POSITIONS``), then log-spaced buckets 16–31, 32–63, …;
- per prompt and bucket: Σ‖out‖, Σ‖in‖ over the bucket's counted tokens and their number;
- a cell's gain (layer l, bucket b) is the seed's aggregation with the bucket in place of the
  prompt: the mean, over the prompts that reach b, of mean‖out‖ / (mean‖in‖ + 1e-10) there.

Memory is O(prompts × layers × buckets): nothing per token outlives its batch. Position sums
add up over buckets to the result's own per-prompt sums (``GainResult`` checks it), so leaving
out the first k positions (``GainResult.without_first``) needs no second pass over the model.

>>> edges = bucket_edges(40)
>>> bucket_labels(edges)[14:]
['14', '15', '16-31', '32-63']
>>> import torch
>>> norms = torch.tensor([[[1.0, 2.0, 4.0, 8.0]]])            # [layer=1, batch=1, pos=4]
>>> counted = torch.tensor([[False, True, True, True]])         # position 0 dropped
>>> sums, counts = position_sums(norms, counted, bucket_edges(4))
>>> sums.tolist(), counts.tolist()
([[[0.0, 2.0, 4.0, 8.0]]], [[0.0, 1.0, 1.0, 1.0]])
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float

from .errors import FunnelError

# Positions 0..15 get a bucket each: sinks and the first tokens' warm-up live there.
SINGLE_POSITIONS = 16
COMPONENTS = ("attn", "mlp", "block")  # the same as results.COMPONENTS (no import: results imports us)
# The seed notebook's guard against a zero denominator (results.EPSILON).
EPSILON = 1e-10
# Keys of results.json, as the seed names the components.
KEYS = {"attn": "attention", "mlp": "mlp", "block": "block", "combined": "combined"}


# ---- buckets ------------------------------------------------------------------------------------
def bucket_edges(n_positions: int) -> np.ndarray:
    """``[bucket + 1]`` edges covering positions ``0 … n_positions - 1``: bucket b is ``[e[b], e[b+1])``.

    >>> bucket_edges(3).tolist(), bucket_edges(17).tolist()[-3:], bucket_edges(64).tolist()[-2:]
    ([0, 1, 2, 3], [15, 16, 32], [32, 64])
    """
    if n_positions < 1:
        raise FunnelError(f"position buckets need at least one position, got {n_positions}")
    edges = list(range(min(n_positions, SINGLE_POSITIONS) + 1))
    while edges[-1] < n_positions:
        edges.append(2 * edges[-1])  # 16 -> 32 -> 64 ...: log-spaced past the single positions
    return np.asarray(edges, dtype=np.int64)


def bucket_labels(edges) -> list[str]:
    """``"3"`` for a single position, ``"16-31"`` for a bucket (inclusive ends).

    A plain hyphen, as data: ``df.query("position == '16-31'")`` must find what one types; figures
    draw it as an en dash (``position_plots``)."""
    return [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])]


def bucket_one_hot(n_positions: int, edges, device=None) -> Float[torch.Tensor, "pos bucket"]:
    """``[pos, bucket]``: 1 where position p falls in bucket b (every position in exactly one)."""
    edges = torch.as_tensor(np.asarray(edges), device=device)
    if int(edges[-1]) < n_positions:
        raise FunnelError(f"bucket edges end at {int(edges[-1])}, before position {n_positions - 1}")
    positions = torch.arange(n_positions, device=device)[:, None]  # [pos, 1]
    return ((positions >= edges[None, :-1]) & (positions < edges[None, 1:])).float()  # [pos, bucket]


def position_sums(norms: Float[torch.Tensor, "layer batch pos"], counted: torch.Tensor,
                  edges) -> tuple[Float[torch.Tensor, "batch layer bucket"], Float[torch.Tensor, "batch bucket"]]:
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
        by_bucket = einops.rearrange(by_bucket.double().cpu().numpy(),
                                     "batch (hook layer) bucket -> hook batch layer bucket", hook=len(suffixes))
        sums = dict(zip(suffixes, by_bucket))  # suffix -> [batch, layer, bucket]
        for component in COMPONENTS:
            self.out_sums[component][indices] = sums[plan.outputs[component]]
            self.in_sums[component][indices] = sums[plan.inputs[component]]
        self.n_tokens[indices] = counts.round().long().cpu().numpy()

    def result(self) -> "PositionSums":
        return PositionSums(edges=self.edges, n_tokens=self._trimmed("n_tokens"), out_sums=self._trimmed("out_sums"),
                            in_sums=self._trimmed("in_sums"))


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

    def result(self) -> "HeadPositionSums":
        return HeadPositionSums(edges=self.edges, n_tokens=self._trimmed("n_tokens"),
                                head_norm_sums=self._trimmed("head_norm_sums"), in_sums=self._trimmed("in_sums"))


@dataclass(frozen=True)
class HeadPositionSums:
    """Per-prompt sums of every head's output norm ‖h_i‖ and of the attention gain's denominator,
    by position bucket (``heads.head_gains(..., by_position=True)``).

    Shapes: ``edges`` ``[bucket + 1]``; ``n_tokens`` ``[prompt, bucket]``; ``head_norm_sums``
    ``[prompt, layer, head, bucket]`` (layer indexes the measured layers); ``in_sums``
    ``[prompt, layer, bucket]``.
    """

    edges: np.ndarray
    n_tokens: np.ndarray
    head_norm_sums: np.ndarray
    in_sums: np.ndarray

    def __post_init__(self):
        edges = np.asarray(self.edges, dtype=np.int64)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "n_tokens", np.asarray(self.n_tokens, dtype=np.int64))
        n_prompts, n_buckets = self.n_tokens.shape[0], len(edges) - 1
        if self.n_tokens.shape != (n_prompts, n_buckets):
            raise ValueError(f"head position token counts have shape {self.n_tokens.shape}, "
                             f"expected [prompt, {n_buckets}]")
        for name, ndim in (("head_norm_sums", 4), ("in_sums", 3)):
            array = np.asarray(getattr(self, name), dtype=np.float64)
            if array.ndim != ndim or array.shape[0] != n_prompts or array.shape[-1] != n_buckets:
                raise ValueError(f"{name} by position has shape {array.shape}")
            if not np.all(np.isfinite(array)) or np.any(array < 0):
                raise ValueError(f"{name} by position must be finite and non-negative")
            object.__setattr__(self, name, array)

    @property
    def labels(self) -> list[str]:
        return bucket_labels(self.edges)

    def prompt_counts(self) -> np.ndarray:
        """``[bucket]``: prompts behind each bucket."""
        return (self.n_tokens > 0).sum(axis=0)

    def gains(self) -> np.ndarray:
        """``[layer, head, bucket]``: mean over the prompts reaching each bucket of
        mean‖h_i‖ / (mean‖input‖ + 1e-10) there; NaN where none does."""
        counts = self.n_tokens[:, None, :].astype(np.float64)  # [prompt, 1, bucket]
        reached = self.n_tokens > 0  # [prompt, bucket]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_prompt = ((self.head_norm_sums / counts[:, :, None, :])
                          / (self.in_sums / counts + EPSILON)[:, :, None, :])  # [prompt, layer, head, bucket]
        kept = np.where(reached[:, None, None, :], np.nan_to_num(per_prompt), 0.0)
        total = einops.reduce(kept, "prompt layer head bucket -> layer head bucket", "sum")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(reached.any(axis=0), total / reached.sum(axis=0), np.nan)

    def subset(self, prompt_indices) -> "HeadPositionSums":
        index = np.asarray(prompt_indices, dtype=np.int64)
        return replace(self, n_tokens=self.n_tokens[index], head_norm_sums=self.head_norm_sums[index],
                       in_sums=self.in_sums[index])

    def to_dict(self) -> dict[str, Any]:
        """The ``by_position`` block of heads.json."""
        return {"edges": self.edges.tolist(), "labels": self.labels, "n_prompts": self.prompt_counts().tolist(),
                "head_gain": _nullable(self.gains()),
                "per_prompt": {"n_tokens": self.n_tokens.tolist(), "head_norm_sum": self.head_norm_sums.tolist(),
                               "in_sum": self.in_sums.tolist()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadPositionSums":
        per_prompt = data["per_prompt"]
        return cls(edges=np.asarray(data["edges"]), n_tokens=np.asarray(per_prompt["n_tokens"]),
                   head_norm_sums=np.asarray(per_prompt["head_norm_sum"], dtype=np.float64),
                   in_sums=np.asarray(per_prompt["in_sum"], dtype=np.float64))


# ---- the data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PositionIntervals:
    """Percentile bootstrap intervals over prompts of every cell: ``gains[key]`` is ``[layer, bucket, 2]``
    for key in attn, mlp, block, combined; NaN where no prompt reaches the bucket."""

    confidence: float
    n_resamples: int
    seed: int
    gains: dict[str, np.ndarray]

    def to_dict(self) -> dict[str, Any]:
        return {"confidence": float(self.confidence), "n_resamples": int(self.n_resamples), "seed": int(self.seed),
                "method": "percentile bootstrap over prompts",
                **{KEYS[c]: _nullable(v) for c, v in self.gains.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PositionIntervals":
        return cls(confidence=float(data["confidence"]), n_resamples=int(data["n_resamples"]), seed=int(data["seed"]),
                   gains={c: _array(data[key]) for c, key in KEYS.items()})


@dataclass(frozen=True)
class PositionSums:
    """Per-prompt norm sums by position bucket; every position-resolved gain derives from them.

    Shapes: ``edges`` ``[bucket + 1]`` (bucket b covers positions ``edges[b] … edges[b+1] - 1``);
    ``n_tokens`` ``[prompt, bucket]`` the tokens counted there (0: the prompt does not reach it, or
    its positions were dropped); ``out_sums[c]``, ``in_sums[c]`` ``[prompt, layer, bucket]`` the sums
    of ‖output‖ and ‖input‖ of component c (inputs as in ``GainResult``'s glossary).
    ``sink_positions``: how many first positions the figures and analysis leave out to show the
    attention sink's effect (1: position 0).
    """

    edges: np.ndarray
    n_tokens: np.ndarray
    out_sums: dict[str, np.ndarray]
    in_sums: dict[str, np.ndarray]
    sink_positions: int = 1
    intervals: PositionIntervals | None = field(default=None, compare=False)

    def __post_init__(self):
        edges = np.asarray(self.edges, dtype=np.int64)
        if edges.ndim != 1 or len(edges) < 2 or edges[0] != 0 or np.any(np.diff(edges) < 1):
            raise ValueError(f"bucket edges must rise from 0, got {edges.tolist()}")
        object.__setattr__(self, "edges", edges)
        n_tokens = np.asarray(self.n_tokens, dtype=np.int64)
        n_buckets = len(edges) - 1
        if n_tokens.ndim != 2 or n_tokens.shape[1] != n_buckets or np.any(n_tokens < 0):
            raise ValueError(f"position token counts have shape {n_tokens.shape}, expected [prompt, {n_buckets}]")
        if np.any(n_tokens > np.diff(edges)[None]):
            raise ValueError("a bucket counts more tokens than it has positions")
        object.__setattr__(self, "n_tokens", n_tokens)
        for sums in (self.out_sums, self.in_sums):
            if set(sums) != set(COMPONENTS):
                raise ValueError(f"position sums must have the components {COMPONENTS}, got {sorted(sums)}")
            for component in COMPONENTS:
                array = np.asarray(sums[component], dtype=np.float64)
                if array.ndim != 3 or array.shape[0] != n_tokens.shape[0] or array.shape[2] != n_buckets:
                    raise ValueError(f"{component} position sums have shape {array.shape}, "
                                     f"expected [{n_tokens.shape[0]}, layer, {n_buckets}]")
                if not np.all(np.isfinite(array)) or np.any(array < 0):
                    raise ValueError(f"{component} position sums must be finite and non-negative")
                sums[component] = array
        if self.sink_positions < 1:
            raise FunnelError(f"sink_positions must be 1 or more, got {self.sink_positions}")

    @property
    def n_prompts(self) -> int:
        return self.n_tokens.shape[0]

    @property
    def n_layers(self) -> int:
        return self.out_sums["attn"].shape[1]

    @property
    def n_buckets(self) -> int:
        return len(self.edges) - 1

    @property
    def labels(self) -> list[str]:
        return bucket_labels(self.edges)

    def reached(self) -> np.ndarray:
        """``[prompt, bucket]``: whether the prompt counts at least one token in the bucket."""
        return self.n_tokens > 0

    def prompt_counts(self) -> np.ndarray:
        """``[bucket]``: how many prompts stand behind each cell of that bucket (every layer alike)."""
        return self.reached().sum(axis=0)

    def per_prompt_gains(self, component: str) -> np.ndarray:
        """``[prompt, layer, bucket]``: mean‖out‖ / (mean‖in‖ + 1e-10) there; NaN where not reached."""
        counts = self.n_tokens[:, None, :].astype(np.float64)  # [prompt, 1, bucket]
        with np.errstate(invalid="ignore", divide="ignore"):
            gains = (self.out_sums[component] / counts) / (self.in_sums[component] / counts + EPSILON)
        return np.where(counts > 0, gains, np.nan)

    def gains(self, component: str) -> np.ndarray:
        """``[layer, bucket]``: mean over the prompts reaching each bucket; NaN where none does.

        ``combined`` is the cell's attn gain × its MLP gain (products of the aggregates, as the seed).
        """
        if component == "combined":
            return self.gains("attn") * self.gains("mlp")
        if component not in COMPONENTS:
            raise FunnelError(f"no position gains for {component!r}: choose attn, mlp, block or combined")
        reached = self.reached()  # [prompt, bucket]
        total = einops.einsum(np.nan_to_num(self.per_prompt_gains(component)), reached.astype(np.float64),
                              "prompt layer bucket, prompt bucket -> layer bucket")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(reached.any(axis=0)[None], total / reached.sum(axis=0)[None], np.nan)

    def mean_norms(self, component: str, side: str = "in") -> np.ndarray:
        """``[layer, bucket]``: mean over the prompts reaching each bucket of their mean ‖in‖ (or
        ‖out‖) there; NaN where none does. ``mean_norms("block")`` is ‖resid_pre‖ by position:
        where massive activations show as a position-0 column far above the rest."""
        sums = {"in": self.in_sums, "out": self.out_sums}[side][component]  # [prompt, layer, bucket]
        reached = self.reached()  # [prompt, bucket]
        per_prompt = sums / np.maximum(self.n_tokens, 1)[:, None, :]  # 0 where not reached
        total = einops.reduce(per_prompt, "prompt layer bucket -> layer bucket", "sum")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(reached.any(axis=0)[None], total / reached.sum(axis=0)[None], np.nan)

    def from_position(self, k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """Out sums, in sums ``[prompt, layer]`` and counts ``[prompt]`` of positions ``k`` and later.

        Summed from the buckets, not as the total less the first k positions: with a sink's norm
        1000× the rest, that difference would lose three digits to cancellation.
        """
        if k not in self.edges[: SINGLE_POSITIONS + 1]:
            raise FunnelError(f"can leave out the first 0 to {min(SINGLE_POSITIONS, int(self.edges[-1]))} "
                              f"positions by position sums, not {k}")
        chosen = self.edges[:-1] >= k  # [bucket]
        return ({c: v[..., chosen].sum(axis=-1) for c, v in self.out_sums.items()},
                {c: v[..., chosen].sum(axis=-1) for c, v in self.in_sums.items()},
                self.n_tokens[:, chosen].sum(axis=-1))

    def without_first(self, k: int) -> "PositionSums":
        """The same sums with positions ``0 … k-1`` emptied (their cells become blank)."""
        self.from_position(k)  # checks k
        keep = (self.edges[:-1] >= k).astype(np.float64)  # [bucket]
        return replace(self, n_tokens=self.n_tokens * keep.astype(np.int64),
                       out_sums={c: v * keep for c, v in self.out_sums.items()},
                       in_sums={c: v * keep for c, v in self.in_sums.items()}, intervals=None)

    def subset(self, prompt_indices) -> "PositionSums":
        index = np.asarray(prompt_indices, dtype=np.int64)
        return replace(self, n_tokens=self.n_tokens[index], out_sums={c: v[index] for c, v in self.out_sums.items()},
                       in_sums={c: v[index] for c, v in self.in_sums.items()}, intervals=None)

    def with_intervals(self, n_resamples: int, seed: int, confidence: float) -> "PositionSums":
        """A copy carrying bootstrap intervals of every cell (``bootstrap_position_intervals``)."""
        return replace(self, intervals=bootstrap_position_intervals(self, n_resamples, seed, confidence))

    # ---- results.json -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``by_position`` block of results.json (gains are redundant: read without funnel_tl)."""
        return {
            "edges": self.edges.tolist(),
            "labels": self.labels,
            "n_prompts": self.prompt_counts().tolist(),
            "sink_positions": int(self.sink_positions),
            "gains": {key: _nullable(self.gains(c)) for c, key in KEYS.items()},
            **({"intervals": self.intervals.to_dict()} if self.intervals is not None else {}),
            "per_prompt": {
                "n_tokens": self.n_tokens.tolist(),
                **{c: {"out_sum": self.out_sums[c].tolist(), "in_sum": self.in_sums[c].tolist()} for c in COMPONENTS},
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PositionSums":
        per_prompt = data["per_prompt"]
        edges = np.asarray(data["edges"], dtype=np.int64)
        n_tokens = np.asarray(per_prompt["n_tokens"], dtype=np.int64).reshape(-1, len(edges) - 1)
        shape = (n_tokens.shape[0], -1, n_tokens.shape[1])
        return cls(
            edges=edges, n_tokens=n_tokens, sink_positions=int(data.get("sink_positions", 1)),
            out_sums={c: np.asarray(per_prompt[c]["out_sum"], dtype=np.float64).reshape(shape) for c in COMPONENTS},
            in_sums={c: np.asarray(per_prompt[c]["in_sum"], dtype=np.float64).reshape(shape) for c in COMPONENTS},
            intervals=PositionIntervals.from_dict(data["intervals"]) if data.get("intervals") else None,
        )


def bootstrap_position_intervals(positions: PositionSums, n_resamples: int, seed: int,
                                 confidence: float) -> PositionIntervals:
    """Percentile bootstrap over prompts of every cell, from the per-prompt position sums.

    Each resample draws the prompts with replacement (``stats.resample_weights``, so the same seed
    draws the same prompts as the per-layer intervals); a cell's resampled gain is the mean over the
    drawn prompts that reach its bucket. A resample in which no drawn prompt reaches a bucket says
    nothing about it and is left out of that bucket's percentiles.
    """
    from .stats import resample_weight_chunks

    reached = positions.reached().astype(np.float64)  # [prompt, bucket]
    per_prompt = {component: np.nan_to_num(positions.per_prompt_gains(component))  # [prompt, layer, bucket]; 0 where unreached
                  for component in COMPONENTS}
    resampled = {component: np.empty((n_resamples, *gains.shape[1:])) for component, gains in per_prompt.items()}
    for start, stop, weights in resample_weight_chunks(positions.n_prompts, n_resamples, seed):  # [resample, prompt]
        drawn = weights @ reached  # [resample, bucket]: drawn weight of the prompts reaching each bucket
        for component, gains in per_prompt.items():
            total = einops.einsum(weights, gains, "resample prompt, prompt layer bucket -> resample layer bucket")
            with np.errstate(invalid="ignore", divide="ignore"):
                resampled[component][start:stop] = np.where(drawn[:, None] > 0, total / drawn[:, None], np.nan)
    resampled["combined"] = resampled["attn"] * resampled["mlp"]  # [resample, layer, bucket]
    tail = 100 * (1 - confidence) / 2
    bounds = {}
    for component, values in resampled.items():
        empty = np.all(np.isnan(values), axis=0)  # [layer, bucket]: no prompt reaches the bucket at all
        filled = np.where(empty[None], 0.0, values)  # nanpercentile warns on all-NaN columns
        low, high = np.nanpercentile(filled, [tail, 100 - tail], axis=0)  # each [layer, bucket]
        bounds[component] = np.where(empty[..., None], np.nan, np.stack([low, high], axis=-1))  # [layer, bucket, 2]
    return PositionIntervals(confidence=confidence, n_resamples=n_resamples, seed=seed, gains=bounds)


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
    # The robust verdicts (stats.RobustFunnelTest) when the result carries intervals; the second
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
            robust = {"robust_verdict_changes": self.robust_verdict_changes,
                      "robust_funnel_test_all_positions": self.robust_all_positions.to_dict(),
                      "robust_funnel_test_without_first": self.robust_without_first.to_dict()}
        return {"k": self.k, "verdict_changes": self.verdict_changes, "changed_criteria": self.changed,
                "n_prompts_left": self.n_prompts_left,
                "funnel_test_all_positions": self.all_positions.to_dict(),
                "funnel_test_without_first": self.without_first.to_dict(), **robust}


def sink_effect(result, k: int | None = None) -> SinkEffect:
    """Whether the funnel verdict of ``result`` (a ``GainResult`` with positions) changes without
    its first ``k`` positions (default: ``result.positions.sink_positions``).

    Each call draws the bootstrap of the result without them anew; ``result.sink`` is this with
    the default ``k``, computed once per result (results.json, the printed analysis and
    positions.html all show it).
    """
    from .funnel import funnel_test

    k = result.positions.sink_positions if k is None else k
    without = result.without_first(k)
    robust = {}
    intervals = result.intervals
    if intervals is not None and without.n_prompts >= 2:
        from .stats import bootstrap_intervals, robust_funnel_test

        # The layers' intervals alone: the figure draws them; no page shows its position cells'.
        without = replace(without, intervals=bootstrap_intervals(
            without, n_resamples=intervals.n_resamples, seed=intervals.seed, confidence=intervals.confidence,
            method=intervals.method))
        robust = {"robust_all_positions": robust_funnel_test(result),
                  "robust_without_first": robust_funnel_test(without)}
    return SinkEffect(k=k, all_positions=funnel_test(result), without_first=funnel_test(without), without=without,
                      **robust)


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
        return (f"no prompt has a token after {first} (the longest has {longest} tokens): nothing to compare; give "
                f"longer prompts, or a smaller --sink-positions")
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
    behind = (f"{counts[0]} prompts reach every one" if counts.min() == counts.max()
              else f"{counts.max()} prompts reach the first, {counts.min()} the last")
    lines.append(f"position buckets: {', '.join(positions.labels)} ({behind})")
    # Massive activations: position 0's residual stream norm against that of the later positions.
    norms = positions.mean_norms("block")  # [layer, bucket]: ||resid_pre|| in both definitions
    if positions.n_buckets > k:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.nanmean(norms[:, :k], axis=1) / np.nanmean(norms[:, k:], axis=1)  # [layer]
        if np.isfinite(ratio).any():
            top = int(np.nanargmax(ratio))
            lines.append(f"||resid_pre|| of {first} over the later positions: x{np.nanmin(ratio):.3g} to "
                         f"x{np.nanmax(ratio):.3g} (largest at L{top})")
    for component, label in (("attn", "Attention"), ("mlp", "MLP")):
        ratio = without.gains(component) / result.gains(component)
        layer = int(np.argmax(np.abs(np.log(ratio))))
        lines.append(f"{label:<10} gain without {first}: x{ratio.min():.3f} to x{ratio.max():.3f} of all positions "
                     f"(largest change at L{layer}: {result.gains(component)[layer]:.3f} -> "
                     f"{without.gains(component)[layer]:.3f})")
    lines.append(f"Funnel verdict, all positions:   {yes[effect.all_positions.funnel_confirmed]}")
    lines.append(f"Funnel verdict, without {first}: {yes[effect.without_first.funnel_confirmed]}"
                 + (f" ({effect.n_prompts_left} of {result.n_prompts} prompts have tokens left)"
                    if effect.n_prompts_left < result.n_prompts else ""))
    if effect.robust_verdict_changes is not None:
        percent = f"{100 * result.intervals.confidence:g}%"
        both = (yes[effect.robust_all_positions.funnel_confirmed], yes[effect.robust_without_first.funnel_confirmed])
        lines.append(f"Robust verdict ({percent} intervals): {both[0]} on all positions, {both[1]} without {first}")
    criteria = [name for name in effect.changed if name != "funnel_confirmed"]
    if effect.verdict_changes:
        lines.append(f">>> THE VERDICT DEPENDS ON {first.upper()}: {', '.join(criteria)} change <<<")
    else:
        lines.append(f">>> The verdict does not depend on {first}"
                     + (f" (though {', '.join(criteria)} change)" if criteria else "") + " <<<")
    return "\n".join(lines)


def position_rows(result, **extra) -> list[dict[str, Any]]:
    """Tidy rows (dicts) of a result's position gains: one per layer, component and reached bucket.

    Columns (``extra`` first): model, layer, component (attn, mlp, block, combined), position (the
    bucket's label, "16-31"), position_start, position_stop (inclusive), gain, ci_low, ci_high
    (NaN without intervals), n_prompts (those reaching the bucket). Cells no prompt reaches have
    no row. ``pandas.DataFrame(position_rows(result))`` is the table; beside the per-layer rows of
    ``GainResult.to_pandas`` these carry the position column.
    """
    positions = result.positions
    counts = positions.prompt_counts()  # [bucket]
    intervals = positions.intervals
    rows = []
    for component in ("attn", "mlp", "block", "combined"):
        gains = positions.gains(component)  # [layer, bucket]
        bounds = intervals.gains[component] if intervals is not None else None  # [layer, bucket, 2]
        for layer in range(positions.n_layers):
            for bucket, label in enumerate(positions.labels):
                if counts[bucket] == 0:
                    continue
                rows.append({**extra, "model": result.model, "layer": layer, "component": component,
                             "position": label, "position_start": int(positions.edges[bucket]),
                             "position_stop": int(positions.edges[bucket + 1]) - 1,
                             "gain": float(gains[layer, bucket]),
                             "ci_low": float(bounds[layer, bucket, 0]) if bounds is not None else float("nan"),
                             "ci_high": float(bounds[layer, bucket, 1]) if bounds is not None else float("nan"),
                             "n_prompts": int(counts[bucket])})
    return rows


def _nullable(values: np.ndarray) -> list:
    """Nested lists with JSON null for NaN (empty cells): strict JSON has no NaN."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(array), None, array).tolist()


def _array(values) -> np.ndarray:
    return np.asarray(values, dtype=object).astype(np.float64)  # None -> nan
