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
- Sandwich and post-norm blocks (Gemma 2/3, OLMo 2) normalize the heads' sum before the stream
  receives it: there the heads add up to the attention module's own output *before* its post-norm
  (``ln1_post.hook_in``; ``architectures.check_heads_add_up``), which then stands for ``a`` in every
  statistic below. Their head gains, and the layer gain beside them, are the module's own
  (output before the post-norm over its input: ``GainResult.module_gains``), not the seed's
  attention gain, which the post-norm's gain multiplies (``HeadResult.read_at`` says so).
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

from collections.abc import Sequence
from typing import TYPE_CHECKING

import einops
import numpy as np
import torch
from jaxtyping import Float

from funnel_tl.errors import FunnelError
from funnel_tl.measure.engine import Engine, prompt_sums
from funnel_tl.measure.gains import IDENTITY_TOLERANCE, activation_norms, run_provenance
from funnel_tl.measure.layers import layers_in_model, parse_layers  # noqa: F401  (parse_layers re-exported)
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.measure.positions import HeadPositionAccumulator
from funnel_tl.measure.streaming import PerPrompt, TokenStream
from funnel_tl.models.architectures import check_heads_add_up, plan_hooks
from funnel_tl.models.huggingface import measurable
from funnel_tl.models.identity import model_name
from funnel_tl.results.head_names import label
from funnel_tl.results.heads import HeadResult

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


