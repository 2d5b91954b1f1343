"""Every gain against the seed's own method (HF forward hooks, one prompt at a time), and invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funnel_tl import FunnelError, measure_gains
from funnel_tl.models.architectures import plan_hooks
from funnel_tl.prompts.sets import SEED_PROMPTS
from funnel_tl.testing.reference import reference_gains, seed_reference
from funnel_tl.testing.toy import ARCHITECTURES

# float32 throughout; the two paths differ only in summation order (~1e-7 measured), and the
# issue asks for agreement to 1e-4 relative.
RELATIVE = 1e-4

# Very different lengths, so a batch of 8 carries a lot of padding.
MIXED_PROMPTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog near the river bank, and then it keeps running "
    "through the forest, past the old mill, until it reaches the sea where the boats are moored.",
    "x = 1",
    *SEED_PROMPTS[:3],
    "A " * 40,
    "def f(x):\n    return x * 2  # doubles its argument",
    "Return the number of items in a container.",
]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("definition", ["seed", "residual"])
def test_equals_seed_method(arch, definition, bridge, hf_model, tokenizer):
    result = measure_gains(bridge(arch), "seed", definition=definition, batch_size=8)
    reference = reference_gains(seed_reference(hf_model(arch), tokenizer, list(SEED_PROMPTS)), definition)
    for component in ("attn", "mlp", "block"):
        np.testing.assert_allclose(
            result.gains(component), reference[component], rtol=RELATIVE, err_msg=f"{arch} {definition} {component}"
        )


def test_definitions_really_differ(bridge):
    """Guards the test above: with randomized LayerNorm affines the two denominators differ a lot."""
    seed = measure_gains(bridge("neox-serial"), "seed", definition="seed")
    residual = measure_gains(bridge("neox-serial"), "seed", definition="residual")
    assert np.all(np.abs(seed.attn_gains / residual.attn_gains - 1) > 0.1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batch_size_changes_no_number(arch, bridge):
    one = measure_gains(bridge(arch), MIXED_PROMPTS, definition="residual", batch_size=1)
    eight = measure_gains(bridge(arch), MIXED_PROMPTS, definition="residual", batch_size=8)
    three = measure_gains(bridge(arch), MIXED_PROMPTS, definition="residual", batch_size=3)
    for other in (eight, three):
        np.testing.assert_array_equal(other.n_tokens, one.n_tokens)
        for component in ("attn", "mlp", "block"):
            # Padding only adds masked positions; per-row float ops agree to rounding (~1e-7).
            np.testing.assert_allclose(other.per_prompt_gains(component), one.per_prompt_gains(component), rtol=1e-5)


def test_results_keep_prompt_order(bridge, tokenizer):
    """Bucketing sorts prompts by length; results must come back in the caller's order."""
    result = measure_gains(bridge("gpt2"), MIXED_PROMPTS, batch_size=4)
    assert list(result.n_tokens) == [len(tokenizer(p)["input_ids"]) for p in MIXED_PROMPTS]
    assert result.prompts == tuple(MIXED_PROMPTS)


@pytest.mark.parametrize("arch", ["neox-parallel", "llama-gqa"])
def test_drop_first(arch, bridge, hf_model, tokenizer):
    prompts = [p for p in MIXED_PROMPTS if len(tokenizer(p)["input_ids"]) > 2]
    result = measure_gains(bridge(arch), prompts, definition="seed", batch_size=4, drop_first=2)
    reference = reference_gains(seed_reference(hf_model(arch), tokenizer, prompts, drop_first=2), "seed")
    np.testing.assert_allclose(result.mlp_gains, reference["mlp"], rtol=RELATIVE)
    assert list(result.n_tokens) == [len(tokenizer(p)["input_ids"]) - 2 for p in prompts]
    assert result.provenance["drop_first"] == 2
    full = measure_gains(bridge(arch), prompts, definition="seed", batch_size=4)
    assert not np.allclose(full.mlp_gains, result.mlp_gains, rtol=1e-3)


