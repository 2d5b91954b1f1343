"""Small HuggingFace checkpoints built offline, for tests, benchmarks and demos.

No machine here reaches a model hub, so tests build random-weight checkpoints of real
architectures from a config, with a byte-level BPE tokenizer trained on text every Python
install has (``pydoc_data.topics``), save them to a folder, and load them by path exactly as a
hub model would load.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

ARCHITECTURES = ("neox-parallel", "neox-serial", "gpt2", "llama-gqa")

# Decoder families whose tiny random checkpoints the family test measures (tests/test_families.py):
# family -> (HF model_type, config keywords beyond the shared sizes). Adding a family is one entry
# here plus its layout in reference.py.
FAMILIES: dict[str, tuple[str, dict]] = {
    "gpt-neox": ("gpt_neox", dict(use_parallel_residual=True, rotary_pct=0.25)),
    "gpt2": ("gpt2", {}),
    "gpt-j": ("gptj", dict(rotary_dim=4)),
    "gpt-neo": ("gpt_neo", dict(attention_types=[[["global", "local"], 1]], window_size=16)),
    "opt": ("opt", dict(do_layer_norm_before=True)),
    "bloom": ("bloom", {}),
    "falcon": ("falcon", dict(parallel_attn=True, new_decoder_architecture=False, bias=True)),
    "llama": ("llama", dict(num_key_value_heads=2)),
    "mistral": ("mistral", dict(num_key_value_heads=2, sliding_window=None)),
    "mixtral": ("mixtral", dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2": ("qwen2", dict(num_key_value_heads=2)),
    "qwen3": ("qwen3", dict(num_key_value_heads=2, head_dim=8)),
    "qwen2-moe": (
        "qwen2_moe",
        dict(
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
    ),
    "gemma": ("gemma", dict(num_key_value_heads=2, head_dim=8)),
    "gemma2": ("gemma2", dict(num_key_value_heads=2, head_dim=8, sliding_window=16)),
    "gemma3": ("gemma3_text", dict(num_key_value_heads=2, head_dim=8, sliding_window=16)),
    "phi": ("phi", dict(partial_rotary_factor=0.5)),
    "phi3": ("phi3", dict(num_key_value_heads=2)),
    "stablelm": ("stablelm", dict(num_key_value_heads=2)),
    "olmo": ("olmo", dict(num_key_value_heads=2)),
    "olmo2": ("olmo2", dict(num_key_value_heads=2)),
    "olmoe": ("olmoe", dict(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)),
    "cohere": ("cohere", dict(num_key_value_heads=2)),
    "starcoder2": ("starcoder2", dict(num_key_value_heads=2, use_bias=True)),
    "smollm3": ("smollm3", dict(num_key_value_heads=2)),
}


def family_config(
    family: str,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    vocab_size: int = 512,
    n_ctx: int = 64,
    **overrides,
):
    """A tiny HF config of decoder family ``family`` (one of ``FAMILIES``); ``overrides``: config
    keywords over the family's own (``num_key_value_heads=4``: no grouped-query attention)."""
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers import AutoConfig

    model_type, special = FAMILIES[family]
    sizes = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=2 * d_model,
        max_position_embeddings=n_ctx,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    # Families whose config names the sizes differently (attribute_map does not reach __init__).
    renamed = {
        "gpt2": dict(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx, n_ctx=n_ctx),
        "gptj": dict(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx),
        "codegen": dict(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx, n_ctx=n_ctx),
        "gpt_neo": dict(num_layers=n_layers, num_heads=n_heads),
        "bloom": dict(n_layer=n_layers, n_head=n_heads),
        "opt": dict(ffn_dim=2 * d_model, word_embed_proj_dim=d_model),
    }.get(model_type, {})
    return AutoConfig.for_model(model_type, **{**sizes, **renamed, **special, **overrides})