# ---- measurement ---------------------------------------------------------------------------------
def head_gains(
    model: TransformerBridge | HookedTransformer | PreTrainedModel,
    prompts: str | Sequence[str] = "seed",
    definition: str = "seed",
    layers: int | Sequence[int] | None = None,
    batch_size: int | str = "auto",
    drop_first: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    progress: bool | None = None,
    by_position: bool = False,
    executor: str = "auto",
    max_tokens_per_prompt: int | str | None = None,
    chunk_size: int | None = None,
    keep_texts: bool = True,
    label: str | None = None,
    options: MeasureOptions | None = None,
) -> HeadResult:
    """Measure every head's output norm, gain and share of the layer output on a prompt set.

    Only ``attn.hook_z``, ``hook_attn_out`` and the denominator's hook of the chosen layers are
    read, each layer reduced to per-head statistics as it fires (no ``[batch, pos, head,
    d_model]`` tensor, no cache of every layer), and the pass stops after the last layer asked
    for. The tokens, batches and denominators are ``measure_gains``'s: with the same options, a
    head's gain is comparable to its layer's ``attn_gains``.

    Args:
        model: as in ``measure_gains`` (a bridge, a TL 3.x ``HookedTransformer`` or a
            transformers causal LM), with ``attn.hook_z`` and every ``W_O`` on a device.
        prompts: ``"seed"``, a prompt file path, or a list (or any iterable) of strings.
        definition: the denominator, as in ``measure_gains``: ``"seed"`` (‖u_attn‖, the norm
            output attention reads) or ``"residual"`` (‖resid_pre‖).
        layers: a layer, a list of layers (negative counts from the end) or None for all.
        batch_size: prompts per forward, or ``"auto"``; changes no number.
        drop_first: leading positions left out of every prompt.
        tokenizer: the tokenizer to use; default the model's own.
        progress: a progress bar; None shows one on a terminal.
        by_position: also keep the sums by position bucket: ``result.head_position_gains()``.
        executor: ``"auto"``, ``"transformer_lens"`` or ``"hf"``, as in ``measure_gains``.
        max_tokens_per_prompt: keep only the first tokens of longer prompts (a number or
            ``"context"``); None: a prompt longer than the context is an error.
        chunk_size: prompts read and measured at a time (default ``streaming.CHUNK_PROMPTS``).
        keep_texts: keep the prompt texts in the result (False: their count and sha256 only).
        label: the name the result carries in place of the model's.
        options: the options above from ``definition`` on (but ``tokenizer`` and ``progress``)
            as one ``MeasureOptions``, e.g. a ``measure_gains`` run's; the keywords then stay at
            their defaults.

    Returns:
        A ``HeadResult``: per-prompt sums ``[prompt, layer, head]`` of each head's norm and
        projection, and ``[prompt, layer]`` of the layer output and input, from which
        ``head_gains``, ``norm_shares`` and ``projection_shares`` (``[layer, head]``) follow.

    >>> from funnel_tl import load_model, head_gains
    >>> heads = head_gains(load_model(device="cpu"), "seed", progress=False)  # the bundled nano-8l
    >>> heads.head_gains.shape, heads.top(3)[0].label  # [layer, head]; the largest head gain
    ((8, 4), 'L5H3')
    """
    options = MeasureOptions.given(
        options,
        definition=definition,
        layers=layers,
        batch_size=batch_size,
        drop_first=drop_first,
        by_position=by_position,
        executor=executor,
        max_tokens_per_prompt=max_tokens_per_prompt,
        chunk_size=chunk_size,
        keep_texts=keep_texts,
        label=label,
    )  # every option checked once, before the model is looked at
    model = measurable(model, tokenizer, "head_gains")  # a name or None refused; a transformers model bridged
    plan = plan_hooks(model, options.definition)
    output_suffix = check_heads_add_up(model, plan)
    name = options.label or model_name(model)
    cfg = model.cfg
    chosen = layers_in_model(options.layers, cfg.n_layers)
    if f"blocks.{chosen[0]}.attn.hook_z" not in model.hook_dict:
        raise FunnelError(f"{name} has no attn.hook_z: TransformerLens cannot split its attention into heads")
    if any(parameter.is_meta for parameter in model.parameters()):  # weights offloaded by a device map
        raise FunnelError(
            f"{name} has weights offloaded to CPU or disk by its device map, and head gains read "
            "every layer's W_O: load it on GPUs only (more --max-memory) or on one device"
        )
    # by_position (funnel_tl.results.positions): buckets grow with the longest prompt read so far.
    positions = HeadPositionAccumulator(0, len(chosen), cfg.n_heads, 1) if options.by_position else None
    reduction = HeadSums(model, plan, chosen, positions, output_suffix)
    engine = Engine(model, reduction, options.executor)
    stream = TokenStream(
        model, prompts, options, tokenizer, engine.device, on_chunk=positions.grow if positions is not None else None
    )

    n_heads = cfg.n_heads
    shapes: dict[str, tuple[int, ...]] = {key: (len(chosen), n_heads) for key in ("norm", "projection")}
    shapes |= {key: (len(chosen),) for key in ("attn_out", "input")}
    sums, counts = PerPrompt(shapes), PerPrompt({"n_tokens": ()}, dtype=np.int64)
    batches = engine.run(
        stream.batches(), options.drop_first, progress, description=f"heads {name}", total=stream.known_total
    )
    for batch, batch_sums, counted in batches:
        sums.put(batch.indices, batch_sums)
        counts.put(batch.indices, {"n_tokens": counted})

    kept = sums.result(stream.n_prompts)
    provenance = run_provenance(model, engine, stream, options) | {"reads": plan.describe(), **stream.truncation}
    if output_suffix != "hook_attn_out":  # before a post-norm: what the heads' numbers are relative to
        provenance["heads_read_at"] = plan.describe_roles()["attn_module_out"]
    return HeadResult(
        model=name,
        definition=options.definition,
        n_layers=cfg.n_layers,
        n_heads=n_heads,
        d_head=cfg.d_head,
        d_model=cfg.d_model,
        layers=chosen,
        prompts=None if stream.texts is None else tuple(stream.texts),
        n_tokens=counts.result(stream.n_prompts)["n_tokens"],
        head_norm_sums=kept["norm"],
        head_projection_sums=kept["projection"],
        attn_out_sums=kept["attn_out"],
        in_sums=kept["input"],
        n_key_value_heads=_n_key_value_heads(cfg),
        drop_first=options.drop_first,
        provenance=provenance,
        positions=positions.result() if positions is not None else None,
    )


