"""Per-head drill-down: which heads carry each layer's attention gain.

Glossary (DESIGN.md §2; hook names as in TransformerLens). For layer ``l``, head ``i``, token ``t``:

- ``z_i`` = ``blocks.{l}.attn.hook_z[..., i, :]`` (``[d_head]``), the head's mixed values: what the
  attention output projection reads. With grouped-query attention (Llama, Mistral: fewer key/value
  heads than query heads) ``hook_z`` still has one slice per *query* head, so every query head is
  its own head here; heads ``i`` sharing a key/value head form group ``i // (n_heads / n_kv_heads)``.
- ``W_O^i`` = ``blocks.{l}.attn.W_O[i]`` (``[d_head, d_model]``), the head's slice of the output
  projection; ``b_O`` its bias (absent in Llama).
- ``h_i = z_i W_O^i`` (``[d_model]``): the head's output, without ``b_O``. Σ_i h_i + b_O = a, the
  layer's ``hook_attn_out``; ``head_gains`` checks this on its first batch.
- the *input*: the same denominator as the layer's attention gain under the chosen definition
  (``"seed"``: ‖u_attn‖, the LayerNorm output attention reads; ``"residual"``: ‖resid_pre‖).

Statistics, each aggregated as the layers' gains are (per prompt over its counted tokens, then
the mean over prompts):

================  =======================================================================
``head_norms``     mean‖h_i‖
``head_gains``     mean‖h_i‖ / (mean‖input‖ + 1e-10): the head's gain, comparable to ``attn_gains``
``norm_shares``    Σ_t‖h_i‖ / Σ_t Σ_j‖h_j‖: the head's share of the summed head norms (Σ_i = 1)
``projection_shares``  Σ_t ⟨h_i, a⟩/‖a‖ / Σ_t ‖a‖: how much of ‖a‖ the head supplies along a
                   itself. Signed (a head can cancel others); Σ_i + the b_O term = 1 exactly,
                   because ⟨Σ_i h_i + b_O, a⟩/‖a‖ = ‖a‖ token by token.
================  =======================================================================

``norm_shares`` says how large a head's write is; ``projection_shares`` how much of that write
survives into the layer output. Heads that write a lot but cancel each other show large norm
shares and small (or negative) projection shares.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import einops
import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from .errors import FunnelError
from .gains import IDENTITY_TOLERANCE, _provenance, plan_hooks, prepare_tokens, token_norms
from .models import model_name
from .prompts import Batch, make_batches
from .results import DEFINITIONS, EPSILON, read_json, write_json_atomic, write_text_atomic

HEADS_SCHEMA_VERSION = 1
HEADS_KIND = "funnel_tl.heads"
# What ``top`` and ``heatmap`` can rank or colour by: HeadResult attribute per key.
VALUES = {"gain": "head_gains", "norm": "head_norms", "norm_share": "norm_shares",
          "projection_share": "projection_shares"}


def label(layer: int, head: int) -> str:
    """TransformerLens' head label: ``label(3, 7) == "L3H7"``."""
    return f"L{layer}H{head}"


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
    prompts: tuple[str, ...]
    n_tokens: np.ndarray
    head_norm_sums: np.ndarray
    head_projection_sums: np.ndarray
    attn_out_sums: np.ndarray
    in_sums: np.ndarray
    n_key_value_heads: int | None = None
    drop_first: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.definition not in DEFINITIONS:
            raise ValueError(f"unknown definition {self.definition!r}: choose seed or residual")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)
        set_("prompts", tuple(self.prompts))
        set_("layers", tuple(int(layer) for layer in self.layers))
        n_prompts, n_measured = len(self.prompts), len(self.layers)
        if any(not 0 <= layer < self.n_layers for layer in self.layers) or len(set(self.layers)) != n_measured:
            raise ValueError(f"layers {self.layers} must be distinct and within 0..{self.n_layers - 1}")
        set_("n_tokens", np.asarray(self.n_tokens, dtype=np.int64))
        if self.n_tokens.shape != (n_prompts,):
            raise ValueError(f"n_tokens has shape {self.n_tokens.shape}, expected ({n_prompts},)")
        if n_prompts and self.n_tokens.min() < 1:
            raise ValueError("every prompt must count at least one token")
        expected = {"head_norm_sums": (n_prompts, n_measured, self.n_heads),
                    "head_projection_sums": (n_prompts, n_measured, self.n_heads),
                    "attn_out_sums": (n_prompts, n_measured), "in_sums": (n_prompts, n_measured)}
        for name, shape in expected.items():
            array = np.asarray(getattr(self, name), dtype=np.float64).reshape(shape)
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} must be finite")
            if name != "head_projection_sums" and np.any(array < 0):
                raise ValueError(f"{name} must be non-negative (they are sums of norms)")
            set_(name, array)

    def __repr__(self) -> str:  # the arrays would flood a notebook cell
        return (f"HeadResult(model={self.model!r}, definition={self.definition!r}, layers=[{_format_layers(self.layers)}], "
                f"n_heads={self.n_heads}, n_prompts={self.n_prompts}, drop_first={self.drop_first})")

    # ---- statistics ----------------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def labels(self) -> list[list[str]]:
        """``[layer][head]`` labels such as ``"L3H7"``."""
        return [[label(layer, head) for head in range(self.n_heads)] for layer in self.layers]

    def _per_token(self, sums: np.ndarray) -> np.ndarray:
        return sums / self.n_tokens.reshape((-1,) + (1,) * (sums.ndim - 1))

    @property
    def per_prompt_head_norms(self) -> np.ndarray:
        """``[prompt, layer, head]``: each prompt's mean‖h_i‖ over its tokens."""
        return self._per_token(self.head_norm_sums)

    @property
    def per_prompt_head_gains(self) -> np.ndarray:
        """``[prompt, layer, head]``: mean‖h_i‖ / (mean‖input‖ + 1e-10), the layers' formula."""
        return self.per_prompt_head_norms / (self._per_token(self.in_sums) + EPSILON)[:, :, None]

    @property
    def per_prompt_attn_gains(self) -> np.ndarray:
        """``[prompt, layer]``: the layer's attention gain per prompt (as ``GainResult``'s)."""
        return self._per_token(self.attn_out_sums) / (self._per_token(self.in_sums) + EPSILON)

    @property
    def head_norms(self) -> np.ndarray:
        """``[layer, head]``: the mean over prompts of each prompt's mean‖h_i‖."""
        return self.per_prompt_head_norms.mean(axis=0)

    @property
    def head_gains(self) -> np.ndarray:
        """``[layer, head]``: the mean over prompts of the per-prompt head gains."""
        return self.per_prompt_head_gains.mean(axis=0)

    @property
    def attn_gains(self) -> np.ndarray:
        """``[layer]``: the layer's attention gain, equal to ``measure_gains(...).attn_gains[layers]``."""
        return self.per_prompt_attn_gains.mean(axis=0)

    @property
    def head_projections(self) -> np.ndarray:
        """``[layer, head]``: the mean over prompts of each prompt's mean ⟨h_i, a⟩/‖a‖."""
        return self._per_token(self.head_projection_sums).mean(axis=0)

    @property
    def norm_shares(self) -> np.ndarray:
        """``[layer, head]``: per prompt Σ_t‖h_i‖ / Σ_t Σ_j‖h_j‖, then the mean over prompts."""
        totals = self.head_norm_sums.sum(axis=2, keepdims=True)  # [prompt, layer, 1]
        return _safe_ratio(self.head_norm_sums, totals).mean(axis=0)

    @property
    def projection_shares(self) -> np.ndarray:
        """``[layer, head]``: per prompt Σ_t⟨h_i, a⟩/‖a‖ / Σ_t‖a‖, then the mean over prompts."""
        return _safe_ratio(self.head_projection_sums, self.attn_out_sums[:, :, None]).mean(axis=0)

    @property
    def bias_projection_shares(self) -> np.ndarray:
        """``[layer]``: the share of ‖a‖ that b_O supplies along a (0 without b_O, up to rounding)."""
        return 1.0 - self.projection_shares.sum(axis=1)

    def layer_index(self, layer: int) -> int:
        """Row of ``layer`` in the ``[layer, ...]`` arrays (they hold the measured layers only)."""
        if layer not in self.layers:
            raise FunnelError(f"layer {layer} was not measured (measured: {_format_layers(self.layers)})")
        return self.layers.index(layer)

    def stat(self, layer: int, head: int) -> HeadStat:
        """The aggregated statistics of one head, e.g. ``result.stat(3, 7)``."""
        layer, head = int(layer), int(head)
        row = self.layer_index(layer)
        if not 0 <= head < self.n_heads:
            raise FunnelError(f"head {head} out of range: layers have {self.n_heads} heads (0-{self.n_heads - 1})")
        return HeadStat(label(layer, head), layer, head, float(self.head_gains[row, head]),
                        float(self.head_norms[row, head]), float(self.norm_shares[row, head]),
                        float(self.projection_shares[row, head]), float(self.attn_gains[row]))

    def top(self, k: int = 10, by: str = "gain", largest: bool = True) -> list[HeadStat]:
        """The ``k`` heads with the largest (or smallest) ``by``, across all measured layers.

        ``by``: ``"gain"`` (default), ``"norm"``, ``"norm_share"`` or ``"projection_share"``.

        >>> result.top(3)  # doctest: +SKIP
        [HeadStat(label='L5H2', layer=5, head=2, gain=0.31, ...), ...]
        """
        if by not in VALUES:
            raise FunnelError(f"unknown ranking {by!r}: choose {', '.join(VALUES)}")
        values = getattr(self, VALUES[by])  # [layer, head]
        order = np.argsort(-values if largest else values, axis=None, kind="stable")[: max(int(k), 0)]
        return [self.stat(self.layers[row], head)
                for row, head in (np.unravel_index(flat, values.shape) for flat in order)]

    def format_top(self, k: int = 10, by: str = "gain") -> str:
        """``top(k, by)`` as a text table (what ``funnel-tl heads`` prints)."""
        header = (f"{'rank':>4}  {'head':<8} {'gain':>8} {'norm':>10} {'norm share':>10} "
                  f"{'proj share':>10} {'layer attn gain':>15}")
        lines = [f"Top {k} heads by {by.replace('_', ' ')} ({self.model}, definition={self.definition})", header]
        for rank, row in enumerate(self.top(k, by), start=1):
            lines.append(f"{rank:>4}  {row.label:<8} {row.gain:>8.4f} {row.norm:>10.4g} {row.norm_share:>10.3f} "
                         f"{row.projection_share:>10.3f} {row.layer_attn_gain:>15.4f}")
        return "\n".join(lines)

    def subset(self, prompt_indices) -> "HeadResult":
        """A new result over some of the prompts (for bootstrap resampling and checks)."""
        index = np.asarray(prompt_indices, dtype=np.int64)
        return HeadResult(
            model=self.model, definition=self.definition, n_layers=self.n_layers, n_heads=self.n_heads,
            d_head=self.d_head, d_model=self.d_model, layers=self.layers,
            prompts=tuple(self.prompts[i] for i in index), n_tokens=self.n_tokens[index],
            head_norm_sums=self.head_norm_sums[index], head_projection_sums=self.head_projection_sums[index],
            attn_out_sums=self.attn_out_sums[index], in_sums=self.in_sums[index],
            n_key_value_heads=self.n_key_value_heads, drop_first=self.drop_first, provenance=dict(self.provenance),
        )

    # ---- figures -------------------------------------------------------------------------------
    def heatmap(self, value: str = "gain", title: str | None = None):
        """A layer × head heatmap of ``value`` (see ``top``), every statistic in the hover.

        Returns a ``plotly.graph_objects.Figure``; show it in a notebook or ``.write_html(path)``.
        """
        import plotly.graph_objects as go

        if value not in VALUES:
            raise FunnelError(f"unknown heatmap value {value!r}: choose {', '.join(VALUES)}")
        shown = getattr(self, VALUES[value])  # [layer, head]
        group = self.n_heads // self.n_key_value_heads if self.n_key_value_heads else None
        hover = [[
            f"<b>{label(layer, head)}</b><br>gain {self.head_gains[row, head]:.4f} "
            f"(layer attn gain {self.attn_gains[row]:.4f})<br>mean norm {self.head_norms[row, head]:.4g}"
            f"<br>norm share {self.norm_shares[row, head]:.3f}<br>projection share {self.projection_shares[row, head]:.3f}"
            + (f"<br>key/value head {head // group}" if group else "")
            for head in range(self.n_heads)] for row, layer in enumerate(self.layers)]
        signed = value == "projection_share"
        figure = go.Figure(go.Heatmap(
            z=shown, x=list(range(self.n_heads)), y=list(self.layers), text=hover, hoverinfo="text",
            colorscale="RdBu" if signed else "Viridis", zmid=0 if signed else None,
            colorbar={"title": {"text": value.replace("_", " ")}},
        ))
        figure.update_layout(
            title=title or f"{self.model}: per-head {value.replace('_', ' ')} ({self.definition} definition)",
            xaxis={"title": "head", "dtick": 1 if self.n_heads <= 32 else None},
            yaxis={"title": "layer", "autorange": "reversed", "type": "category"},
            template="plotly_white",
        )
        return figure

    def to_html(self, k: int = 20) -> str:
        """A self-contained page (opens offline): the gain heatmap and the top-``k`` heads table."""
        figure = self.heatmap().to_html(full_html=False, include_plotlyjs=True)
        rows = "\n".join(
            f"<tr><td>{rank}</td><td>{row.label}</td><td>{row.gain:.4f}</td><td>{row.norm:.4g}</td>"
            f"<td>{row.norm_share:.3f}</td><td>{row.projection_share:.3f}</td><td>{row.layer_attn_gain:.4f}</td></tr>"
            for rank, row in enumerate(self.top(k), start=1))
        name = html.escape(self.model)
        return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{name}: per-head gains</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}}</style></head>
