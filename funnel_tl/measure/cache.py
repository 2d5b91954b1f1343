"""Gains from an ``ActivationCache`` the user already has (``model.run_with_cache`` on their tokens).

The same definitions, hook plan and guards as ``measure_gains`` (residual identities, finite
norms, a padding mask, ``drop_first``); only the forward pass is the user's. Each row of the
cache is one prompt.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import einops
import torch
from jaxtyping import Shaped

from funnel_tl.components import COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.measure.gains import IDENTITY_SUFFIXES, activation_norms, check_finite, check_residual_identities
from funnel_tl.measure.options import check_definition, check_drop_first
from funnel_tl.models.architectures import plan_hooks
from funnel_tl.models.identity import model_name, source_provenance
from funnel_tl.results.gains import GainResult

if TYPE_CHECKING:
    from transformer_lens import ActivationCache, HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge


@torch.no_grad()
def gains_from_cache(
    cache: ActivationCache | Mapping[str, torch.Tensor],
    model: TransformerBridge | HookedTransformer,
    definition: str = "seed",
    attention_mask: Shaped[torch.Tensor, "*batch pos"] | None = None,
    drop_first: int = 0,
    prompts: Sequence[str] | None = None,
) -> GainResult:
    """Per-layer gains from ``cache``, an ``ActivationCache`` (or dict of hook name → activation) of ``model``.

    The same definitions, hook plan and guards as ``measure_gains``: a cache whose residual
    identities fail (resid_pre + attn_out + mlp_out ≠ resid_post: a wrong hook alias) or whose
    counted norms are not finite is refused in one line.

    The gains are those of the tokens you ran: to get ``measure_gains``' numbers, tokenize with
    the model's own HF tokenizer (``models.tokenizer_of(model)``, right padding), not with the
    bridge's ``model.tokenizer``, which TransformerLens sets to prepend a BOS (GPT-2, Llama, GPT-NeoX).

    Args:
        cache: What ``model.run_with_cache(tokens, attention_mask=...)`` returned, run without
            ``names_filter`` (or with one keeping these hooks), one row per prompt. For every
            layer ``L`` it reads ``blocks.L.hook_resid_pre``, ``blocks.L.hook_attn_out``,
            ``blocks.L.hook_mlp_out``, ``blocks.L.hook_resid_post`` and (serial blocks)
            ``blocks.L.hook_resid_mid``, and under ``definition="seed"`` what each sublayer
            receives: ``blocks.L.ln1.hook_out`` and ``blocks.L.ln2.hook_out`` on a
            ``TransformerBridge`` (``ln1.hook_normalized``, the norm's affine applied here, on a
            ``HookedTransformer``; ``ln1`` for both where a parallel block has one norm). Each
            is ``[batch, pos, d_model]``, or ``[pos, d_model]`` from ``run_with_cache(...,
            remove_batch_dim=True)`` (one prompt); ``plan_hooks(model, definition).suffixes``
            lists the definition's own. A missing hook is a ``FunnelError`` naming it.
        model: The model the cache came from, with unprocessed weights (``load_model``'s, or
            a ``HookedTransformer`` loaded with ``from_pretrained_no_processing``): its config
            gives the layers and block shape, and a processed model is refused.
        definition: ``"seed"`` (a sublayer's input is what it receives, the norm's output) or
            ``"residual"`` (the residual stream it reads from); see ``GainResult``.
        attention_mask: ``[batch, pos]`` (``[pos]`` for a one-prompt cache), 1 or ``True`` for
            a real token, as given to the forward pass: it keeps padding out of every statistic.
            ``None`` counts every position.
        drop_first: Positions 0 .. drop_first - 1 of every row are left out of every statistic
            (0 counts them all; 1 leaves out position 0, the attention sink's). A row left with
            no counted token is a ``FunnelError``.
        prompts: The prompt of each cache row, ``[batch]`` strings, recorded in the result;
            ``None`` names them ``"<row i>"``.

    Returns:
        A ``GainResult`` of every layer: ``attn_gains``, ``mlp_gains``, ``block_gains`` and the
            other per-layer arrays are ``[layer]``; the per-prompt sums behind them
            ``[prompt, layer]``, ``n_tokens`` ``[prompt]`` (tokens counted per row). No intervals
            (``with_intervals()`` draws them), and none of the extras only ``measure_gains``' own
            forward gives (gains without position 0, medians, the other definition).

    >>> from funnel_tl import load_model
    >>> from funnel_tl.models.identity import tokenizer_of
    >>> model = load_model("nano-2l", device="cpu")
    >>> tokenizer = tokenizer_of(model)
    >>> tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # a tokenizer without one (as GPT-2)
    >>> batch = tokenizer(["The cat sat on the mat.", "A second prompt"], return_tensors="pt", padding=True)
    >>> _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    >>> gains_from_cache(cache, model, attention_mask=batch.attention_mask).attn_gains.shape  # [layer]
    (2,)
    """
    # An entry point of its own: its two options checked as MeasureOptions checks them, first.
    definition, drop_first = check_definition(definition), check_drop_first(drop_first)
    plan = plan_hooks(model, definition)
    n_layers = model.cfg.n_layers
    wanted = set(plan.suffixes) | set(IDENTITY_SUFFIXES) - ({"hook_resid_mid"} if plan.parallel_blocks else set())
    missing = [
        f"blocks.{layer}.{suffix}"
        for layer in range(n_layers)
        for suffix in sorted(wanted)
        if f"blocks.{layer}.{suffix}" not in cache
    ]
    if missing:
        raise FunnelError(
            f"the cache has no {missing[0]} ({len(missing)} hooks missing): run run_with_cache without names_filter, "
            f"or keep the hooks {', '.join(sorted(wanted))}"
        )
    first = cache["blocks.0.hook_resid_pre"]
    batched = first.ndim == 3  # a cache made with remove_batch_dim=True holds [pos, d_model]

    def activation(layer: int, suffix: str) -> torch.Tensor:
        value = cache[f"blocks.{layer}.{suffix}"]
        return value if batched else value[None]  # [batch, pos, d_model]

    n_rows, n_positions = activation(0, "hook_resid_pre").shape[:2]
    device, dtype = first.device, first.dtype
    if attention_mask is None:
        mask = torch.ones((n_rows, n_positions), dtype=torch.bool, device=device)
    else:
        mask = torch.as_tensor(attention_mask, device=device).bool()
        mask = mask if mask.ndim == 2 else mask[None]
        if tuple(mask.shape) != (n_rows, n_positions):
            raise FunnelError(
                f"attention_mask has shape {tuple(mask.shape)}, the cache [batch, pos] = "
                f"{(n_rows, n_positions)}: pass the mask given to the forward pass"
            )
    counted = mask & (torch.arange(n_positions, device=device) >= drop_first)[None, :]  # [batch, pos]
    n_tokens = counted.sum(dim=1)  # [batch]
    if bool((n_tokens == 0).any()):
        row = int((n_tokens == 0).nonzero()[0])
        raise FunnelError(
            f"row {row} of the cache has no token left to count (mask and drop_first={drop_first}): "
            "lower drop_first or drop that row"
        )
    names = tuple(prompts) if prompts is not None else tuple(f"<row {i}>" for i in range(n_rows))
    if len(names) != n_rows:
        raise FunnelError(f"{len(names)} prompts given for a cache of {n_rows} rows")

    identity_cache = {
        f"blocks.{layer}.{suffix}": activation(layer, suffix)
        for layer in range(n_layers)
        for suffix in wanted
        if suffix in IDENTITY_SUFFIXES
    }
    stacked = {
        suffix: torch.stack(
            [activation_norms(plan.read(model, layer, suffix, activation(layer, suffix))) for layer in range(n_layers)]
        )  # [layer, batch, pos]
        for suffix in plan.suffixes
    }
    check_finite(model, stacked, counted, list(range(n_rows)), dtype)
    check_residual_identities(model, identity_cache, mask, plan.parallel_blocks, dtype)
    weights = counted.float()
    sums = {
        suffix: einops.einsum(values.float(), weights, "layer batch pos, batch pos -> batch layer")
        .double()
        .cpu()
        .numpy()
        for suffix, values in stacked.items()
    }
    provenance = {
        "source": "ActivationCache",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "n_tokens_total": int(mask.sum()),
        "drop_first": int(drop_first),
        "reads": plan.describe(),
        **source_provenance(model),  # the full path of a model named by its folder
    }
    return GainResult(
        model=model_name(model),
        definition=definition,
        n_layers=n_layers,
        d_model=model.cfg.d_model,
        parallel_blocks=plan.parallel_blocks,
        prompts=names,
        n_tokens=n_tokens.cpu().numpy(),
        out_sums={c: sums[plan.outputs[c]] for c in COMPONENTS},
        in_sums={c: sums[plan.inputs[c]] for c in COMPONENTS},
        drop_first=drop_first,
        provenance=provenance,
    )
