"""Issue 20: the readings beside the seed's numbers, every key against the HF-hook reference.

Every default run writes ``gains_without_first``, the stream's growth ``block.cumulative_gains``,
``median_gains``, the other definition's gains and input norms and, for sandwich and post-norm
blocks, ``module_gains``/``post_norm_gains``. Each is checked against ``reference.reference_readings``
(forward hooks on the HF modules, one prompt at a time, plain numpy), on the real SmolLM2-135M and
on tiny Gemma 2 (sandwich) and OLMo 2 (post-norm) checkpoints with randomized norm weights and
biases, under both definitions.
"""

from __future__ import annotations

import numpy as np
import pytest

from funnel_tl import load_model, measure_gains
from funnel_tl.medians import BIN_WIDTH, MAX_ERROR
from funnel_tl.reference import reference_readings, seed_token_norms
from funnel_tl.toy import build_checkpoint

# float32 on both paths, which differ in summation order only (~1e-7 measured); the issue asks 1e-4.
RELATIVE = 1e-4
# A histogram median is a token's bin centre: at most half a bin from it (medians.MAX_ERROR), and
# float32 rounding of a gain at a bin's edge adds nothing measurable beside that.
MEDIAN_RELATIVE = MAX_ERROR * 1.001
KEYS = {"attn": "attention", "mlp": "mlp", "block": "block", "combined": "combined"}
# Varied lengths, and one prompt of a single token: it has no position 1, so it leaves the readings
# without position 0 (as a drop_first=1 run would refuse it).
TOY_PROMPTS = ["The capital of France is Paris, which is known for the Eiffel Tower.", "def f(x):\n    return x * 2",
               "a", "Attention sinks hold the first token's massive activation in every layer of the stream."]


def check_readings(result, readings, name: str) -> None:
    """Every key issue 20 adds to results.json, against the reference readings."""
    data = result.to_dict()
    for component, key in KEYS.items():
        np.testing.assert_allclose(data[key]["gains"], readings["gains"][component], rtol=RELATIVE,
                                   err_msg=f"{name} {component}: the seed's gains")
        np.testing.assert_allclose(data[key]["gains_without_first"], readings["gains_without_first"][component],
                                   rtol=RELATIVE, err_msg=f"{name} {component} without position 0")
    for component in ("attn", "mlp", "block"):
        np.testing.assert_allclose(data[KEYS[component]]["median_gains"], readings["median"][component],
                                   rtol=MEDIAN_RELATIVE, err_msg=f"{name} {component} median")
    np.testing.assert_allclose(data["block"]["cumulative_gains"], readings["cumulative"]["block"], rtol=RELATIVE,
                               err_msg=f"{name} stream growth")
    np.testing.assert_allclose(data["block"]["cumulative_gains_without_first"],
                               readings["cumulative_without_first"]["block"], rtol=RELATIVE,
                               err_msg=f"{name} stream growth without position 0")
    for component in ("attn", "mlp"):
        if component in readings["module"]:
            np.testing.assert_allclose(data[KEYS[component]]["module_gains"], readings["module"][component],
                                       rtol=RELATIVE, err_msg=f"{name} {component} module gains")
            np.testing.assert_allclose(data[KEYS[component]]["post_norm_gains"], readings["post_norm"][component],
                                       rtol=RELATIVE, err_msg=f"{name} {component} post-norm gains")
        else:
            assert "module_gains" not in data[KEYS[component]], name
    # The without-first headline numbers are those of the reference's gains.
    mlp_without = readings["gains_without_first"]["mlp"]
    assert data["without_first"]["mlp"]["L_star_max"] == int(np.argmax(mlp_without))
    np.testing.assert_allclose(data["without_first"]["mlp"]["max_gain"], mlp_without.max(), rtol=RELATIVE)