<body><h1>{name}: per-head gains</h1>
<p>Definition <code>{self.definition}</code>, {self.n_prompts} prompts, first {self.drop_first} positions dropped.
Head gain = mean‖z<sub>i</sub> W<sub>O</sub><sup>i</sup>‖ over the layer's attention-gain denominator.</p>
{figure}
<h2>Top {k} heads by gain</h2>
<table><tr><th>rank</th><th>head</th><th>gain</th><th>mean norm</th><th>norm share</th><th>projection share</th>
<th>layer attn gain</th></tr>
{rows}
</table></body></html>
"""

    # ---- heads.json ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """heads.json: ``head_norm`` and ``head_gain`` as ``[layer][head]`` lists over ``layers``."""
        from .prompts import prompts_sha256

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
            "prompts": {"sha256": prompts_sha256(self.prompts), "texts": list(self.prompts)},
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "heads data") -> "HeadResult":
        if not isinstance(data, dict) or data.get("kind") != HEADS_KIND:
            looks_like = ("a results.json of `funnel-tl run` (load it with GainResult.load)"
                          if isinstance(data, dict) and "attention" in data else "not a funnel_tl heads file")
            raise FunnelError(f"{source} is {looks_like}: give a heads.json written by `funnel-tl heads`")
        version = data.get("schema_version")
        if version != HEADS_SCHEMA_VERSION:
            raise FunnelError(f"{source} has heads schema_version {version}; this funnel_tl reads "
                              f"{HEADS_SCHEMA_VERSION}: rerun `funnel-tl heads` or install the matching funnel_tl")
        try:
            per_prompt = data["per_prompt"]
            return cls(
                model=data["model"], definition=data["definition"], n_layers=data["n_layers"],
                n_heads=data["n_heads"], d_head=data["d_head"], d_model=data["hidden_dim"],
                layers=tuple(data["layers"]), prompts=tuple(data["prompts"]["texts"]),
                n_tokens=np.asarray(per_prompt["n_tokens"]),
                head_norm_sums=np.asarray(per_prompt["head_norm_sum"], dtype=np.float64),
                head_projection_sums=np.asarray(per_prompt["head_projection_sum"], dtype=np.float64),
                attn_out_sums=np.asarray(per_prompt["attn_out_sum"], dtype=np.float64),
                in_sums=np.asarray(per_prompt["in_sum"], dtype=np.float64),
                n_key_value_heads=data.get("n_key_value_heads"), drop_first=data.get("drop_first", 0),
                provenance=data.get("provenance", {}),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise FunnelError(f"{source} is not a complete heads.json (missing or bad {error})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write heads.json atomically: a crash never leaves a half-written file."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadResult":
        return cls.from_dict(read_json(path), source=str(path))

    def save_html(self, path: str | os.PathLike, k: int = 20) -> Path:
        """Write ``to_html(k)`` atomically (heads.html)."""
        return write_text_atomic(path, self.to_html(k))


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a layer whose heads all write nothing)."""
    denominator = np.broadcast_to(denominator, numerator.shape)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def _format_layers(layers: Sequence[int]) -> str:
    return ", ".join(str(layer) for layer in layers)