def corpus_texts() -> list[str]:
    """English text every CPython has: the documentation topics behind ``help()``."""
    # Imported on use: Python's documentation topics are ~1 MB of text, read only when this corpus is asked for.
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def train_tokenizer(vocab_size: int = 512, texts=None):
    """A byte-level BPE tokenizer (GPT-2/Pythia style: no BOS added) as a HF fast tokenizer."""
    # Imported on use: transformers and tokenizers take seconds to import; only tests build toy models.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts if texts is not None else corpus_texts(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def make_config(
    architecture: str, n_layers: int = 2, d_model: int = 64, n_heads: int = 4, vocab_size: int = 512, n_ctx: int = 128
):
    """A HF config of one of ``ARCHITECTURES`` (d_ff = 4·d_model as in Pythia and GPT-2)."""
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    special: dict = dict(bos_token_id=0, eos_token_id=0)  # token ids, unpacked beside keys of other types
    if architecture in ("neox-parallel", "neox-serial"):
        return GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=4 * d_model,
            max_position_embeddings=n_ctx,
            rotary_pct=0.25,  # type: ignore[call-arg]  # transformers takes it through **kwargs, its signature does not name it
            use_parallel_residual=architecture == "neox-parallel",
            **special,
        )
    if architecture == "gpt2":
        # n_ctx: transformers 5 no longer writes it, and TransformerLens 3.9 reads it for GPT-2.
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            n_positions=n_ctx,
            n_ctx=n_ctx,  # type: ignore[call-arg]  # a legacy key transformers takes through **kwargs
            **special,
        )
    if architecture == "llama-gqa":
        # Grouped-query attention: half as many key/value heads as query heads.
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=max(1, n_heads // 2),
            intermediate_size=4 * d_model,
            max_position_embeddings=n_ctx,
            **special,
        )
    raise ValueError(f"unknown architecture {architecture!r}: choose one of {ARCHITECTURES}")


def build_checkpoint(
    folder,
    architecture: str = "neox-parallel",
    tokenizer=None,
    seed: int = 0,
    randomize_norms: bool = True,
    randomize_biases: bool = True,
    initializer_range: float | None = None,
    **config_kwargs,
) -> Path:
    """Save a random-weight checkpoint (safetensors, config, tokenizer) to ``folder``.

    ``architecture``: one of ``ARCHITECTURES`` (sized by ``make_config``) or of ``FAMILIES``.

    ``randomize_norms`` draws the LayerNorm/RMSNorm weights and biases away from their 1/0 init,
    so that the affine matters: with identity norms the "seed" and "residual" inputs would be
    nearly proportional and a test could not tell a pre-affine hook from a post-affine one.
    ``randomize_biases`` draws every other bias away from its 0 init, so that folding value
    biases or centring output biases changes something a test can see. ``initializer_range``: the
    standard deviation of the random weights (HF's default 0.02 when None); larger weights give
    sublayers whose removal changes the predictions a lot (the effects' tests).
    """
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if architecture in ARCHITECTURES:
        config = make_config(architecture, **config_kwargs)
    else:
        config = family_config(architecture, **config_kwargs)
    if initializer_range is not None:
        config.initializer_range = initializer_range
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if randomize_norms:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "norm" in name or ".ln_" in name or name.startswith("ln_") or "layernorm" in name:
                    if name.endswith("weight"):
                        parameter.copy_(1 + 0.5 * torch.randn(parameter.shape, generator=generator))
                    else:
                        parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
                elif randomize_biases and name.endswith("bias"):
                    parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    tokenizer = tokenizer if tokenizer is not None else train_tokenizer(min(config.vocab_size, 512))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_training_run(
    folder, steps, architecture: str = "neox-parallel", tokenizer=None, seed: int = 0, **config_kwargs
) -> Path:
    """A local folder of "training checkpoints" ``folder/step<N>/``, one per step, for sweeps.

    Weights move smoothly from a random initialization (step 0) to another random draw (the
    last step), by the fraction ``log(1 + step) / log(1 + last)``, so gains drift with the step
    as in a real run and a figure against step has a trend to show; norms and biases are
    randomized as in ``build_checkpoint``. ``steps``: e.g. ``funnel_tl.sweep.plan.PYTHIA_STEPS``
    (Pythia's 154 names). The tokenizer is trained once and shared.

    >>> from funnel_tl.testing.toy import build_training_run
    >>> build_training_run("/tmp/ckpts", [0, 1000, 143000], n_layers=2)  # doctest: +SKIP
    PosixPath('/tmp/ckpts')
    """

    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder, steps = Path(folder), sorted(set(int(step) for step in steps))
    tokenizer = tokenizer if tokenizer is not None else train_tokenizer(config_kwargs.get("vocab_size", 512))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar per save: 154 of them for Pythia's steps
    try:
        ends = []
        for offset in (0, 1):
            build_checkpoint(
                folder / f".end{offset}", architecture, tokenizer=tokenizer, seed=seed + 2 * offset, **config_kwargs
            )
            ends.append(AutoModelForCausalLM.from_pretrained(folder / f".end{offset}"))
        start, end = (model.state_dict() for model in ends)
        model, last = ends[0], max(max(steps), 1)
        for step in steps:
            fraction = math.log1p(step) / math.log1p(last)
            with torch.no_grad():
                model.load_state_dict(
                    {
                        name: torch.lerp(start[name], end[name], fraction)
                        if start[name].is_floating_point()
                        else start[name]
                        for name in start
                    }
                )
            model.save_pretrained(folder / f"step{step}")
            tokenizer.save_pretrained(folder / f"step{step}")
        for offset in (0, 1):
            shutil.rmtree(folder / f".end{offset}")
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return folder