def check_both_definitions(results, token_norms, name: str) -> None:
    """Each definition's run against the reference, and each one's ``other_definition`` block
    against the other's reference: the same forward gives both."""
    for definition, result in results.items():
        readings = reference_readings(token_norms, definition)
        check_readings(result, readings, f"{name} {definition}")
        other = "residual" if definition == "seed" else "seed"
        expected = reference_readings(token_norms, other)
        block = result.to_dict()["other_definition"]
        assert block["definition"] == other
        for component in ("attn", "mlp"):
            np.testing.assert_allclose(block[KEYS[component]]["gains"], expected["gains"][component], rtol=RELATIVE,
                                       err_msg=f"{name} {definition}: the other definition's {component} gains")
            np.testing.assert_allclose(block[KEYS[component]]["gains_without_first"],
                                       expected["gains_without_first"][component], rtol=RELATIVE)
        norms = expected["input_norms"]
        parallel = "resid_mid" not in norms
        for component, seed_role, residual_role in (("attention", "attn_in", "resid_pre"),
                                                    ("mlp", "mlp_in", "resid_pre" if parallel else "resid_mid")):
            np.testing.assert_allclose(block["input_norms"][component]["seed"], norms[seed_role], rtol=RELATIVE)
            np.testing.assert_allclose(block["input_norms"][component]["residual"], norms[residual_role], rtol=RELATIVE)


# ---- the real model -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2(smollm2_hf):
    """(bridge, HF model, its tokenizer, the reference's per-token norms of the seed prompts)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from funnel_tl.prompts import SEED_PROMPTS

    hf = AutoModelForCausalLM.from_pretrained(smollm2_hf, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    model = load_model(str(smollm2_hf), device="cpu", dtype="float32")
    return model, tokenizer, seed_token_norms(hf, tokenizer, SEED_PROMPTS)


@pytest.mark.slow
def test_smollm2_readings_equal_the_hf_reference(smollm2):
    model, tokenizer, token_norms = smollm2
    results = {definition: measure_gains(model, "seed", definition=definition, tokenizer=tokenizer, progress=False)
               for definition in ("seed", "residual")}
    check_both_definitions(results, token_norms, "SmolLM2-135M")
    # What makes the headline on this model (issue 20): position 0 alone lifts L11's MLP gain ~50x.
    seed = results["seed"]
    top = int(np.argmax(seed.mlp_gains))
    assert seed.mlp_gains[top] / seed.gains_without_first("mlp")[top] > 10


@pytest.mark.slow
def test_smollm2_without_first_equals_a_drop_first_run(smollm2):
    """Not close: equal. The same batches, and the same float32 sums with position 0 masked out."""
    model, tokenizer, _ = smollm2
    default = measure_gains(model, "seed", tokenizer=tokenizer, progress=False, batch_size=3)
    dropped = measure_gains(model, "seed", tokenizer=tokenizer, progress=False, batch_size=3, drop_first=1)
    without = default.without_first(1)
    np.testing.assert_array_equal(without.n_tokens, dropped.n_tokens)
    for component in ("attn", "mlp", "block"):
        np.testing.assert_array_equal(without.out_sums[component], dropped.out_sums[component])
        np.testing.assert_array_equal(without.in_sums[component], dropped.in_sums[component])
        np.testing.assert_array_equal(default.gains_without_first(component), dropped.gains(component))
    assert default.to_dict()["combined"]["gains_without_first"] == dropped.to_dict()["combined"]["gains"]


# ---- sandwich and post-norm blocks ------------------------------------------------------------------
@pytest.fixture(scope="module")
def post_normed(tmp_path_factory, tokenizer):
    """``post_normed(family)``: (bridge, reference per-token norms, the HF model itself) of a 3-layer
    checkpoint with randomized norm weights and biases (``toy.build_checkpoint``), cached."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("post-normed")
    cached = {}

    def get(family):
        if family not in cached:
            folder = build_checkpoint(root / family, family, tokenizer=tokenizer, n_layers=3)
            hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
            cached[family] = (load_model(str(folder), device="cpu", dtype="float32"),
                              seed_token_norms(hf, tokenizer, TOY_PROMPTS), hf)
        return cached[family]

    return get