# ---- choosing layers -----------------------------------------------------------------------------
def parse_layers(spec: str | None) -> list[int] | None:
    """Parse ``--layers``: ``"3"``, ``"0,5,7"``, ``"4-8"`` (inclusive), ``"-1"`` (the last); None = all.

    >>> parse_layers("0,2-4,-1")
    [0, 2, 3, 4, -1]
    """
    if spec is None or not spec.strip():
        return None
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        if span:
            first, last = int(span.group(1)), int(span.group(2))
            if first > last:
                raise FunnelError(f"--layers range {part!r} runs backwards: write {last}-{first}")
            layers.extend(range(first, last + 1))
        elif re.fullmatch(r"-?\d+", part):
            layers.append(int(part))
        else:
            raise FunnelError(f"cannot read --layers {spec!r}: give layer numbers and ranges such as 0,3,5-7 or -1")
    return layers


def resolve_layers(layers: int | Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    """Distinct layer indices, ascending; negative ones count from the end as in Python."""
    if layers is None:
        return tuple(range(n_layers))
    requested = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    if not requested:
        raise FunnelError("no layers asked for: give at least one layer, or None for all")
    chosen = set()
    for layer in requested:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise FunnelError(f"layer {layer!r} is not an integer")
        if not -n_layers <= layer < n_layers:
            raise FunnelError(f"layer {layer} out of range: the model has {n_layers} layers (0-{n_layers - 1})")
        chosen.add(int(layer) % n_layers)
    return tuple(sorted(chosen))


# ---- measurement ---------------------------------------------------------------------------------
def head_gains(model, prompts: str | Sequence[str] = "seed", definition: str = "seed",
               layers: int | Sequence[int] | None = None, batch_size: int = 8, drop_first: int = 0,
               tokenizer=None, progress: bool | None = None,
               max_tokens_per_prompt: int | str | None = None) -> HeadResult:
    """Measure every head's output norm, gain and share of the layer output on a prompt set.

    Arguments as ``measure_gains`` (same tokens, batching, ``definition`` and ``drop_first``, so
    head gains share the denominator of the layers' attention gains), plus ``layers``: a layer, a
    list of layers (negative counts from the end) or None for all. Only ``attn.hook_z``,
    ``hook_attn_out`` and the denominator's hook of those layers are cached, and each layer is
    reduced to per-head norms at once without forming any ``[batch, pos, head, d_model]`` tensor.

    >>> from funnel_tl import load_model, head_gains
    >>> heads = head_gains(load_model(device="cpu"), "seed")  # doctest: +SKIP
    >>> heads.head_gains.shape, heads.top(3)[0].label  # doctest: +SKIP
    ((8, 8), 'L5H2')
    """
    truncation: dict = {}
    prompt_list, token_ids, pad_id = prepare_tokens(model, prompts, drop_first, tokenizer,
                                                    max_tokens_per_prompt, truncation)
    plan = plan_hooks(model, definition)
    name = model_name(model)
    cfg = model.cfg
    chosen = resolve_layers(layers, cfg.n_layers)
    if f"blocks.{chosen[0]}.attn.hook_z" not in model.hook_dict:
        raise FunnelError(f"{name} has no attn.hook_z: TransformerLens cannot split its attention into heads")
    if any(parameter.is_meta for parameter in model.parameters()):  # weights offloaded by a device map
        raise FunnelError(f"{name} has weights offloaded to CPU or disk by its device map, and head gains read "
                          "every layer's W_O: load it on GPUs only (more --max-memory) or on one device")
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype

    n_prompts, n_heads = len(prompt_list), cfg.n_heads
    sums = {key: np.zeros((n_prompts, len(chosen), n_heads)) for key in ("norm", "projection")}
    sums |= {key: np.zeros((n_prompts, len(chosen))) for key in ("attn_out", "input")}
    n_tokens = np.zeros(n_prompts, dtype=np.int64)

    batches = list(make_batches(token_ids, batch_size, pad_token_id=pad_id))
    grams = {}  # layer -> W_O^i W_O^iᵀ, computed on the device of that layer's activations at first use
    show = progress if progress is not None else len(batches) > 1
    for number, batch in enumerate(tqdm(batches, desc=f"heads {name}", unit="batch", disable=not show)):
        n_tokens[batch.indices] = _measure_heads_batch(
            model, batch, chosen, plan.inputs["attn"], device, dtype, drop_first, grams,
            check_identity=number == 0, sums=sums)

    provenance = _provenance(model, device, dtype, prompt_list, token_ids, batches, batch_size, drop_first)
    provenance.update(truncation)
    return HeadResult(
        model=name, definition=definition, n_layers=cfg.n_layers, n_heads=n_heads, d_head=cfg.d_head,
        d_model=cfg.d_model, layers=chosen, prompts=tuple(prompt_list), n_tokens=n_tokens,
        head_norm_sums=sums["norm"], head_projection_sums=sums["projection"],
        attn_out_sums=sums["attn_out"], in_sums=sums["input"],
        n_key_value_heads=_n_key_value_heads(cfg), drop_first=drop_first, provenance=provenance,
    )


def _n_key_value_heads(cfg) -> int | None:
    value = getattr(cfg, "n_key_value_heads", None)
    return int(value) if value else None


def _gram_dtype(device: torch.device) -> torch.dtype:
    # ‖h_i‖² = z_i G_i z_iᵀ sums d_head² terms that can cancel; float64 keeps it exact to
    # ~1e-12 (MPS has no float64).
    return torch.float32 if device.type == "mps" else torch.float64


@torch.inference_mode()
def _measure_heads_batch(model, batch: Batch, layers: tuple[int, ...], input_suffix: str, device, dtype,
                         drop_first: int, grams: dict, check_identity: bool, sums: dict) -> np.ndarray:
    """Run one batch; write its per-prompt sums into ``sums`` (rows ``batch.indices``); return token counts."""
    wanted = {f"blocks.{layer}.{suffix}" for layer in layers
              for suffix in ("attn.hook_z", "hook_attn_out", input_suffix)}
    tokens = batch.tokens.to(device)
    attention_mask = batch.attention_mask.to(device)
    try:
        _, cache = model.run_with_cache(tokens, attention_mask=attention_mask,
                                        names_filter=lambda hook: hook in wanted)
    except torch.cuda.OutOfMemoryError:
        raise FunnelError(
            f"out of GPU memory on a batch of {len(batch.indices)} prompts of up to {tokens.shape[1]} tokens: "
            "lower --batch-size"
        ) from None

    positions = torch.arange(tokens.shape[1], device=device)
    counted = attention_mask.bool() & (positions >= drop_first)[None, :]  # [batch, pos]
    weights = counted.float()
    n_layers = model.cfg.n_layers
    out_norms = token_norms(cache, "hook_attn_out", n_layers, layers=layers)  # [layer, batch, pos]
    in_norms = token_norms(cache, input_suffix, n_layers, layers=layers)  # [layer, batch, pos]
    rows = batch.indices
    for index, layer in enumerate(layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]  # [batch, pos, head, d_head]
        a = cache[f"blocks.{layer}.hook_attn_out"].float()  # [batch, pos, d_model]
        attention = model.blocks[layer].attn
        W_O = attention.W_O.to(z.device).float()  # [head, d_head, d_model]
        if check_identity:
            _check_head_identity(model, layer, z, W_O, attention.b_O, a, attention_mask, dtype)
        if layer not in grams:
            wide = W_O.to(_gram_dtype(z.device))
            grams[layer] = einops.einsum(wide, wide, "head d_head d_model, head d_head2 d_model -> head d_head d_head2")
        gram = grams[layer]  # [head, d_head, d_head]
        z_wide = z.to(gram.dtype)
        # ‖z_i W_O^i‖² = z_i (W_O^i W_O^iᵀ) z_iᵀ: per-head norms with no [batch, pos, head, d_model] tensor.
        squares = einops.einsum(z_wide, gram, z_wide,
                                "batch pos head d_head, head d_head d_head2, batch pos head d_head2 -> batch pos head")
        head_norms = squares.clamp_min(0).sqrt().float()  # [batch, pos, head]
        # ⟨z_i W_O^i, a⟩ = z_i · (W_O^i a): a is pulled back into each head's d_head space.
        pulled = einops.einsum(W_O, a, "head d_head d_model, batch pos d_model -> batch pos head d_head")
        dots = einops.einsum(z.float(), pulled, "batch pos head d_head, batch pos head d_head -> batch pos head")
        projections = dots / out_norms[index].clamp_min(torch.finfo(torch.float32).tiny)[..., None]  # [batch, pos, head]
        finite = torch.isfinite(head_norms) & torch.isfinite(projections) & torch.isfinite(in_norms[index])[..., None]
        bad = ~finite & counted[..., None]  # [batch, pos, head]
        if bad.any():
            row, position, head = (int(i) for i in bad.nonzero()[0])
            raise FunnelError(
                f"non-finite activation norm in {model_name(model)}, {label(layer, head)}, prompt {rows[row]}, "
                f"position {position}: the model overflows in {str(dtype).removeprefix('torch.')}; "
                "try --dtype bfloat16 or float32"
            )
        per_prompt = lambda values: einops.einsum(values, weights, "batch pos head, batch pos -> batch head")  # noqa: E731
        sums["norm"][rows, index] = per_prompt(head_norms).double().cpu().numpy()
        sums["projection"][rows, index] = per_prompt(projections).double().cpu().numpy()
        del z, a, pulled, dots, squares, z_wide
    token_sums = lambda values: einops.einsum(values, weights, "layer batch pos, batch pos -> batch layer")  # noqa: E731
    sums["attn_out"][rows] = token_sums(out_norms).double().cpu().numpy()
    sums["input"][rows] = token_sums(in_norms).double().cpu().numpy()
    del cache
    return counted.sum(dim=1).cpu().numpy()


def _check_head_identity(model, layer: int, z: Float[torch.Tensor, "batch pos head d_head"],
                         W_O: Float[torch.Tensor, "head d_head d_model"], b_O, attn_out, mask, dtype) -> None:
    """Fail loudly unless Σ_i z_i W_O^i + b_O = hook_attn_out: a wrong W_O layout or hook alias."""
    summed = einops.einsum(z.float(), W_O, "batch pos head d_head, head d_head d_model -> batch pos d_model")
    if b_O is not None:
        summed = summed + b_O.to(summed.device).float()
    real = mask.bool()
    error = torch.linalg.vector_norm(summed - attn_out, dim=-1)[real]  # [real tokens]
    scale = torch.linalg.vector_norm(attn_out, dim=-1)[real] + 1e-6
    worst = float((error / scale).max())
    tolerance = IDENTITY_TOLERANCE.get(dtype, 1e-2)
    if not worst <= tolerance:
        raise FunnelError(
            f"{model_name(model)} layer {layer}: the heads' outputs plus b_O differ from attn_out by {worst:.2g} "
            f"(relative; allowed {tolerance:g}): TransformerLens' hook_z or W_O for this architecture is "
            "inconsistent, so per-head numbers cannot be trusted; please report it"
        )
