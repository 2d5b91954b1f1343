"""Gains by position, as results: per-prompt sums by position bucket, their gains and intervals, tidy rows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import einops
import numpy as np

from funnel_tl.analysis.stats import resample_weight_chunks
from funnel_tl.components import COMPONENTS, KEYS, gain_ratio
from funnel_tl.errors import FunnelError

# Positions 0..15 get a bucket each: sinks and the first tokens' warm-up live there.
SINGLE_POSITIONS = 16


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
    return [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


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
            raise ValueError(
                f"head position token counts have shape {self.n_tokens.shape}, expected [prompt, {n_buckets}]"
            )
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
            per_prompt = gain_ratio(
                self.head_norm_sums / counts[:, :, None, :], (self.in_sums / counts)[:, :, None, :]
            )  # [prompt, layer, head, bucket]
        kept = np.where(reached[:, None, None, :], np.nan_to_num(per_prompt), 0.0)
        total = einops.reduce(kept, "prompt layer head bucket -> layer head bucket", "sum")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(reached.any(axis=0), total / reached.sum(axis=0), np.nan)

    def subset(self, prompt_indices) -> HeadPositionSums:
        index = np.asarray(prompt_indices, dtype=np.int64)
        return replace(
            self, n_tokens=self.n_tokens[index], head_norm_sums=self.head_norm_sums[index], in_sums=self.in_sums[index]
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``by_position`` block of heads.json."""
        return {
            "edges": self.edges.tolist(),
            "labels": self.labels,
            "n_prompts": self.prompt_counts().tolist(),
            "head_gain": _nullable(self.gains()),
            "per_prompt": {
                "n_tokens": self.n_tokens.tolist(),
                "head_norm_sum": self.head_norm_sums.tolist(),
                "in_sum": self.in_sums.tolist(),
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadPositionSums:
        per_prompt = data["per_prompt"]
        return cls(
            edges=np.asarray(data["edges"]),
            n_tokens=np.asarray(per_prompt["n_tokens"]),
            head_norm_sums=np.asarray(per_prompt["head_norm_sum"], dtype=np.float64),
            in_sums=np.asarray(per_prompt["in_sum"], dtype=np.float64),
        )


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
        return {
            "confidence": float(self.confidence),
            "n_resamples": int(self.n_resamples),
            "seed": int(self.seed),
            "method": "percentile bootstrap over prompts",
            **{KEYS[c]: _nullable(v) for c, v in self.gains.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PositionIntervals:
        return cls(
            confidence=float(data["confidence"]),
            n_resamples=int(data["n_resamples"]),
            seed=int(data["seed"]),
            gains={c: _array(data[key]) for c, key in KEYS.items()},
        )


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
                    raise ValueError(
                        f"{component} position sums have shape {array.shape}, "
                        f"expected [{n_tokens.shape[0]}, layer, {n_buckets}]"
                    )
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
            gains = gain_ratio(self.out_sums[component] / counts, self.in_sums[component] / counts)
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
        total = einops.einsum(
            np.nan_to_num(self.per_prompt_gains(component)),
            reached.astype(np.float64),
            "prompt layer bucket, prompt bucket -> layer bucket",
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(reached.any(axis=0)[None], total / reached.sum(axis=0)[None], np.nan)  # type: ignore[index]  # numpy types any(axis=0) as maybe a scalar

    def mean_norms(self, component: str, side: str = "in") -> np.ndarray:
        """``[layer, bucket]``: mean over the prompts reaching each bucket of their mean ‖in‖ (or
        ‖out‖) there; NaN where none does. ``mean_norms("block")`` is ‖resid_pre‖ by position:
        where massive activations show as a position-0 column far above the rest."""
        sums = {"in": self.in_sums, "out": self.out_sums}[side][component]  # [prompt, layer, bucket]
        reached = self.reached()  # [prompt, bucket]
        per_prompt = sums / np.maximum(self.n_tokens, 1)[:, None, :]  # 0 where not reached
        total = einops.reduce(per_prompt, "prompt layer bucket -> layer bucket", "sum")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(reached.any(axis=0)[None], total / reached.sum(axis=0)[None], np.nan)  # type: ignore[index]  # numpy types any(axis=0) as maybe a scalar

    def from_position(self, k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """Out sums, in sums ``[prompt, layer]`` and counts ``[prompt]`` of positions ``k`` and later.

        Summed from the buckets, not as the total less the first k positions: with a sink's norm
        1000× the rest, that difference would lose three digits to cancellation.
        """
        if k not in self.edges[: SINGLE_POSITIONS + 1]:
            raise FunnelError(
                f"can leave out the first 0 to {min(SINGLE_POSITIONS, int(self.edges[-1]))} "
                f"positions by position sums, not {k}"
            )
        chosen = self.edges[:-1] >= k  # [bucket]
        return (
            {c: v[..., chosen].sum(axis=-1) for c, v in self.out_sums.items()},
            {c: v[..., chosen].sum(axis=-1) for c, v in self.in_sums.items()},
            self.n_tokens[:, chosen].sum(axis=-1),
        )

    def without_first(self, k: int) -> PositionSums:
        """The same sums with positions ``0 … k-1`` emptied (their cells become blank)."""
        self.from_position(k)  # checks k
        keep = (self.edges[:-1] >= k).astype(np.float64)  # [bucket]
        return replace(
            self,
            n_tokens=self.n_tokens * keep.astype(np.int64),
            out_sums={c: v * keep for c, v in self.out_sums.items()},
            in_sums={c: v * keep for c, v in self.in_sums.items()},
            intervals=None,
        )

    def subset(self, prompt_indices) -> PositionSums:
        index = np.asarray(prompt_indices, dtype=np.int64)
        return replace(
            self,
            n_tokens=self.n_tokens[index],
            out_sums={c: v[index] for c, v in self.out_sums.items()},
            in_sums={c: v[index] for c, v in self.in_sums.items()},
            intervals=None,
        )

    def with_intervals(self, n_resamples: int, seed: int, confidence: float) -> PositionSums:
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
    def from_dict(cls, data: dict[str, Any]) -> PositionSums:
        per_prompt = data["per_prompt"]
        edges = np.asarray(data["edges"], dtype=np.int64)
        n_tokens = np.asarray(per_prompt["n_tokens"], dtype=np.int64).reshape(-1, len(edges) - 1)
        shape = (n_tokens.shape[0], -1, n_tokens.shape[1])
        return cls(
            edges=edges,
            n_tokens=n_tokens,
            sink_positions=int(data.get("sink_positions", 1)),
            out_sums={c: np.asarray(per_prompt[c]["out_sum"], dtype=np.float64).reshape(shape) for c in COMPONENTS},
            in_sums={c: np.asarray(per_prompt[c]["in_sum"], dtype=np.float64).reshape(shape) for c in COMPONENTS},
            intervals=PositionIntervals.from_dict(data["intervals"]) if data.get("intervals") else None,
        )


def bootstrap_position_intervals(
    positions: PositionSums, n_resamples: int, seed: int, confidence: float
) -> PositionIntervals:
    """Percentile bootstrap over prompts of every cell, from the per-prompt position sums.

    Each resample draws the prompts with replacement (``stats.resample_weights``, so the same seed
    draws the same prompts as the per-layer intervals); a cell's resampled gain is the mean over the
    drawn prompts that reach its bucket. A resample in which no drawn prompt reaches a bucket says
    nothing about it and is left out of that bucket's percentiles.
    """
    reached = positions.reached().astype(np.float64)  # [prompt, bucket]
    per_prompt = {
        component: np.nan_to_num(positions.per_prompt_gains(component))  # [prompt, layer, bucket]; 0 where unreached
        for component in COMPONENTS
    }
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
                rows.append(
                    {
                        **extra,
                        "model": result.model,
                        "layer": layer,
                        "component": component,
                        "position": label,
                        "position_start": int(positions.edges[bucket]),
                        "position_stop": int(positions.edges[bucket + 1]) - 1,
                        "gain": float(gains[layer, bucket]),
                        "ci_low": float(bounds[layer, bucket, 0]) if bounds is not None else float("nan"),
                        "ci_high": float(bounds[layer, bucket, 1]) if bounds is not None else float("nan"),
                        "n_prompts": int(counts[bucket]),
                    }
                )
    return rows


def _nullable(values: np.ndarray) -> list:
    """Nested lists with JSON null for NaN (empty cells): strict JSON has no NaN."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(array), None, array).tolist()  # type: ignore[call-overload]  # numpy stubs refuse None; None for NaN is meant


def _array(values) -> np.ndarray:
    return np.asarray(values, dtype=object).astype(np.float64)  # None -> nan