@pytest.mark.parametrize("family", ["gemma2", "olmo2"])
def test_post_normed_readings_equal_the_hf_reference(family, post_normed, tokenizer):
    model, token_norms, _ = post_normed(family)
    assert min(norms["attn_out"].shape[1] for norms in token_norms) == 1  # the one-token prompt is there
    results = {definition: measure_gains(model, TOY_PROMPTS, definition=definition, tokenizer=tokenizer,
                                         batch_size=2, progress=False)
               for definition in ("seed", "residual")}
    check_both_definitions(results, token_norms, family)
    result = results["seed"]
    assert result.without_first(1).n_prompts == len(TOY_PROMPTS) - 1  # the one-token prompt left out
    # Per prompt the seed gain is the module's gain times the post-norm's, exactly.
    reads, n = result.reads, result.n_tokens[:, None]
    for component in ("attn", "mlp"):
        module = (reads.sums[f"{component}_module_out"] / n) / (reads.sums[f"{component}_in"] / n)
        post = (reads.sums[f"{component}_out"] / n) / (reads.sums[f"{component}_module_out"] / n)
        np.testing.assert_allclose(module * post, result.per_prompt_gains(component), rtol=1e-9)
        # Randomized post-norm weights: the post-norm's gain is no identity.
        assert np.all(np.abs(np.log(result.post_norm_gains(component))) > 1e-2)


def test_batch_size_and_padding_change_no_reading(post_normed, tokenizer):
    model, _, _ = post_normed("gemma2")
    one, four = (measure_gains(model, TOY_PROMPTS, tokenizer=tokenizer, batch_size=size, progress=False)
                 for size in (1, 4))
    for component in ("attn", "mlp", "block", "combined"):
        # Other padding, so other float order inside attention: per-row values agree to rounding.
        np.testing.assert_allclose(one.gains_without_first(component), four.gains_without_first(component), rtol=1e-5)
    for component in ("attn", "mlp"):
        np.testing.assert_allclose(one.module_gains(component), four.module_gains(component), rtol=1e-5)
        # A token whose rounding crosses a bin edge moves a median by at most one bin.
        np.testing.assert_allclose(one.median_gains(component), four.median_gains(component), rtol=10 ** BIN_WIDTH - 1)
    np.testing.assert_allclose(one.block_cumulative_gains, four.block_cumulative_gains, rtol=1e-5)
    np.testing.assert_allclose(one.other_definition.mlp_gains, four.other_definition.mlp_gains, rtol=1e-5)


def test_readings_survive_results_json(post_normed, tokenizer, tmp_path):
    from funnel_tl.results import GainResult

    model, _, _ = post_normed("gemma2")
    result = measure_gains(model, TOY_PROMPTS, tokenizer=tokenizer, progress=False).with_intervals(n_resamples=200)
    loaded = GainResult.load(result.save(tmp_path / "results.json"))
    assert loaded.with_intervals(n_resamples=200).to_dict() | {"provenance": None} == \
        result.to_dict() | {"provenance": None}
    np.testing.assert_array_equal(loaded.token_histograms.counts, result.token_histograms.counts)
    assert result.block_cumulative_intervals.shape == (3, 2)


@pytest.mark.parametrize("family", ["gemma2", "olmo2"])
def test_post_normed_heads_add_up_before_the_post_norm(family, post_normed, tokenizer):
    """Heads of sandwich / post-norm blocks are read where they add up (the module output before the
    post-norm): each head's norm equals z_i W_O^i from HF hooks, and the layer gain beside them is
    the module gain of measure_gains (of a definition-independent read, under both definitions)."""
    from funnel_tl import head_gains
    from funnel_tl.reference import seed_head_token_norms

    model, _, hf = post_normed(family)
    reference = seed_head_token_norms(hf, tokenizer, TOY_PROMPTS)  # per prompt [layer, head, pos]
    expected = np.mean([norms.mean(axis=2) for norms in reference], axis=0)  # [layer, head]
    for definition in ("seed", "residual"):
        heads = head_gains(model, TOY_PROMPTS, definition=definition, tokenizer=tokenizer, batch_size=2, progress=False)
        np.testing.assert_allclose(heads.head_norms, expected, rtol=RELATIVE, err_msg=f"{family} {definition}")
        gains = measure_gains(model, TOY_PROMPTS, definition=definition, tokenizer=tokenizer, progress=False)
        if definition == "seed" or family == "olmo2":  # the module reads u; olmo2's u is the stream
            np.testing.assert_allclose(heads.attn_gains, gains.module_gains("attn"), rtol=RELATIVE)
        # Projection shares add up to 1 with the (absent) b_O term: the heads sum to what was read.
        np.testing.assert_allclose(heads.projection_shares.sum(axis=1), 1.0, atol=1e-5)
        assert "before the attention's post-norm" in heads.format_top(3)
