"""Gains from an ``ActivationCache`` the user already has (``model.run_with_cache`` on their tokens).

The same definitions, hook plan and guards as ``measure_gains`` (residual identities, finite
norms, a padding mask, ``drop_first``); only the forward pass is the user's. Each row of the
cache is one prompt.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

import einops
import torch

from funnel_tl.components import COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.measure.gains import IDENTITY_SUFFIXES, activation_norms, check_finite, check_residual_identities
from funnel_tl.models.architectures import plan_hooks
from funnel_tl.models.identity import model_name, source_provenance
from funnel_tl.results.gains import GainResult


@torch.no_grad()
def gains_from_cache(
    cache,
    model,
    definition: str = "seed",
    attention_mask: torch.Tensor | None = None,
    drop_first: int = 0,
    prompts: Sequence[str] | None = None,
) -> GainResult:
    """Per-layer gains from ``cache``, an ``ActivationCache`` (or dict of hook name → activation) of ``model``.

    ``attention_mask`` ``[batch, pos]`` (1 = real token) keeps padding out of every statistic, as
    the one given to the forward pass did; ``None`` counts every position. ``prompts`` names the
    rows in the result (default ``"<row i>"``). The cache must hold every hook the plan reads and
    the residual-identity hooks: run ``run_with_cache`` without ``names_filter``, or see
    ``plan_hooks(model, definition).suffixes``.

    The gains are those of the tokens you ran: to get ``measure_gains``' numbers, tokenize with
    the model's own HF tokenizer (``models.tokenizer_of(model)``, right padding), not with the
    bridge's ``model.tokenizer``, which TransformerLens sets to prepend a BOS (GPT-2, Llama, GPT-NeoX).

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
    if drop_first < 0:
        raise FunnelError(f"drop_first must be 0 or more, got {drop_first}")
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
