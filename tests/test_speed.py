"""The speed-ups are invisible in the numbers: length bucketing, reducing hooks as they fire, early stop.

No timing here (benchmarks/bench_gains.py measures speed); these tests pin that every number is
what the slow ways give: the seed's one-prompt-at-a-time HF hooks, ``run_with_cache`` over a full
forward, and measure_gains itself over other batch sizes and prompt orders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from funnel_tl import measure_gains
from funnel_tl.measure import engine, gains
from funnel_tl.measure.gains import token_norms
from funnel_tl.models.architectures import plan_hooks
from funnel_tl.prompts.tokens import tokenize
from funnel_tl.testing.reference import seed_reference
from funnel_tl.testing.toy import corpus_texts

COMPONENTS = ("attn", "mlp", "block")
# Seed definition: (output role, input role) in seed_reference's naming, per component.
SEED_ROLES = {"attn": ("attn_out", "attn_in"), "mlp": ("mlp_out", "mlp_in"), "block": ("resid_post", "resid_pre")}


def very_mixed_prompts() -> list[str]:
    """1 to ~110 tokens (the fixtures' context is 128), lengths out of order, so batches pad a lot."""
    words = " ".join(corpus_texts()).split()
    counts = [30, 1, 6, 18, 2, 12, 1, 9, 3, 15, 26, 4]
    prompts, start = [], 0
    for count in counts:
        prompts.append(" ".join(words[start : start + count]))
        start += count
    return prompts


@pytest.fixture(scope="module")
def prompts(tokenizer):
    prompts = very_mixed_prompts()
    lengths = [len(ids) for ids in tokenize(tokenizer, prompts)]
    assert min(lengths) <= 2 and 80 <= max(lengths) <= 128  # guards the premise: very different lengths
    return prompts


@pytest.mark.parametrize("arch", ["neox-parallel", "llama-gqa"])
def test_per_prompt_norms_equal_the_seed_loop(arch, prompts, bridge, hf_model, tokenizer):
    """Every prompt's mean norms, not just the gains: bucketing must not mix prompts up."""
    result = measure_gains(bridge(arch), prompts, definition="seed", batch_size=5)
    means = seed_reference(hf_model(arch), tokenizer, prompts)
    for component, (out_role, in_role) in SEED_ROLES.items():
        # float32; the paths differ in summation order and padding only (~1e-7 measured).
        np.testing.assert_allclose(
            result.out_sums[component] / result.n_tokens[:, None],
            means[out_role],
            rtol=1e-5,
            err_msg=f"{arch} {component} out",
        )
        np.testing.assert_allclose(
            result.in_sums[component] / result.n_tokens[:, None],
            means[in_role],
            rtol=1e-5,
            err_msg=f"{arch} {component} in",
        )


@pytest.mark.parametrize("arch", ["neox-serial", "gpt2"])
def test_order_and_batch_size_change_no_number(arch, prompts, bridge):
    model = bridge(arch)
    one = measure_gains(model, prompts, definition="residual", batch_size=1)  # no padding at all
    order = np.random.default_rng(0).permutation(len(prompts))
    for batch_size in (4, len(prompts)):
        shuffled = measure_gains(model, [prompts[i] for i in order], definition="residual", batch_size=batch_size)
        np.testing.assert_array_equal(shuffled.n_tokens, one.n_tokens[order])
        for component in COMPONENTS:
            for sums, expected in ((shuffled.out_sums, one.out_sums), (shuffled.in_sums, one.in_sums)):
                # Padding adds masked positions only; per-row float ops agree to rounding (~1e-7).
                np.testing.assert_allclose(sums[component], expected[component][order], rtol=1e-5)


@pytest.mark.parametrize("arch", ["neox-parallel", "neox-serial"])
@pytest.mark.parametrize("definition", ["seed", "residual"])
def test_early_stop_gives_exactly_the_full_forwards_sums(arch, definition, prompts, bridge, monkeypatch):
    model = bridge(arch)
    stopped = measure_gains(model, prompts, definition=definition, batch_size=4)
    monkeypatch.setattr(engine, "STOP_EARLY", False)
    full = measure_gains(model, prompts, definition=definition, batch_size=4)
    for component in COMPONENTS:
        # The same tensors reach the same reduction: equal to the bit.
        np.testing.assert_array_equal(stopped.out_sums[component], full.out_sums[component])
        np.testing.assert_array_equal(stopped.in_sums[component], full.in_sums[component])


@pytest.mark.parametrize("arch", ["neox-parallel", "gpt2"])
def test_norms_as_hooks_fire_equal_run_with_cache(arch, prompts, bridge, tokenizer):
    """Reducing each hook as it fires gives the sums of caching them all with TransformerLens' own run_with_cache."""
    model = bridge(arch)
    batch = prompts[:4]
    result = measure_gains(model, batch, definition="seed", batch_size=4)
    plan = plan_hooks(model, "seed")
    ids = tokenize(tokenizer, batch)
    width = max(len(i) for i in ids)
    tokens = torch.tensor([i + [0] * (width - len(i)) for i in ids])  # [batch, pos]
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])  # [batch, pos]
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, attention_mask=mask)  # a full forward, every hook cached
    for component in COMPONENTS:
        for sums, suffix in ((result.out_sums, plan.outputs[component]), (result.in_sums, plan.inputs[component])):
            norms = token_norms(cache, suffix, model.cfg.n_layers)  # [layer, batch, pos]
            expected = (norms * mask[None]).sum(dim=-1).T.double().numpy()  # [batch, layer]
            # Same tensors, same float32 norms; only the order of the per-prompt sum may differ.
            np.testing.assert_allclose(sums[component], expected, rtol=1e-6, err_msg=f"{component} {suffix}")