def _n_key_value_heads(cfg) -> int | None:
    value = getattr(cfg, "n_key_value_heads", None)
    return int(value) if value else None


def _gram_dtype(device: torch.device) -> torch.dtype:
    # ‖h_i‖² = z_i G_i z_iᵀ sums d_head² terms that can cancel; float64 keeps it exact to
    # ~1e-12 (MPS has no float64).
    return torch.float32 if device.type == "mps" else torch.float64


class HeadSums:
    """The heads' reduction (``engine.Reduction``): per-head norms and projections as each layer fires.

    Reads, per chosen layer, the attention's input (the gain's denominator), ``attn.hook_z`` and
    ``hook_attn_out``, in that (forward) order. ``hook_z`` is held until its layer's ``attn_out``
    fires, then both become ``[batch, pos, head]`` statistics and are dropped: one layer's
    activations live at a time. ``W_O`` and the Gram matrices ``W_O^i W_O^iᵀ`` are prepared once per run.
    """

    def __init__(self, model, plan, layers: tuple[int, ...], positions=None, output_suffix: str = "hook_attn_out"):
        self.model, self.plan, self.layers = model, plan, layers
        self.positions = positions  # a positions.HeadPositionAccumulator, or None
        self.input_suffix = plan.inputs["attn"]
        # Where Σ heads + b_O holds: hook_attn_out, or the module output before a post-norm (its
        # scale hook first on a HookedTransformer, where x = hook_normalized * hook_scale).
        self.output_suffix = output_suffix
        self.scale_suffix = plan.scaled.get(output_suffix)
        self.dtype = next(model.parameters()).dtype
        self.row = {layer: index for index, layer in enumerate(layers)}
        self.weights: dict[int, tuple] = {}  # layer -> (W_O float32, gram, b_O), on the activations' device

    def reads(self, first: bool) -> list[tuple[int, str]]:
        last = (self.scale_suffix, self.output_suffix) if self.scale_suffix else (self.output_suffix,)
        return [(layer, suffix) for layer in self.layers for suffix in (self.input_suffix, "attn.hook_z", *last)]

    def start(self, batch, tokens, attention_mask, counted, first: bool) -> None:
        self.batch, self.attention_mask, self.counted, self.first = batch, attention_mask, counted, first
        n = len(self.layers)
        self.stats: dict[str, list] = {key: [None] * n for key in ("norm", "projection", "attn_out", "input")}
        self.z: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None

    def _weights(self, layer: int, device) -> tuple:
        if layer not in self.weights:
            attention = self.model.blocks[layer].attn
            W_O = attention.W_O.detach().to(device).float()  # [head, d_head, d_model]
            wide = W_O.to(_gram_dtype(device))
            gram = einops.einsum(wide, wide, "head d_head d_model, head d_head2 d_model -> head d_head d_head2")
            self.weights[layer] = (W_O, gram, attention.b_O)
        return self.weights[layer]

    def read(self, layer: int, suffix: str, activation: torch.Tensor) -> None:
        row = self.row[layer]
        if suffix == self.input_suffix and self.stats["input"][row] is None:
            self.stats["input"][row] = activation_norms(
                self.plan.read(self.model, layer, suffix, activation)
            )  # [batch, pos]
        if suffix == "attn.hook_z":
            self.z = activation  # [batch, pos, head, d_head]
        elif suffix == self.scale_suffix:
            self.scale = activation  # [batch, pos, 1]
        elif suffix == self.output_suffix:
            scale, self.scale = self.scale, None
            self._attention_output(layer, row, self.plan.read(self.model, layer, suffix, activation, scale))

    def _attention_output(self, layer: int, row: int, attn_out: torch.Tensor) -> None:
        z, self.z = self.z, None
        if z is None:
            raise FunnelError(
                f"{model_name(self.model)}: blocks.{layer}.{self.output_suffix} fired before attn.hook_z: "
                "per-head outputs cannot be read for this architecture; please report it"
            )
        a = attn_out.float()  # [batch, pos, d_model]
        W_O, gram, b_O = self._weights(layer, z.device)
        if self.first:
            check_head_identity(self.model, layer, z, W_O, b_O, a, self.attention_mask, self.dtype, self.output_suffix)
        out_norms = activation_norms(attn_out)  # [batch, pos]
        z_wide = z.to(gram.dtype)
        # ‖z_i W_O^i‖² = z_i (W_O^i W_O^iᵀ) z_iᵀ: per-head norms with no [batch, pos, head, d_model] tensor.
        squares = einops.einsum(
            z_wide, gram, z_wide, "batch pos head d_head, head d_head d_head2, batch pos head d_head2 -> batch pos head"
        )
        # ⟨z_i W_O^i, a⟩ = z_i · (W_O^i a): a is pulled back into each head's d_head space.
        pulled = einops.einsum(W_O, a, "head d_head d_model, batch pos d_model -> batch pos head d_head")
        dots = einops.einsum(z.float(), pulled, "batch pos head d_head, batch pos head d_head -> batch pos head")
        self.stats["norm"][row] = squares.clamp_min(0).sqrt().float()  # [batch, pos, head]
        self.stats["projection"][row] = dots / out_norms.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
        self.stats["attn_out"][row] = out_norms

    def finish(self) -> dict[str, torch.Tensor]:
        # Stacked once per batch ([layer, batch, pos, (head)]); commit, called after finish, reuses them.
        self.stacked = {key: torch.stack(values) for key, values in self.stats.items()}
        return {
            key: prompt_sums(values, self.counted) for key, values in self.stacked.items()
        }  # [batch, layer, (head)]

    def commit(self) -> None:
        if self.positions is not None:  # by_position (funnel_tl.results.positions, issue 15)
            self.positions.add_heads(self.batch.indices, self.stacked["norm"], self.counted)
            self.positions.add_inputs(self.batch.indices, self.stacked["input"], self.counted)

    def raise_nonfinite(self) -> None:
        """The first non-finite statistic, in layer order, named by head (or by layer for the denominator)."""
        for row, layer in enumerate(self.layers):
            per_head = torch.stack([self.stats["norm"][row], self.stats["projection"][row]])  # [2, batch, pos, head]
            finite = (
                torch.isfinite(per_head).all(dim=0)
                & torch.isfinite(self.stats["input"][row])[..., None]
                & torch.isfinite(self.stats["attn_out"][row])[..., None]
            )  # [batch, pos, head]
            bad = ~finite & self.counted[..., None]
            if bad.any():
                index, position, head = (int(i) for i in bad.nonzero()[0])
                raise FunnelError(
                    f"non-finite activation norm in {model_name(self.model)}, {label(layer, head)}, prompt "
                    f"{self.batch.indices[index]}, position {position}: the model overflows in "
                    f"{str(self.dtype).removeprefix('torch.')}; try --dtype bfloat16 or float32"
                )


def check_head_identity(
    model,
    layer: int,
    z: Float[torch.Tensor, "batch pos head d_head"],
    W_O: Float[torch.Tensor, "head d_head d_model"],
    b_O,
    attn_out,
    mask,
    dtype,
    output_suffix: str = "hook_attn_out",
) -> None:
    """Fail loudly unless Σ_i z_i W_O^i + b_O = the attention output read (``output_suffix``):
    a wrong W_O layout or hook alias."""
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
            f"{model_name(model)} layer {layer}: the heads' outputs plus b_O differ from {output_suffix} by "
            f"{worst:.2g} "
            f"(relative; allowed {tolerance:g}): TransformerLens' hook_z or W_O for this architecture is "
            "inconsistent, so per-head numbers cannot be trusted; please report it"
        )
