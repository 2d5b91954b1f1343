"""Shared fixtures: small random-weight HF checkpoints of four architectures, built offline.

Built once per test session into a temp folder and loaded by path, exactly as a hub model would
load (DESIGN.md §5). ``checkpoints[arch]`` is the folder; ``bridge(arch)`` a loaded float32 model.
"""

from __future__ import annotations

import pytest

from funnel_tl.toy import ARCHITECTURES, build_checkpoint, train_tokenizer


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
