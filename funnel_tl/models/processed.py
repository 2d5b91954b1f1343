"""Refuse models whose weights TransformerLens processed: the norms measured would not be the model's.

``HookedTransformer.from_pretrained`` and ``bridge.enable_compatibility_mode()`` process weights
by default. Each step keeps the logits but changes the activations the gains are made of:
``fold_ln`` strips the norm affine (the input a sublayer received no longer exists as an
activation), ``center_writing_weights`` projects the mean out of everything written to the
residual stream (norms shrink), ``fold_value_biases`` moves b_V into b_O (per-head norms change).

Where TransformerLens records a step it is read from there: a folded norm is a ``LayerNormPre``
(``cfg.normalization_type`` ``LNPre``/``RMSPre``) on ``HookedTransformer``, and a processed bridge
sets ``_weights_processed`` (and its adapter ``_fold_ln_requested``). Centring and value-bias
folding are recorded nowhere on ``HookedTransformer``, so they are read from the weights.
"""

from __future__ import annotations

import torch

from funnel_tl.errors import FunnelError
from funnel_tl.models.identity import installed_version, model_name


def how_to_load() -> str:
    """How to load a model without processing, in the installed TransformerLens' own API.

    TransformerLens 4.x removed ``HookedTransformer`` (and with it
    ``from_pretrained_no_processing``): advice naming it would send a 4.x user to a missing name.
    """

    bridge = (
        "TransformerBridge.boot_transformers(...) then enable_compatibility_mode(no_processing=True) "
        "(or leave compatibility mode off), or funnel_tl.load_model(...)"
    )
    major = installed_version("transformer-lens").split(".")[0]
    if major.isdigit() and int(major) < 4:
        return f"load it without processing: HookedTransformer.from_pretrained_no_processing(...), {bridge}"
    return f"load it again without processing: {bridge}"


# Centred rows have |mean| · √d / std at float rounding (~1e-7 in float32, ~1e-3 in float16);
# any other row — random initialisation or trained — is of order 1 (a sum of d terms of either sign).
_CENTRED_Z = 1e-2


def _blocks(model):
    return list(getattr(model, "blocks", []) or [])


def _tensor(owner, name: str) -> torch.Tensor | None:
    """``owner.name`` if it is a tensor; None where an adapter cannot form it (nothing to judge)."""
    try:
        value = getattr(owner, name, None)
    except Exception:  # a bridge property that this architecture does not support
        return None
    return value if isinstance(value, torch.Tensor) else None


# Rows looked at per matrix: enough for a median, and cheap on a 70B model.
_ROWS = 256


def _row_mean_z(weight: torch.Tensor) -> torch.Tensor:
    """|mean| · √d / std of (the first ``_ROWS``) rows over the last (d_model) axis, in float32."""
    rows = weight.detach().reshape(-1, weight.shape[-1])[:_ROWS].float()  # [rows, d_model]
    std = rows.std(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    return rows.mean(dim=-1).abs() * rows.shape[-1] ** 0.5 / std  # [rows]


def writing_weights_centred(model) -> bool:
    """Every attention output matrix ``W_O`` (and ``W_E``) has zero-mean rows over d_model."""
    weights = []
    for block in _blocks(model):
        W_O = _tensor(getattr(block, "attn", None), "W_O")
        if W_O is not None:
            weights.append(W_O)  # [head, d_head, d_model]
    W_E = _tensor(model, "W_E")
    if W_E is not None:
        weights.append(W_E[:_ROWS])  # [rows, d_model]
    if not weights:
        return False
    z = torch.cat([_row_mean_z(w) for w in weights])
    return bool(z.median() < _CENTRED_Z)


def value_biases_folded(model) -> bool:
    """Every ``b_V`` is exactly zero while the query or key biases are not: b_V went into b_O."""
    saw_value_bias, other_nonzero = False, False
    for block in _blocks(model):
        attention = getattr(block, "attn", None)
        b_V = _tensor(attention, "b_V")
        if b_V is None:
            continue
        saw_value_bias = True
        if bool((b_V != 0).any()):
            return False
        for name in ("b_Q", "b_K"):
            bias = _tensor(attention, name)
            other_nonzero |= bias is not None and bool((bias != 0).any())
    return saw_value_bias and other_nonzero


def layer_norms_folded(model) -> bool:
    """Recorded by TransformerLens: ``LayerNormPre``/``RMSNormPre`` norms, or a bridge's fold_ln request."""
    if getattr(model.cfg, "normalization_type", None) in ("LNPre", "RMSPre"):
        return True
    adapter = getattr(model, "adapter", None)
    return bool(getattr(model, "_weights_processed", False) and getattr(adapter, "_fold_ln_requested", False))


def weight_processing(model) -> list[str]:
    """The TransformerLens processing steps found on ``model``, by their flag names; empty if none."""
    found = []
    if layer_norms_folded(model):
        found.append("fold_ln")
    with torch.no_grad():
        if writing_weights_centred(model):
            found.append("center_writing_weights")
        if value_biases_folded(model):
            found.append("fold_value_biases")
    if not found and getattr(model, "_weights_processed", False):
        found.append("process_weights")
    return found


def check_unprocessed(model) -> None:
    """Raise ``FunnelError`` naming every processing step found (see the module docstring)."""
    found = weight_processing(model)
    if found:
        raise FunnelError(
            f"{model_name(model)} has processed weights ({', '.join(found)}), which change the activations "
            f"whose norms are measured: {how_to_load()}"
        )
