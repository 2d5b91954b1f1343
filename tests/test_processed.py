"""Processed weights are refused on both model classes, each processing step on its own.

TransformerLens records ``fold_ln`` (``LayerNormPre`` on HookedTransformer, the adapter's request
on a bridge); centring and value-bias folding are found from the weights (``funnel_tl.models.processed``).
The HookedTransformer cases skip under TransformerLens 4.x and run in ``make test-tl3``.
"""

from __future__ import annotations

import pytest
from conftest import boot_bridge, load_hooked

from funnel_tl import FunnelError, head_gains, measure_gains
from funnel_tl.models.processed import weight_processing

# One flag at a time; centring and fold_ln need a LayerNorm model with biases (GPT-2's).
STEPS = ("fold_ln", "center_writing_weights", "fold_value_biases")
OFF = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)


def _hooked_with(folder, step):
    """A HookedTransformer with only ``step`` applied, as ``load_and_process_state_dict`` does it."""
    from transformer_lens import HookedTransformer, loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = loading.get_pretrained_model_config(str(folder), fold_ln=step == "fold_ln", device="cpu")
    model = HookedTransformer(cfg, AutoTokenizer.from_pretrained(folder))
    state = loading.get_pretrained_state_dict(str(folder), cfg, AutoModelForCausalLM.from_pretrained(folder))
    model.load_and_process_state_dict(state, **{**OFF, step: True})
    return model


@pytest.mark.parametrize("arch", ["gpt2", "neox-parallel"])
def test_processed_bridge_with_defaults_is_refused(arch, checkpoints, tokenizer):
    """``enable_compatibility_mode()`` with its defaults: the first thing a TL 4 user types."""
    bridge = boot_bridge(checkpoints[arch], compatibility={})
    with pytest.raises(
        FunnelError,
        match=r"processed weights \(fold_ln, center_writing_weights, fold_value_biases\)"
        r".*enable_compatibility_mode\(no_processing=True\)",
    ):
        measure_gains(bridge, ["a prompt"], tokenizer=tokenizer)
    with pytest.raises(FunnelError, match="processed weights"):
        head_gains(bridge, ["a prompt"], tokenizer=tokenizer)


@pytest.mark.parametrize("step", STEPS)
def test_each_processing_step_is_named_on_a_bridge(step, checkpoints):
    bridge = boot_bridge(checkpoints["gpt2"], compatibility={**OFF, step: True})
    assert weight_processing(bridge) == [step]


@pytest.mark.parametrize("arch", ["gpt2", "neox-parallel", "llama-gqa"])
def test_unprocessed_models_pass(arch, checkpoints):
    """Random-init weights are not mistaken for centred ones, nor absent value biases for folded ones."""
    assert weight_processing(boot_bridge(checkpoints[arch], compatibility={"no_processing": True})) == []
    assert weight_processing(boot_bridge(checkpoints[arch])) == []


def test_processed_hooked_transformer_is_refused(checkpoints, tokenizer):
    model = load_hooked(checkpoints["gpt2"], processing=True)
    with pytest.raises(FunnelError, match=r"fold_ln.*from_pretrained_no_processing"):
        measure_gains(model, ["a prompt"], tokenizer=tokenizer)
    assert weight_processing(load_hooked(checkpoints["gpt2"], processing=False)) == []


@pytest.mark.parametrize("step", STEPS)
def test_each_processing_step_is_named_on_a_hooked_transformer(step, checkpoints):
    load_hooked(checkpoints["gpt2"])  # skips under TransformerLens 4.x
    assert weight_processing(_hooked_with(checkpoints["gpt2"], step)) == [step]
