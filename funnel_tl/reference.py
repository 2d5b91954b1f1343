"""The seed notebook's own method, kept as the independent reference for every number.

Forward hooks on the HuggingFace attention and MLP modules, one prompt at a time, the norm of
each hooked tensor in float32 averaged over the prompt's tokens: exactly the notebook's
``ActivationCapture``. It shares no code with the TransformerLens path in ``gains.py``; tests and
the benchmark compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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


_PRE_NORM = Layout("model.layers", "self_attn", "mlp")
_SANDWICH = Layout("model.layers", "self_attn", "mlp", "post_attention_layernorm", "post_feedforward_layernorm")

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
    **{model_type: _PRE_NORM for model_type in (
        "llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "stablelm", "phi", "phi3", "mixtral",
        "qwen2_moe", "olmoe", "cohere", "starcoder2", "smollm3", "granite")},
}


def _attribute(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def hf_sublayers(hf_model):
    """``[(layer module, attention module, MLP module)]`` of a HuggingFace causal LM."""
    layout = hf_layout(hf_model)
    return [(layer, getattr(layer, layout.attention), getattr(layer, layout.mlp))
            for layer in _attribute(hf_model, layout.layers)]


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


@torch.inference_mode()
def seed_reference(hf_model, tokenizer, prompts: Sequence[str], drop_first: int = 0) -> dict[str, np.ndarray]:
    """Per-prompt mean norms ``[prompt, layer]`` of every tensor the gains read, the seed's way.

    Keys: ``attn_in`` and ``mlp_in`` (what the modules receive: LayerNorm outputs, or the stream
    itself for post-norm blocks), ``attn_out``,
    ``mlp_out``, ``resid_pre`` (the layer's input) and ``resid_post`` (its output), and ``resid_mid``
    (resid_pre + attn_out; serial blocks only, where the MLP reads it).
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
        handles.append(module.register_forward_hook(capture(index, role_in, role_out, subtract_residual),
                                                    with_kwargs=True))

    handles = []
    for index, layer in enumerate(layers):
        watch(layer, index, "resid_pre", "resid_post")
        for component, module_name, out_name in (("attn", layout.attention, layout.attention_out),
                                                 ("mlp", layout.mlp, layout.mlp_out)):
            module = getattr(layer, module_name)
            if out_name is None:
                watch(module, index, f"{component}_in", f"{component}_out", layout.residual_in_output)
            else:
                watch(module, index, f"{component}_in", None)
                watch(getattr(layer, out_name), index, None, f"{component}_out")
    roles = ["attn_in", "attn_out", "mlp_in", "mlp_out", "resid_pre", "resid_post"] + ([] if parallel else ["resid_mid"])
    means = {role: np.zeros((len(prompts), len(layers))) for role in roles}
    device = next(hf_model.parameters()).device
    try:
        for p, prompt in enumerate(prompts):
            captured.clear()
            inputs = tokenizer(prompt, return_tensors="pt")
            hf_model(**{k: v.to(device) for k, v in inputs.items()})
            for layer in range(len(layers)):
                if not parallel:
                    captured[(layer, "resid_mid")] = (captured[(layer, "resid_pre")]
                                                      + captured[(layer, "attn_out")].reshape(captured[(layer, "resid_pre")].shape))
                for role in roles:
                    tensor = captured[(layer, role)]
                    tensor = tensor if tensor.ndim == 3 else tensor.reshape(1, -1, tensor.shape[-1])  # OPT's fc1/fc2 read [tokens, d]
                    norms = torch.norm(tensor, dim=-1)  # (batch=1, seq_len)
                    means[role][p, layer] = norms[:, drop_first:].mean().item()
    finally:
        for handle in handles:
            handle.remove()
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
