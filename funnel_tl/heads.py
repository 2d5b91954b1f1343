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

import functools
from typing import Sequence

import einops
import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from .architectures import check_heads_add_up, plan_hooks
from .errors import FunnelError
from .gains import IDENTITY_TOLERANCE, _provenance, prepare_tokens, token_norms
from .head_results import HEADS_KIND, HEADS_SCHEMA_VERSION, VALUES, HeadResult, HeadStat, label  # noqa: F401  (re-exported)
from .layers import parse_layers, resolve_layers  # noqa: F401  (parse_layers re-exported)
from .models import model_name
from .positions import HeadPositionAccumulator
from .prompts import Batch, make_batches


# ---- measurement ---------------------------------------------------------------------------------
def head_gains(model, prompts: str | Sequence[str] = "seed", definition: str = "seed",
               layers: int | Sequence[int] | None = None, batch_size: int = 8, drop_first: int = 0,
               tokenizer=None, progress: bool | None = None, by_position: bool = False,
               max_tokens_per_prompt: int | str | None = None) -> HeadResult:
    """Measure every head's output norm, gain and share of the layer output on a prompt set.

    Arguments as ``measure_gains`` (same tokens, batching, ``definition`` and ``drop_first``, so
    head gains share the denominator of the layers' attention gains), plus ``layers``: a layer, a
    list of layers (negative counts from the end) or None for all. Only ``attn.hook_z``,
    ``hook_attn_out`` and the denominator's hook of those layers are cached, and each layer is
    reduced to per-head norms at once without forming any ``[batch, pos, head, d_model]`` tensor.
    ``by_position=True`` also keeps the sums by position bucket: ``result.head_position_gains()``.

    >>> from funnel_tl import load_model, head_gains
    >>> heads = head_gains(load_model(device="cpu"), "seed")  # doctest: +SKIP
    >>> heads.head_gains.shape, heads.top(3)[0].label  # doctest: +SKIP
    ((8, 8), 'L5H2')
    """
    truncation: dict = {}
    prompt_list, token_ids, pad_id = prepare_tokens(model, prompts, drop_first, tokenizer,
                                                    max_tokens_per_prompt, truncation)
    plan = plan_hooks(model, definition)
    check_heads_add_up(model, plan)
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

    # by_position (funnel_tl.positions): buckets fixed by the longest prompt, filled batch by batch.
    positions = (HeadPositionAccumulator(n_prompts, len(chosen), n_heads, max(map(len, token_ids)))
                 if by_position else None)
    batches = list(make_batches(token_ids, batch_size, pad_token_id=pad_id))
    grams = {}  # layer -> W_O^i W_O^iᵀ, computed on the device of that layer's activations at first use
    show = progress if progress is not None else len(batches) > 1
    for number, batch in enumerate(tqdm(batches, desc=f"heads {name}", unit="batch", disable=not show)):
        n_tokens[batch.indices] = _measure_heads_batch(
            model, batch, chosen, plan.inputs["attn"], device, dtype, drop_first, grams,
            check_identity=number == 0, sums=sums, read=functools.partial(plan.read, model),
            by_position=positions)

    provenance = _provenance(model, device, dtype, prompt_list, token_ids, batches, batch_size, drop_first)
    provenance["reads"] = plan.describe()
    provenance.update(truncation)
    return HeadResult(
        model=name, definition=definition, n_layers=cfg.n_layers, n_heads=n_heads, d_head=cfg.d_head,
        d_model=cfg.d_model, layers=chosen, prompts=tuple(prompt_list), n_tokens=n_tokens,
        head_norm_sums=sums["norm"], head_projection_sums=sums["projection"],
        attn_out_sums=sums["attn_out"], in_sums=sums["input"],
        n_key_value_heads=_n_key_value_heads(cfg), drop_first=drop_first, provenance=provenance,
        positions=positions.result() if positions is not None else None,
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
                         drop_first: int, grams: dict, check_identity: bool, sums: dict, read=None,
                         by_position=None) -> np.ndarray:
    """Run one batch; write its per-prompt sums into ``sums`` (rows ``batch.indices``); return token counts.

    ``by_position``: a ``positions.HeadPositionAccumulator`` that also takes the sums by position bucket.
    """
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
    in_norms = token_norms(cache, input_suffix, n_layers, layers=layers, read=read)  # [layer, batch, pos]
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
        if by_position is not None:  # by_position (funnel_tl.positions, issue 15)
            by_position.add_heads(rows, index, head_norms, counted)
        del z, a, pulled, dots, squares, z_wide
    token_sums = lambda values: einops.einsum(values, weights, "layer batch pos, batch pos -> batch layer")  # noqa: E731
    sums["attn_out"][rows] = token_sums(out_norms).double().cpu().numpy()
    sums["input"][rows] = token_sums(in_norms).double().cpu().numpy()
    if by_position is not None:  # by_position (funnel_tl.positions, issue 15)
        by_position.add_inputs(rows, in_norms, counted)
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