def test_drop_first_leaving_no_token_is_an_error(bridge):
    with pytest.raises(FunnelError, match="none left after dropping"):
        measure_gains(bridge("gpt2"), ["Hi", "a longer prompt here"], drop_first=5)


def test_attention_gain_scales_with_output_weights(checkpoints, tmp_path, tokenizer):
    """Scale the attention output projection (weight and bias) by c: ‖a‖ and the attention gain scale by c."""
    from transformers import AutoModelForCausalLM

    from funnel_tl import load_model

    c = 3.0
    base = measure_gains(load_model(str(checkpoints["gpt2"]), device="cpu"), "seed", definition="seed")
    hf = AutoModelForCausalLM.from_pretrained(checkpoints["gpt2"])
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_proj.weight.mul_(c)
            block.attn.c_proj.bias.mul_(c)
    hf.save_pretrained(tmp_path / "scaled")
    tokenizer.save_pretrained(tmp_path / "scaled")
    scaled = measure_gains(load_model(str(tmp_path / "scaled"), device="cpu"), "seed", definition="seed")
    # Layer 0's attention reads the same input, so its gain scales by exactly c (float rounding).
    np.testing.assert_allclose(scaled.attn_gains[0], c * base.attn_gains[0], rtol=1e-5)
    assert not np.allclose(scaled.attn_gains[1], c * base.attn_gains[1], rtol=1e-3)  # layer 1 reads a changed stream


def test_parallel_blocks_are_detected(bridge):
    assert plan_hooks(bridge("neox-parallel"), "residual").inputs["mlp"] == "hook_resid_pre"
    assert plan_hooks(bridge("neox-serial"), "residual").inputs["mlp"] == "hook_resid_mid"
    assert plan_hooks(bridge("gpt2"), "seed").inputs == {
        "attn": "ln1.hook_out",
        "mlp": "ln2.hook_out",
        "block": "hook_resid_pre",
    }


def test_guard_fires_on_a_wrong_hook_alias(checkpoints, monkeypatch):
    """Simulate a TransformerLens alias pointing at the wrong tensor: the identity check must stop us.

    measure_gains reads activations through ``model.hooks``; the patched hook for layer 1's
    ``hook_mlp_out`` sees twice the tensor that really flows into the residual stream.
    """
    from funnel_tl import load_model

    model = load_model(str(checkpoints["neox-serial"]), device="cpu")
    original = model.hooks

    def lying(hook_fn):
        return lambda tensor, hook: hook_fn(tensor * 2, hook=hook)

    def broken_hooks(fwd_hooks=(), **kwargs):
        fwd_hooks = [(name, lying(fn) if name == "blocks.1.hook_mlp_out" else fn) for name, fn in fwd_hooks]
        return original(fwd_hooks=fwd_hooks, **kwargs)

    monkeypatch.setattr(model, "hooks", broken_hooks)
    with pytest.raises(FunnelError, match=r"layer 1: resid_pre \+ attn_out \+ mlp_out differs from resid_post"):
        measure_gains(model, "seed")


def test_nan_names_model_layer_and_component(checkpoints):
    from funnel_tl import load_model

    model = load_model(str(checkpoints["gpt2"]), device="cpu")
    model.add_hook("blocks.1.hook_mlp_out", lambda tensor, hook: tensor * float("nan"))
    try:
        with pytest.raises(FunnelError, match=r"non-finite activation in .*gpt2, layer 1, hook_mlp_out"):
            measure_gains(model, "seed")
    finally:
        model.reset_hooks()


def test_prompt_longer_than_context(bridge):
    with pytest.raises(FunnelError, match=r"prompt 1 has \d+ tokens but .* context of 128"):
        measure_gains(bridge("gpt2"), ["short", "word " * 400])


def test_unknown_definition(bridge):
    with pytest.raises(FunnelError, match="unknown definition"):
        measure_gains(bridge("gpt2"), "seed", definition="bogus")
