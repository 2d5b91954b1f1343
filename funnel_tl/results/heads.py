"""``HeadResult``: every head's per-prompt norm and projection sums, its statistics, and heads.json.

The statistics and the glossary (h_i, W_O^i, the input, the shares) are defined in
``funnel_tl.measure.heads``, which measures them; this module only holds, derives, saves and loads them.
Figures of a ``HeadResult`` are drawn by ``funnel_tl.plots.heads``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from funnel_tl.analysis.stats import resample_weight_chunks
from funnel_tl.components import DEFINITIONS, gain_ratio
from funnel_tl.errors import FunnelError
from funnel_tl.measure.layers import check_measured
from funnel_tl.measure.layers import format_layers as _format_layers
from funnel_tl.results.files import (
    prompts_block,
    prompts_subset,
    read_json,
    require_pandas,
    subset_index,
    write_json_atomic,
)
from funnel_tl.results.folders import short_name
from funnel_tl.results.head_names import VALUES, label, norm_decimals, shown_heads
from funnel_tl.results.positions import HeadPositionSums
from funnel_tl.results.schema import check_heads

if TYPE_CHECKING:  # jaxtyping's shapes for type checkers and the API reference; importing it costs ~0.1 s
    import plotly.graph_objects as go
    from jaxtyping import Float, Int

HEADS_SCHEMA_VERSION = 1
HEADS_KIND = "funnel_tl.heads"  # the heads.json kind: a file format, not a module path


class HeadStat(NamedTuple):
    """One head's aggregated statistics (one row of ``HeadResult.top``)."""

    label: str
    layer: int
    head: int
    gain: float
    norm: float
    norm_share: float
    projection_share: float
    layer_attn_gain: float
    # The key/value head this query head reads (grouped-query attention); None without GQA.
    key_value_head: int | None = None


