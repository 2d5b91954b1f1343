"""The seed notebook's own method, kept as the independent reference for every number.

Forward hooks on the HuggingFace attention and MLP modules, one prompt at a time, the norm of
each hooked tensor in float32 averaged over the prompt's tokens: exactly the notebook's
``ActivationCapture``. It shares no code with the TransformerLens path in ``gains.py``; tests and
the benchmark compare the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Layout:
    """Where a HuggingFace decoder family keeps the modules the seed's forward hooks read.

    ``attention``/``mlp``: the modules whose *input* is u (what the sublayer receives) and, unless
    ``attention_out``/``mlp_out`` name another module, whose *output* is what the sublayer adds
    to the residual stream. Sandwich norms (Gemma 2/3) and post-norms (OLMo 2) add the output of
    their post-norm; OPT has no MLP module (fc1 reads u, fc2 writes m). ``residual_in_output``:
    BLOOM's attention and MLP return ``output + residual`` (their second argument), so the
    residual is subtracted back out.
    """

    layers: str
    attention: str
    mlp: str
    attention_out: str | None = None
    mlp_out: str | None = None
    residual_in_output: bool = False
    # Sandwich and post-norm blocks: ``attention_out``/``mlp_out`` are post-norms, and the module's
    # own output (before it) is captured too, as ``attn_module_out``/``mlp_module_out``.
    post_norms: bool = False


_PRE_NORM = Layout("model.layers", "self_attn", "mlp")
_SANDWICH = Layout(
    "model.layers", "self_attn", "mlp", "post_attention_layernorm", "post_feedforward_layernorm", post_norms=True
)

# Per HF ``model_type``.
_LAYOUTS = {
    "gpt_neox": Layout("gpt_neox.layers", "attention", "mlp"),
    "gpt2": Layout("transformer.h", "attn", "mlp"),
    "gptj": Layout("transformer.h", "attn", "mlp"),
    "codegen": Layout("transformer.h", "attn", "mlp"),
    "gpt_neo": Layout("transformer.h", "attn", "mlp"),
    "bloom": Layout("transformer.h", "self_attention", "mlp", residual_in_output=True),
    "falcon": Layout("transformer.h", "self_attention", "mlp"),
    "opt": Layout("model.decoder.layers", "self_attn", "fc1", mlp_out="fc2"),
    "gemma2": _SANDWICH,
    "gemma3_text": _SANDWICH,
    "olmo2": _SANDWICH,  # post-norm: the attention module's input is the stream itself
    **{
        model_type: _PRE_NORM
        for model_type in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "olmo",
            "stablelm",
            "phi",
            "phi3",
            "mixtral",
            "qwen2_moe",
            "olmoe",
            "cohere",
            "starcoder2",
            "smollm3",
            "granite",
        )
    },
}


def _attribute(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def hf_sublayers(hf_model):
    """``[(layer module, attention module, MLP module)]`` of a HuggingFace causal LM."""
    layout = hf_layout(hf_model)
    return [
        (layer, getattr(layer, layout.attention), getattr(layer, layout.mlp))
        for layer in _attribute(hf_model, layout.layers)
    ]


def hf_layout(hf_model) -> Layout:
    model_type = hf_model.config.model_type
    if model_type not in _LAYOUTS:
        raise NotImplementedError(f"no reference layout for HF model type {model_type!r}")
    return _LAYOUTS[model_type]


def hf_is_parallel(hf_model) -> bool:
    """Attention and MLP both read the block input (no resid_mid)."""
    config = hf_model.config
    if config.model_type in ("gpt_neox", "stablelm"):
        return bool(getattr(config, "use_parallel_residual", False))
    if config.model_type == "falcon":
        return bool(config.parallel_attn or config.new_decoder_architecture)
    return config.model_type in ("gptj", "codegen", "phi", "cohere")


def _seed_captures(hf_model, tokenizer, prompts: Sequence[str]):
    """Per prompt, ``{(layer, role): [1, pos, d_model] float32}`` of every tensor the gains read.

    The seed's forward hooks on the HF modules, one prompt at a time (``seed_reference`` documents
    the roles). Hooks are removed when the prompts are exhausted or the generator is closed.
    """
    layout = hf_layout(hf_model)
    layers = list(_attribute(hf_model, layout.layers))
    parallel = hf_is_parallel(hf_model)
    captured: dict[tuple[int, str], torch.Tensor] = {}

    def capture(layer_index, role_in, role_out, subtract_residual=False):
        def hook(module, args, kwargs, output):
            tensor_out = output[0] if isinstance(output, tuple) else output
            # Cloned: Falcon adds the attention output into the MLP output in place afterwards.
            tensor_out = tensor_out.detach().float().clone()
            if subtract_residual:
                residual = args[1] if len(args) > 1 else kwargs["residual"]
                tensor_out = tensor_out - residual.float()
            if role_out is not None:
                captured[(layer_index, role_out)] = tensor_out
            if role_in is not None:
                tensor_in = args[0] if args else kwargs["hidden_states"]
                captured[(layer_index, role_in)] = tensor_in.detach().float().clone()

        return hook

    def watch(module, index, role_in, role_out, subtract_residual=False):
        handles.append(
            module.register_forward_hook(capture(index, role_in, role_out, subtract_residual), with_kwargs=True)
        )

    handles: list = []
    for index, layer in enumerate(layers):
        watch(layer, index, "resid_pre", "resid_post")
        for component, module_name, out_name in (
            ("attn", layout.attention, layout.attention_out),
            ("mlp", layout.mlp, layout.mlp_out),
        ):
            module = getattr(layer, module_name)
            if out_name is None:
                watch(module, index, f"{component}_in", f"{component}_out", layout.residual_in_output)
            else:
                watch(module, index, f"{component}_in", f"{component}_module_out" if layout.post_norms else None)
                watch(getattr(layer, out_name), index, None, f"{component}_out")
    roles = _seed_roles(hf_model)
    device = next(hf_model.parameters()).device
    try:
        for prompt in prompts:
            captured.clear()
            inputs = tokenizer(prompt, return_tensors="pt")
            hf_model(**{k: v.to(device) for k, v in inputs.items()})
            tensors = {}
            for layer in range(len(layers)):
                if not parallel:
                    captured[(layer, "resid_mid")] = captured[(layer, "resid_pre")] + captured[
                        (layer, "attn_out")
                    ].reshape(captured[(layer, "resid_pre")].shape)
                for role in roles:
                    tensor = captured[(layer, role)]
                    # OPT's fc1/fc2 read [tokens, d]: every tensor as (batch=1, seq_len, d).
                    tensors[(layer, role)] = tensor if tensor.ndim == 3 else tensor.reshape(1, -1, tensor.shape[-1])
            yield tensors
    finally:
        for handle in handles:
            handle.remove()


def _seed_roles(hf_model) -> list[str]:
    return (
        ["attn_in", "attn_out", "mlp_in", "mlp_out", "resid_pre", "resid_post"]
        + ([] if hf_is_parallel(hf_model) else ["resid_mid"])
        + (["attn_module_out", "mlp_module_out"] if hf_layout(hf_model).post_norms else [])
    )


def _n_layers(hf_model) -> int:
    return len(_attribute(hf_model, hf_layout(hf_model).layers))


@torch.inference_mode()
def seed_reference(hf_model, tokenizer, prompts: Sequence[str], drop_first: int = 0) -> dict[str, np.ndarray]:
    """Per-prompt mean norms ``[prompt, layer]`` of every tensor the gains read, the seed's way.

    Keys: ``attn_in`` and ``mlp_in`` (what the modules receive: LayerNorm outputs, or the stream
    itself for post-norm blocks), ``attn_out``,
    ``mlp_out``, ``resid_pre`` (the layer's input) and ``resid_post`` (its output), and ``resid_mid``
    (resid_pre + attn_out; serial blocks only, where the MLP reads it); for sandwich and post-norm
    blocks ``attn_module_out`` and ``mlp_module_out``, the modules' own outputs before their post-norms.
    """
    roles, n_layers = _seed_roles(hf_model), _n_layers(hf_model)
    means = {role: np.zeros((len(prompts), n_layers)) for role in roles}
    for p, tensors in enumerate(_seed_captures(hf_model, tokenizer, prompts)):
        for (layer, role), tensor in tensors.items():
            norms = torch.norm(tensor, dim=-1)  # (batch=1, seq_len)
            means[role][p, layer] = norms[:, drop_first:].mean().item()
    return means


def reference_gains(means: dict[str, np.ndarray], definition: str = "seed") -> dict[str, np.ndarray]:
    """Per-layer gains ``{"attn", "mlp", "block"}`` from ``seed_reference`` means (mean over prompts)."""

    def gain(out, inp):
        return (means[out] / (means[inp] + 1e-10)).mean(axis=0)

    if definition == "seed":
        attn, mlp = gain("attn_out", "attn_in"), gain("mlp_out", "mlp_in")
    else:
        attn = gain("attn_out", "resid_pre")
        mlp = gain("mlp_out", "resid_mid" if "resid_mid" in means else "resid_pre")
    return {"attn": attn, "mlp": mlp, "block": gain("resid_post", "resid_pre")}


# ---- position by position (issue 15) ----------------------------------------------------------
# The same forward hooks, one prompt at a time, but the norms kept token by token, and the
# position-resolved gains computed from them with plain loops: nothing shared with positions.py.
@torch.inference_mode()
def seed_token_norms(hf_model, tokenizer, prompts: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Per prompt, ``{role: [layer, pos]}`` norms of every tensor ``seed_reference`` reads (same hooks, same roles)."""
    roles, n_layers = _seed_roles(hf_model), _n_layers(hf_model)
    return [
        {
            role: np.stack([torch.norm(tensors[(layer, role)][0], dim=-1).numpy() for layer in range(n_layers)])
            for role in roles
        }
        for tensors in _seed_captures(hf_model, tokenizer, prompts)
    ]


def reference_position_gains(
    token_norms: list[dict[str, np.ndarray]], edges: Sequence[int], definition: str = "seed", drop_first: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({"attn", "mlp", "block"}: [layer, bucket] gains, [bucket] prompts behind each)`` by loops.

    Bucket b holds positions ``edges[b] … edges[b+1] - 1`` (positions before ``drop_first`` left
    out); for each prompt reaching it, mean‖out‖ / (mean‖in‖ + 1e-10) over its tokens there; the
    cell is the mean of those over the prompts that reach it, NaN if none does.
    """
    pairs = _pairs(definition, parallel="resid_mid" not in token_norms[0])
    n_layers, n_buckets = token_norms[0]["attn_out"].shape[0], len(edges) - 1
    gains = {component: np.full((n_layers, n_buckets), np.nan) for component in pairs}
    counts = np.zeros(n_buckets, dtype=np.int64)
    for bucket in range(n_buckets):
        start, stop = max(edges[bucket], drop_first), edges[bucket + 1]
        reaching = [norms for norms in token_norms if norms["attn_out"].shape[1] > start and start < stop]
        counts[bucket] = len(reaching)
        if not reaching:
            continue
        for component, (out, inp) in pairs.items():
            per_prompt = [
                norms[out][:, start:stop].mean(axis=1) / (norms[inp][:, start:stop].mean(axis=1) + 1e-10)
                for norms in reaching
            ]
            gains[component][:, bucket] = np.mean(per_prompt, axis=0)
    return gains, counts


def _pairs(definition: str, parallel: bool) -> dict[str, tuple[str, str]]:
    """component -> (output role, input role) of a definition, in the roles ``seed_reference`` names."""
    return {
        "attn": ("attn_out", "attn_in" if definition == "seed" else "resid_pre"),
        "mlp": ("mlp_out", "mlp_in" if definition == "seed" else ("resid_pre" if parallel else "resid_mid")),
        "block": ("resid_post", "resid_pre"),
    }


# ---- the readings beside the seed's (issue 20) ---------------------------------------------------
# From the same per-token norms (``seed_token_norms``), by plain loops over prompts: nothing shared
# with results.py, reads.py or medians.py.
def reference_readings(token_norms: list[dict[str, np.ndarray]], definition: str = "seed") -> dict[str, dict]:
    """Every reading issue 20 adds, the seed's way (per prompt, then the mean over prompts).

    Keys (each ``{component: [layer]}``): ``gains`` and ``gains_without_first`` (positions >= 1;
    prompts of one token left out) for attn, mlp, block, combined; ``cumulative`` (per prompt
    mean_t‖resid_post_L‖ / mean_t‖resid_pre_0‖) and ``cumulative_without_first`` under
    ``"block"``; ``median`` (over every token of every prompt, of ‖out_t‖ / (‖in_t‖ + 1e-10)) for
    attn, mlp, block; ``module`` and ``post_norm`` for attn, mlp (when the module outputs were
    captured); ``input_norms`` ``{role: [layer]}`` (mean over prompts of each prompt's mean norm).
    """
    pairs = _pairs(definition, parallel="resid_mid" not in token_norms[0])

    def mean_ratio(out: str, inp: str, start: int = 0) -> np.ndarray:
        per_prompt = []
        for norms in token_norms:
            if norms[out].shape[1] <= start:
                continue  # no token left after the first `start` positions
            per_prompt.append(norms[out][:, start:].mean(axis=1) / (norms[inp][:, start:].mean(axis=1) + 1e-10))
        return np.mean(per_prompt, axis=0)

    def growth(start: int) -> np.ndarray:
        per_prompt = [
            norms["resid_post"][:, start:].mean(axis=1) / (norms["resid_pre"][0, start:].mean() + 1e-10)
            for norms in token_norms
            if norms["resid_post"].shape[1] > start
        ]
        return np.mean(per_prompt, axis=0)

    readings: dict[str, dict] = {"gains": {}, "gains_without_first": {}, "median": {}, "module": {}, "post_norm": {}}
    for component, (out, inp) in pairs.items():
        readings["gains"][component] = mean_ratio(out, inp)
        readings["gains_without_first"][component] = mean_ratio(out, inp, start=1)
        per_token = np.concatenate(
            [norms[out] / (norms[inp] + 1e-10) for norms in token_norms], axis=1
        )  # [layer, token]
        readings["median"][component] = np.median(per_token, axis=1)
    for key in ("gains", "gains_without_first"):
        readings[key]["combined"] = readings[key]["attn"] * readings[key]["mlp"]
    readings["cumulative"] = {"block": growth(0)}
    readings["cumulative_without_first"] = {"block": growth(1)}
    for component in ("attn", "mlp"):
        if f"{component}_module_out" in token_norms[0]:
            readings["module"][component] = mean_ratio(f"{component}_module_out", f"{component}_in")
            readings["post_norm"][component] = mean_ratio(f"{component}_out", f"{component}_module_out")
    readings["input_norms"] = {
        role: np.mean([norms[role].mean(axis=1) for norms in token_norms], axis=0) for role in token_norms[0]
    }
    return readings


# The module that applies W_O to the concatenated heads, and whether its weight is stored
# [in, out] (GPT-2's Conv1D) rather than nn.Linear's [out, in].
_OUTPUT_PROJECTIONS = {
    "gpt_neox": ("dense", False),
    "gpt2": ("c_proj", True),
    "llama": ("o_proj", False),
    "mistral": ("o_proj", False),
    "qwen2": ("o_proj", False),
    # sandwich / post-norm: o_proj writes the module output, before the post-norm
    "gemma2": ("o_proj", False),
    "gemma3_text": ("o_proj", False),
    "olmo2": ("o_proj", False),
}


@torch.inference_mode()
def seed_head_token_norms(hf_model, tokenizer, prompts: Sequence[str]) -> list[np.ndarray]:
    """Per prompt, ``[layer, head, pos]`` norms of each head's output h_i = z_i W_O^i (no bias).

    z is read where the HF attention module hands the concatenated heads to its output
    projection (a forward pre-hook), and W_O^i is that projection's slice for head i.
    """
    config = hf_model.config
    if config.model_type not in _OUTPUT_PROJECTIONS:
        raise NotImplementedError(f"no per-head reference for HF model type {config.model_type!r}")
    name, transposed = _OUTPUT_PROJECTIONS[config.model_type]
    n_heads = config.num_attention_heads
    projections = [getattr(attention, name) for _, attention, _ in hf_sublayers(hf_model)]
    captured: dict[int, torch.Tensor] = {}

    def capture(layer_index):
        def hook(module, args):
            captured[layer_index] = args[0].detach().float()[0]  # [pos, head * d_head]

        return hook

    handles = [module.register_forward_pre_hook(capture(index)) for index, module in enumerate(projections)]
    device = next(hf_model.parameters()).device
    norms = []
    try:
        for prompt in prompts:
            captured.clear()
            inputs = tokenizer(prompt, return_tensors="pt")
            hf_model(**{k: v.to(device) for k, v in inputs.items()})
            per_layer = []
            for layer, module in enumerate(projections):
                z = captured[layer]
                d_head = z.shape[-1] // n_heads
                weight = module.weight.detach().float()
                heads = []
                for head in range(n_heads):
                    part = slice(head * d_head, (head + 1) * d_head)
                    w = weight[part, :] if transposed else weight[:, part].T  # [d_head, d_model]
                    heads.append(torch.norm(z[:, part] @ w, dim=-1).numpy())  # [pos]
                per_layer.append(np.stack(heads))
            norms.append(np.stack(per_layer))  # [layer, head, pos]
    finally:
        for handle in handles:
            handle.remove()
    return norms


# ---- effects (issue 22) -----------------------------------------------------------------------
# The seed's forward hooks, turned into hooks that *change* a module's output, one prompt at a
# time, and the losses computed in float64 with plain loops over positions: nothing shared with
# effects.py or intervene.py. Interventions are given as (name, kind, factor) tuples.
def _contribution_modules(hf_model) -> list[dict[str, tuple[torch.nn.Module, bool]]]:
    """Per layer, ``{"attention" | "mlp": (module whose output is the contribution, output holds the residual)}``."""
    layout = hf_layout(hf_model)
    modules = []
    for layer in _attribute(hf_model, layout.layers):
        entry = {}
        for component, module_name, out_name in (
            ("attention", layout.attention, layout.attention_out),
            ("mlp", layout.mlp, layout.mlp_out),
        ):
            # BLOOM's attention and MLP return output + residual; a post-norm's output is the contribution.
            if out_name is None:
                entry[component] = (getattr(layer, module_name), layout.residual_in_output)
            else:
                entry[component] = (getattr(layer, out_name), False)
        modules.append(entry)
    return modules


@torch.inference_mode()
def reference_means(hf_model, tokenizer, prompts: Sequence[str], drop_first: int = 0) -> dict[str, np.ndarray]:
    """``{"attention" | "mlp": [layer, d_model]}``: each contribution's mean over every token at
    position ≥ ``drop_first`` of every prompt, from the seed's captures (``_seed_captures``)."""
    n_layers = _n_layers(hf_model)
    sums: dict[str, Any] = {"attention": None, "mlp": None}  # component -> [layer, d_model], None before a prompt
    count = 0
    for tensors in _seed_captures(hf_model, tokenizer, prompts):
        count += tensors[(0, "attn_out")].shape[1] - drop_first
        for component, role in (("attention", "attn_out"), ("mlp", "mlp_out")):
            per_layer = torch.stack(
                [tensors[(layer, role)][0, drop_first:].double().sum(dim=0) for layer in range(n_layers)]
            )  # [layer, d_model]
            sums[component] = per_layer if sums[component] is None else sums[component] + per_layer
    return {component: (total / count).numpy() for component, total in sums.items()}


def _prompt_losses(logits: torch.Tensor, ids: list[int], drop_first: int) -> tuple[list[float], list[torch.Tensor]]:
    """Per position t ≥ drop_first: the cross-entropy of token t + 1 (where there is one) and the
    next-token log-probabilities, in float64."""
    logp = torch.log_softmax(logits[0].double(), dim=-1)  # [pos, vocab]
    losses = [float(-logp[t, ids[t + 1]]) for t in range(drop_first, len(ids) - 1)]
    return losses, [logp[t] for t in range(drop_first, len(ids))]


@torch.inference_mode()
def reference_effects(
    hf_model,
    tokenizer,
    prompts: Sequence[str],
    interventions: Sequence[tuple[str, str, float]],
    drop_first: int = 0,
    layers: Sequence[int] | None = None,
) -> dict:
    """Δloss and KL of every intervention on every layer's attention and MLP contribution, the seed's way.

    ``interventions``: ``(name, kind, factor)`` with kind ``zero``, ``mean`` or ``scale``. Returns
    ``{"clean_loss": [prompt], name: {component: {"delta_loss" | "kl": [prompt, layer]}}}``: per
    prompt, the mean over positions t ≥ ``drop_first`` with a next token of the cross-entropy with
    the intervention minus without, and the mean over positions t ≥ ``drop_first`` of
    KL(clean ‖ intervened). Each (prompt, layer, component, intervention) is its own forward.
    ``layers``: the layers to change (ascending; default all): the ``layer`` axis runs over them.
    """
    modules = _contribution_modules(hf_model)
    means = (
        reference_means(hf_model, tokenizer, prompts, drop_first)
        if any(kind == "mean" for _, kind, _ in interventions)
        else None
    )
    device = next(hf_model.parameters()).device
    chosen = list(range(len(modules))) if layers is None else list(layers)
    n_layers = len(chosen)
    out: dict[str, Any] = {"clean_loss": np.zeros(len(prompts))}
    for name, _, _ in interventions:
        out[name] = {
            c: {"delta_loss": np.zeros((len(prompts), n_layers)), "kl": np.zeros((len(prompts), n_layers))}
            for c in ("attention", "mlp")
        }

    def changer(kind, factor, mean, holds_residual):
        def hook(module, args, kwargs, output):
            tensor = output[0] if isinstance(output, tuple) else output
            residual = (args[1] if len(args) > 1 else kwargs["residual"]) if holds_residual else 0
            contribution = tensor - residual
            if kind == "zero":
                changed = torch.zeros_like(contribution)
            elif kind == "mean":
                changed = torch.ones_like(contribution) * torch.as_tensor(
                    mean, dtype=contribution.dtype, device=contribution.device
                )
            else:
                changed = contribution * factor
            changed = changed + residual
            return (changed,) + tuple(output[1:]) if isinstance(output, tuple) else changed

        return hook

    for p, prompt in enumerate(prompts):
        inputs = {k: v.to(device) for k, v in tokenizer(prompt, return_tensors="pt").items()}
        ids = inputs["input_ids"][0].tolist()
        clean_losses, clean_logp = _prompt_losses(hf_model(**inputs).logits, ids, drop_first)
        out["clean_loss"][p] = np.mean(clean_losses)
        for name, kind, factor in interventions:
            for row, layer in enumerate(chosen):
                for component, (module, holds_residual) in modules[layer].items():
                    mean = means[component][layer] if means is not None else None
                    handle = module.register_forward_hook(changer(kind, factor, mean, holds_residual), with_kwargs=True)
                    try:
                        losses, logp = _prompt_losses(hf_model(**inputs).logits, ids, drop_first)
                    finally:
                        handle.remove()
                    out[name][component]["delta_loss"][p, row] = np.mean(
                        [after - before for after, before in zip(losses, clean_losses, strict=True)]
                    )
                    out[name][component]["kl"][p, row] = np.mean(
                        [
                            float((clean.exp() * (clean - changed)).sum())
                            for clean, changed in zip(clean_logp, logp, strict=True)
                        ]
                    )
    return out