def test_final_norm_and_unembedding_never_run(bridge, prompts):
    """The early stop really stops: a hook after the last block never fires (and does without the stop)."""
    model = bridge("neox-parallel")
    fired = []
    with model.hooks(fwd_hooks=[("ln_final.hook_in", lambda tensor, hook: fired.append(hook.name))]):
        measure_gains(model, prompts[:3])
        assert fired == []
        engine.STOP_EARLY = False
        try:
            measure_gains(model, prompts[:3])
        finally:
            engine.STOP_EARLY = True
        assert fired  # the same hook fires when the forward runs to the end


@pytest.mark.parametrize("fail", [False, True])
def test_hooks_are_removed_after_the_stop_and_after_an_error(fail, checkpoints, monkeypatch):
    """The private stop exception and a FunnelError both leave the model as it was."""
    from funnel_tl import FunnelError, load_model

    model = load_model(str(checkpoints["gpt2"]), device="cpu")
    tokens = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        before = model(tokens)
    if fail:
        monkeypatch.setattr(gains, "IDENTITY_TOLERANCE", {torch.float32: -1.0})  # every identity check fails
        with pytest.raises(FunnelError, match="differs from resid_post"):
            measure_gains(model, "seed")
    else:
        measure_gains(model, "seed")
    assert all(not point._forward_hooks for point in model.hook_dict.values())
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), before, rtol=0, atol=0)


def test_padding_fraction_is_recorded(bridge, prompts, tokenizer):
    """The provenance records the padding of the length-sorted batches, less than the given order's."""
    result = measure_gains(bridge("gpt2"), prompts, batch_size=4)
    lengths = [len(ids) for ids in tokenize(tokenizer, prompts)]

    def padding(ordered):  # share of padded positions when batches of 4 are taken in this order
        groups = [ordered[start : start + 4] for start in range(0, len(ordered), 4)]
        return 1 - sum(ordered) / sum(len(group) * max(group) for group in groups)

    assert result.provenance["padding_fraction"] == pytest.approx(padding(sorted(lengths)))
    assert padding(sorted(lengths)) < padding(lengths) - 0.1