@dataclass(frozen=True)
class HeadResult:
    """Per-prompt sums of every head's output norm and projection; every statistic derives from them.

    Shapes (``layer`` indexes ``layers``, the measured layers, not necessarily all of them):
    ``head_norm_sums`` and ``head_projection_sums`` are ``[prompt, layer, head]`` sums over the
    counted tokens of ‖h_i‖ and ⟨h_i, a⟩/‖a‖; ``attn_out_sums`` and ``in_sums`` are
    ``[prompt, layer]`` sums of ‖a‖ and of ‖input‖ (the attention gain's denominator under
    ``definition``); ``n_tokens`` is ``[prompt]``. See the module docstring for the glossary.
    """

    model: str
    definition: str
    n_layers: int  # the model's layer count; ``layers`` says which were measured
    n_heads: int
    d_head: int
    d_model: int
    layers: tuple[int, ...]
    prompts: tuple[str, ...] | None  # None: texts not kept (keep_texts=False); their sha256 is in the provenance
    n_tokens: Int[np.ndarray, " prompt"]
    head_norm_sums: Float[np.ndarray, "prompt layer head"]
    head_projection_sums: Float[np.ndarray, "prompt layer head"]
    attn_out_sums: Float[np.ndarray, "prompt layer"]
    in_sums: Float[np.ndarray, "prompt layer"]
    n_key_value_heads: int | None = None
    drop_first: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    # Per-head sums by position bucket (positions.HeadPositionSums) with by_position=True, else None.
    positions: Any = None

    def __post_init__(self):
        if self.definition not in DEFINITIONS:
            raise ValueError(f"unknown definition {self.definition!r}: choose seed or residual")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)
        if self.prompts is not None:
            set_("prompts", tuple(self.prompts))
        set_("layers", check_measured(self.layers, self.n_layers))
        n_prompts = len(self.prompts) if self.prompts is not None else len(np.asarray(self.n_tokens))
        n_measured = len(self.layers)
        set_("n_tokens", np.asarray(self.n_tokens, dtype=np.int64))
        if self.n_tokens.shape != (n_prompts,):
            raise ValueError(f"n_tokens has shape {self.n_tokens.shape}, expected ({n_prompts},)")
        if n_prompts == 0:  # every gain would be the NaN mean of nothing
            raise FunnelError(f"{self.model}: a result needs at least one prompt, got none")
        if self.n_tokens.min() < 1:
            raise ValueError("every prompt must count at least one token")
        expected = {
            "head_norm_sums": (n_prompts, n_measured, self.n_heads),
            "head_projection_sums": (n_prompts, n_measured, self.n_heads),
            "attn_out_sums": (n_prompts, n_measured),
            "in_sums": (n_prompts, n_measured),
        }
        for name, shape in expected.items():
            array = np.asarray(getattr(self, name), dtype=np.float64).reshape(shape)
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} must be finite")
            if name != "head_projection_sums" and np.any(array < 0):
                raise ValueError(f"{name} must be non-negative (they are sums of norms)")
            set_(name, array)
        # by_position (funnel_tl.results.positions): the buckets must count the same tokens.
        if self.positions is not None and not np.array_equal(self.positions.n_tokens.sum(axis=1), self.n_tokens):
            raise ValueError("head position token counts do not add up to the per-prompt token counts")

    def __repr__(self) -> str:  # the arrays would flood a notebook cell
        return (
            f"HeadResult(model={self.model!r}, definition={self.definition!r}, layers=[{_format_layers(self.layers)}], "
            f"n_heads={self.n_heads}, n_prompts={self.n_prompts}, drop_first={self.drop_first})"
        )

    # ---- statistics ----------------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return len(self.n_tokens)

    @property
    def group_size(self) -> int | None:
        """Query heads per key/value head under grouped-query attention (SmolLM2-135M: 9 over 3,
        so 3), or None when every query head has its own (or the count is not known).

        Query head ``h`` reads key/value head ``h // group_size``: HF's ``repeat_kv`` repeats each
        key/value head for consecutive query heads, as TransformerLens does.
        """
        n_kv = self.n_key_value_heads
        if not n_kv or n_kv >= self.n_heads or self.n_heads % n_kv:
            return None
        return self.n_heads // n_kv

    def key_value_head(self, head: int) -> int | None:
        """The key/value head that query head ``head`` reads, or None without grouped-query attention.

        Args:
            head: a query head's index in its layer, 0 to ``n_heads - 1``.
        """
        return None if self.group_size is None else int(head) // self.group_size

    @property
    def labels(self) -> list[list[str]]:
        """``[layer][head]`` labels such as ``"L3H7"``."""
        return [[label(layer, head) for head in range(self.n_heads)] for layer in self.layers]

    def _per_token(self, sums: np.ndarray) -> np.ndarray:
        return sums / self.n_tokens.reshape((-1,) + (1,) * (sums.ndim - 1))

    @property
    def per_prompt_head_norms(self) -> Float[np.ndarray, "prompt layer head"]:
        """``[prompt, layer, head]``: each prompt's mean‖h_i‖ over its tokens."""
        return self._per_token(self.head_norm_sums)

    @property
    def per_prompt_head_gains(self) -> Float[np.ndarray, "prompt layer head"]:
        """``[prompt, layer, head]``: mean‖h_i‖ / (mean‖input‖ + 1e-10), the layers' formula."""
        return gain_ratio(self.per_prompt_head_norms, self._per_token(self.in_sums)[:, :, None])

    @property
    def per_prompt_attn_gains(self) -> Float[np.ndarray, "prompt layer"]:
        """``[prompt, layer]``: the layer's attention gain per prompt (as ``GainResult``'s)."""
        return gain_ratio(self._per_token(self.attn_out_sums), self._per_token(self.in_sums))

    @property
    def head_norms(self) -> Float[np.ndarray, "layer head"]:
        """``[layer, head]``: the mean over prompts of each prompt's mean‖h_i‖."""
        return self.per_prompt_head_norms.mean(axis=0)

    @property
    def head_gains(self) -> Float[np.ndarray, "layer head"]:
        """``[layer, head]``: the mean over prompts of the per-prompt head gains."""
        return self.per_prompt_head_gains.mean(axis=0)

    @property
    def attn_gains(self) -> Float[np.ndarray, " layer"]:
        """``[layer]``: the layer's attention gain, equal to ``measure_gains(...).attn_gains[layers]``."""
        return self.per_prompt_attn_gains.mean(axis=0)

    @property
    def head_projections(self) -> Float[np.ndarray, "layer head"]:
        """``[layer, head]``: the mean over prompts of each prompt's mean ⟨h_i, a⟩/‖a‖."""
        return self._per_token(self.head_projection_sums).mean(axis=0)

    @property
    def norm_shares(self) -> Float[np.ndarray, "layer head"]:
        """``[layer, head]``: per prompt Σ_t‖h_i‖ / Σ_t Σ_j‖h_j‖, then the mean over prompts."""
        totals = self.head_norm_sums.sum(axis=2, keepdims=True)  # [prompt, layer, 1]
        return _safe_ratio(self.head_norm_sums, totals).mean(axis=0)

    @property
    def projection_shares(self) -> Float[np.ndarray, "layer head"]:
        """``[layer, head]``: per prompt Σ_t⟨h_i, a⟩/‖a‖ / Σ_t‖a‖, then the mean over prompts."""
        return _safe_ratio(self.head_projection_sums, self.attn_out_sums[:, :, None]).mean(axis=0)

    @property
    def bias_projection_shares(self) -> Float[np.ndarray, " layer"]:
        """``[layer]``: the share of ‖a‖ that b_O supplies along a (0 without b_O, up to rounding)."""
        return 1.0 - self.projection_shares.sum(axis=1)

    @property
    def read_at(self) -> str | None:
        """Where the heads were read when not at ``hook_attn_out``: before a post-norm (sandwich and
        post-norm blocks), e.g. ``"ln1_post.hook_in"``; then head gains and ``attn_gains`` are the
        attention module's own (before the post-norm), not the seed's attention gain. None otherwise."""
        return self.provenance.get("heads_read_at")

    def relative_to(self) -> str | None:
        """One line saying what the heads' gains are relative to when read before a post-norm, else None."""
        if self.read_at is None:
            return None
        return (
            f"heads read before the attention's post-norm ({self.read_at}), where they add up: their gains and "
            "the layer gain beside them are the attention module's own output over its input, without the "
            "post-norm's factor (the seed's attention gain includes it)"
        )

    def layer_index(self, layer: int) -> int:
        """Row of ``layer`` in the ``[layer, ...]`` arrays (they hold the measured layers only).

        Args:
            layer: a true layer index, one of ``layers`` (else ``FunnelError``).
        """
        if layer not in self.layers:
            raise FunnelError(f"layer {layer} was not measured (measured: {_format_layers(self.layers)})")
        return self.layers.index(layer)

    def stat(self, layer: int, head: int) -> HeadStat:
        """The aggregated statistics of one head, e.g. ``result.stat(3, 7)``.

        Args:
            layer: a true layer index, one of ``layers``.
            head: the head's index in its layer, 0 to ``n_heads - 1``.
        """
        layer, head = int(layer), int(head)
        row = self.layer_index(layer)
        if not 0 <= head < self.n_heads:
            raise FunnelError(f"head {head} out of range: layers have {self.n_heads} heads (0-{self.n_heads - 1})")
        return HeadStat(
            label(layer, head),
            layer,
            head,
            float(self.head_gains[row, head]),
            float(self.head_norms[row, head]),
            float(self.norm_shares[row, head]),
            float(self.projection_shares[row, head]),
            float(self.attn_gains[row]),
            self.key_value_head(head),
        )

    def top(self, k: int = 10, by: str = "gain", largest: bool = True) -> list[HeadStat]:
        """The ``k`` heads with the largest (or smallest) ``by``, across all measured layers.

        Args:
            k: how many heads (all of them when ``k`` is larger than their number).
            by: ``"gain"`` (default), ``"norm"``, ``"norm_share"`` or ``"projection_share"``.
            largest: rank from the largest value down (False: from the smallest up).

        Returns:
            ``k`` ``HeadStat`` rows in rank order (ties in layer and head order).

        >>> [(head.label, round(head.gain, 2)) for head in result.top(3)]  # doctest: +SKIP
        [('L5H3', 2.08), ('L2H0', 1.93), ('L1H2', 1.89)]
        """
        if by not in VALUES:
            raise FunnelError(f"unknown ranking {by!r}: choose {', '.join(VALUES)}")
        values = getattr(self, VALUES[by])  # [layer, head]
        order = np.argsort(-values if largest else values, axis=None, kind="stable")[: max(int(k), 0)]
        return [
            self.stat(self.layers[row], head) for row, head in (np.unravel_index(flat, values.shape) for flat in order)
        ]

    def format_top(self, k: int = 10, by: str = "gain") -> str:
        """``top(k, by)`` as a text table (what ``funnel-tl heads`` prints); under grouped-query
        attention a ``kv`` column names the key/value head each query head reads.

        Args:
            k: how many heads the table ranks.
            by: the ranking, as ``top``'s.
        """
        grouped = self.group_size is not None
        header = (
            f"{'rank':>4}  {'head':<8} " + (f"{'kv':>3} " if grouped else "") + f"{'gain':>8} {'norm':>10} "
            f"{'norm share':>10} {'proj share':>10} {'layer attn gain':>15}"
        )

        rows = self.top(k, by)
        shown = shown_heads(len(rows), self.head_gains.size)
        lines = [
            f"{shown} heads by {by.replace('_', ' ')} ({short_name(self.model)}, definition={self.definition})"
            + (
                f"; {self.n_heads} query heads read {self.n_key_value_heads} key/value heads, "
                f"{self.group_size} each (kv)"
                if grouped
                else ""
            ),
            *filter(None, [self.relative_to()]),
            header,
        ]
        decimals = norm_decimals([row.norm for row in rows])
        for rank, row in enumerate(rows, start=1):
            kv = f"{row.key_value_head:>3} " if grouped else ""
            lines.append(
                f"{rank:>4}  {row.label:<8} {kv}{row.gain:>8.4f} {row.norm:>10.{decimals}f} "
                f"{row.norm_share:>10.3f} {row.projection_share:>10.3f} {row.layer_attn_gain:>15.4f}"
            )
        lines.append(
            "(gain: the head's mean output norm ‖h_i‖ over the mean norm its layer's attention reads; "
            "norm: that mean ‖h_i‖; norm share: its part of the layer's head norms; proj share: its "
            "part of ‖a‖, the attention's output, along a)"
        )
        return "\n".join(lines)

    def gain_intervals(
        self, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
    ) -> Float[np.ndarray, "layer head 2"]:
        """``[layer, head, 2]``: percentile bootstrap intervals over prompts of every head's gain.

        Drawn exactly as the layers' intervals (``funnel_tl.analysis.stats``): the prompts resampled with
        replacement, the mean of the per-prompt head gains recomputed per resample.

        Args:
            n_resamples: resamples of the prompts (at least 2 prompts are needed).
            seed: the resamples' random seed (the same resamples as the layers' percentile
                bootstrap with that seed).
            confidence: the coverage, between 0 and 1 (0.95 takes the 2.5th and 97.5th percentiles).

        Returns:
            ``[layer, head, 2]``: lower and upper bound of each head's gain, ``layer`` over ``layers``.
        """
        if self.n_prompts < 2:
            raise FunnelError(f"{self.model}: a bootstrap over prompts needs at least 2 prompts, got {self.n_prompts}")
        if not 0 < confidence < 1:
            raise FunnelError(f"confidence must lie between 0 and 1 (0.95 for 95%), got {confidence}")
        per_prompt = self.per_prompt_head_gains  # [prompt, layer, head]
        resampled = np.empty((n_resamples, *per_prompt.shape[1:]))  # [resample, layer, head]
        for start, stop, weights in resample_weight_chunks(self.n_prompts, n_resamples, seed):  # [resample, prompt]
            resampled[start:stop] = np.tensordot(weights, per_prompt, axes=1)
        tail = 100 * (1 - confidence) / 2
        bounds = np.percentile(resampled, [tail, 100 - tail], axis=0)  # [2, layer, head]
        return np.moveaxis(bounds, 0, -1)  # [layer, head, 2]

    def to_pandas(self, intervals: bool = False):
        """Every head as a tidy table: one row per measured layer and head (pandas, imported here).

        Columns: model, layer, head, label, component (``"head"``), gain, ci_low, ci_high (95%
        bootstrap intervals over prompts with ``intervals=True``, else NaN), n_prompts, norm,
        norm_share, projection_share, layer_attn_gain, key_value_head (the key/value head a query
        head reads under grouped-query attention; ``<NA>`` without).

        Args:
            intervals: draw ``gain_intervals()`` (2,000 resamples, seed 0) for ci_low and ci_high.

        >>> heads.to_pandas().pivot(index="layer", columns="head", values="gain")  # doctest: +SKIP
        """
        pd = require_pandas()
        bounds = self.gain_intervals() if intervals else np.full(self.head_gains.shape + (2,), np.nan)
        rows = []
        for row, layer in enumerate(self.layers):
            for head in range(self.n_heads):
                rows.append(
                    {
                        "model": self.model,
                        "layer": layer,
                        "head": head,
                        "label": label(layer, head),
                        "component": "head",
                        "gain": float(self.head_gains[row, head]),
                        "ci_low": float(bounds[row, head, 0]),
                        "ci_high": float(bounds[row, head, 1]),
                        "n_prompts": self.n_prompts,
                        "norm": float(self.head_norms[row, head]),
                        "norm_share": float(self.norm_shares[row, head]),
                        "projection_share": float(self.projection_shares[row, head]),
                        "layer_attn_gain": float(self.attn_gains[row]),
                        "key_value_head": self.key_value_head(head),
                    }
                )
        return pd.DataFrame(rows).astype({"key_value_head": "Int64"})

    def subset(self, prompt_indices: Sequence[int] | Int[np.ndarray, " index"]) -> HeadResult:
        """A new result over some of the prompts (for bootstrap resampling and checks).

        Args:
            prompt_indices: ``[index]`` positions in this result's prompts, at least one (repeats
                allowed, negative ones count from the end), as ``GainResult.subset``'s.
        """
        index = subset_index(prompt_indices, self.n_prompts)
        prompts, provenance = prompts_subset(self.prompts, self.provenance, index)
        return HeadResult(
            model=self.model,
            definition=self.definition,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_model=self.d_model,
            layers=self.layers,
            prompts=prompts,
            n_tokens=self.n_tokens[index],
            head_norm_sums=self.head_norm_sums[index],
            head_projection_sums=self.head_projection_sums[index],
            attn_out_sums=self.attn_out_sums[index],
            in_sums=self.in_sums[index],
            n_key_value_heads=self.n_key_value_heads,
            drop_first=self.drop_first,
            provenance=provenance,
            positions=None if self.positions is None else self.positions.subset(index),
        )

    def head_position_gains(self) -> Float[np.ndarray, "layer head bucket"]:
        """``[layer, head, bucket]`` head gains by position (``funnel_tl.results.positions``); by_position=True only.

        Each cell as ``head_gains`` with the bucket in place of the prompt: the mean, over the
        prompts reaching it, of mean‖h_i‖ / (mean‖input‖ + 1e-10) there. Buckets:
        ``self.positions.labels``.
        """
        if self.positions is None:
            raise FunnelError(
                f"{self.model}: no position-resolved head sums: measure with by_position=True "
                "(funnel-tl heads --by-position)"
            )
        return self.positions.gains()

    # ---- figures (drawn by funnel_tl.plots.heads) ----------------------------------------------
    def heatmap(self, value: str = "gain", title: str | None = None) -> go.Figure:
        """A layer × head heatmap of ``value`` (see ``top``), every statistic in the hover.

        Args:
            value: ``"gain"`` (log colour scale), ``"norm"``, ``"norm_share"`` or ``"projection_share"``.
            title: the figure's heading; None: the model's name and the statistic.

        Returns:
            A ``plotly.graph_objects.Figure``; show it in a notebook or ``.write_html(path)``.
        """
        # Imported on use: keeps torch out of importing this module.
        from funnel_tl.plots.heads import plot_heads

        return plot_heads(self, value, title)

    def to_html(self, k: int = 20, plotlyjs: str | bool = True) -> str:
        """The heads page: the gain heatmap and the top-``k`` heads table.

        Args:
            k: how many heads the table ranks by gain.
            plotlyjs: True embeds plotly.js (a standalone page that opens offline); a string is
                the relative path of a shared ``plotly.min.js`` beside the page (see ``funnel_tl.plots``).

        Returns:
            The page's HTML.
        """
        # Imported on use: keeps torch out of importing this module.
        from funnel_tl.plots.heads import heads_page

        return heads_page(self, k, plotlyjs=plotlyjs)

    # ---- heads.json ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """heads.json: ``head_norm`` and ``head_gain`` as ``[layer][head]`` lists over ``layers``."""
        return {
            "schema_version": HEADS_SCHEMA_VERSION,
            "kind": HEADS_KIND,
            "model": self.model,
            "definition": self.definition,
            "n_layers": int(self.n_layers),
            "n_heads": int(self.n_heads),
            "n_key_value_heads": None if self.n_key_value_heads is None else int(self.n_key_value_heads),
            "d_head": int(self.d_head),
            "hidden_dim": int(self.d_model),
            "n_prompts": int(self.n_prompts),
            "drop_first": int(self.drop_first),
            "layers": list(self.layers),
            "head_norm": self.head_norms.tolist(),
            "head_gain": self.head_gains.tolist(),
            "head_norm_share": self.norm_shares.tolist(),
            "head_projection_share": self.projection_shares.tolist(),
            "attention_gain": self.attn_gains.tolist(),
            "top_heads": [row._asdict() for row in self.top(10)],
            "per_prompt": {
                "n_tokens": [int(n) for n in self.n_tokens],
                "head_norm_sum": self.head_norm_sums.tolist(),
                "head_projection_sum": self.head_projection_sums.tolist(),
                "attn_out_sum": self.attn_out_sums.tolist(),
                "in_sum": self.in_sums.tolist(),
            },
            "prompts": prompts_block(self.prompts, self.n_prompts, self.provenance),
            **({"by_position": self.positions.to_dict()} if self.positions is not None else {}),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "heads data") -> HeadResult:
        """A result read back from its heads.json form (``to_dict``), checked against the schema.

        Args:
            data: the parsed heads.json.
            source: what ``data`` was read from, named in a ``FunnelError`` when it does not fit.
        """
        if not isinstance(data, dict) or data.get("kind") != HEADS_KIND:
            looks_like = (
                "a results.json of `funnel-tl run` (load it with GainResult.load)"
                if isinstance(data, dict) and "attention" in data
                else "not a funnel_tl heads file"
            )
            raise FunnelError(f"{source} is {looks_like}: give a heads.json written by `funnel-tl heads`")
        version = data.get("schema_version")
        if version != HEADS_SCHEMA_VERSION:
            raise FunnelError(
                f"{source} has heads schema_version {version}; this funnel_tl reads "
                f"{HEADS_SCHEMA_VERSION}: rerun `funnel-tl heads` or install the matching funnel_tl"
            )
        check_heads(data, source)  # every field read below, of the right type: one line naming a bad one
        try:
            per_prompt = data["per_prompt"]
            return cls(
                model=data["model"],
                definition=data["definition"],
                n_layers=data["n_layers"],
                n_heads=data["n_heads"],
                d_head=data["d_head"],
                d_model=data["hidden_dim"],
                layers=tuple(data["layers"]),
                prompts=None if data["prompts"]["texts"] is None else tuple(data["prompts"]["texts"]),
                n_tokens=np.asarray(per_prompt["n_tokens"]),
                head_norm_sums=np.asarray(per_prompt["head_norm_sum"], dtype=np.float64),
                head_projection_sums=np.asarray(per_prompt["head_projection_sum"], dtype=np.float64),
                attn_out_sums=np.asarray(per_prompt["attn_out_sum"], dtype=np.float64),
                in_sums=np.asarray(per_prompt["in_sum"], dtype=np.float64),
                n_key_value_heads=data.get("n_key_value_heads"),
                drop_first=data.get("drop_first", 0),
                provenance=data.get("provenance", {}),
                positions=_head_positions_from_dict(data.get("by_position")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise FunnelError(f"{source} is not a complete heads.json (missing or bad {error})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write heads.json atomically: a crash never leaves a half-written file.

        Args:
            path: the file to write (its folder must exist), usually ``<out>/heads.json``.

        Returns:
            The path written.
        """
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> HeadResult:
        """A result read back from a heads.json that ``save`` (or ``funnel-tl heads``) wrote.

        Args:
            path: the heads.json file.
        """
        return cls.from_dict(read_json(path), source=str(path))

    def save_html(self, path: str | os.PathLike, k: int = 20, self_contained: bool = False) -> Path:
        """Write the heads page atomically (heads.html).

        Args:
            path: the page to write, usually ``<out>/heads.html``.
            k: how many heads the page's table ranks by gain.
            self_contained: embed plotly.js in the page; by default it loads a ``plotly.min.js``
                written once into its folder (offline, and shared with the other pages there).

        Returns:
            The path written.
        """
        # Imported on use: keeps plotly and torch out of importing this module.
        from funnel_tl.plots.pages import write_page

        return write_page(path, lambda plotlyjs: self.to_html(k, plotlyjs=plotlyjs), self_contained)


def _head_positions_from_dict(block):
    if block is None:
        return None

    return HeadPositionSums.from_dict(block)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a layer whose heads all write nothing)."""
    denominator = np.broadcast_to(denominator, numerator.shape)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)
