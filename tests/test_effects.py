"""Effects (issue 22): every Δloss and KL against HF module hooks that change the module's output,
one prompt at a time (``reference.reference_effects``); batch size, padding, stacking and the
executor against each other; resume; the reading; the command line.

The random-weight checkpoints have their norm affines and biases randomized (conftest), so an
intervention on the wrong tensor (before a post-norm, on the residual BLOOM folds in) is off by
the effect itself, which the tests check to be far above their tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from funnel_tl import EffectResult, FunnelError, load_model, measure_effects, measure_gains
from funnel_tl.analysis.effects import format_effects, gain_versus_effect, spearman, summary_lines
from funnel_tl.cli.entry import main
from funnel_tl.components import EFFECT_COMPONENTS
from funnel_tl.measure import effects as effects_module
from funnel_tl.measure.effect_sizes import effects_batch_size
from funnel_tl.measure.interventions import parse_intervention, parse_interventions
from funnel_tl.measure.means import component_means
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.measure.reads import ReadSums
from funnel_tl.results.effects import MEASURES
from funnel_tl.results.gains import GainResult
from funnel_tl.testing.reference import reference_effects, reference_means
from funnel_tl.testing.toy import build_checkpoint

PROMPTS = [
    "The capital of France is Paris, which is known for the Eiffel Tower.",
    "def f(x):\n    return x * 2",
    "a b c d e f g h",
    "Water boils at one hundred degrees.",
]
INTERVENTIONS = ("zero", "mean", "scale:0.5", "scale:2")
SPECS = [(spec.name, spec.kind, spec.factor) for spec in parse_interventions(INTERVENTIONS)]
# The 1e-4 relative, and an absolute floor for effects near zero: both run the same float32
# weights and take log-probabilities in float64, but a padded row's attention softmax spans another
# length than the prompt alone, which rounds differently (measured ≤ 3e-7 nats on these models);
# a wrong tensor is off by the effect itself, checked to reach ≥ 100 times the floor.
RELATIVE, FLOOR = 1e-4, 1e-6


def assert_matches_reference(result, expected, relative=RELATIVE, floor=FLOOR, label=""):
    np.testing.assert_allclose(
        result.clean_loss, expected["clean_loss"], rtol=relative, atol=floor, err_msg=f"{label} clean loss"
    )
    for name in result.interventions:
        for component in EFFECT_COMPONENTS:
            for measure in MEASURES:
                np.testing.assert_allclose(
                    result.per_prompt(measure, name, component),
                    expected[name][component][measure],
                    rtol=relative,
                    atol=floor,
                    err_msg=f"{label} {name} {component} {measure}",
                )


def assert_effects_are_large(expected, floor=FLOOR):
    """Guards the comparison: the effects under test are far above the floor that excuses them."""
    for name, _, _ in SPECS:
        for component in EFFECT_COMPONENTS:
            assert np.abs(expected[name][component]["delta_loss"]).max() > 100 * floor, (name, component)
            assert expected[name][component]["kl"].max() > 100 * floor, (name, component)


# ---- against the HF-hook reference -------------------------------------------------------------
# Weights drawn 5x wider than HF's default: at 0.02 a random model's mean ablation moves its
# predictions by KL ~1e-7, too close to rounding to test anything; at 0.1 every effect is 1e-3..0.3.
INITIALIZER_RANGE = 0.1


@pytest.fixture(scope="module")
def strong(tmp_path_factory, tokenizer):
    """``strong(name)``: (bridge, HF model with eager attention) of a random checkpoint of a
    ``toy.ARCHITECTURES`` shape or ``toy.FAMILIES`` family, norms and biases randomized, built once."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("effect-checkpoints")
    cached = {}

    def get(name):
        if name not in cached:
            folder = build_checkpoint(root / name, name, tokenizer=tokenizer, initializer_range=INITIALIZER_RANGE)
            cached[name] = (
                load_model(str(folder), device="cpu", dtype="float32"),
                AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval(),
            )
        return cached[name]

    return get


@pytest.mark.parametrize("arch", ["neox-parallel", "neox-serial", "gpt2", "llama-gqa"])
def test_effects_equal_hf_reference(arch, strong, tokenizer):
    model, hf = strong(arch)
    expected = reference_effects(hf, tokenizer, PROMPTS, SPECS)
    assert_effects_are_large(expected)
    # Two batches of two, right-padded: the fast HF runner, checked against the TL hooks on the first.
    fast = measure_effects(model, PROMPTS, batch_size=2, progress=False)
    assert fast.provenance["executor"] == "hf+replay" and fast.provenance["executor_fallback"] is None
    assert_matches_reference(fast, expected, label=f"{arch} hf")
    # One batch of four, stacked three interventions per forward, through the TransformerLens hooks.
    hooked = measure_effects(model, PROMPTS, batch_size=4, stack=3, executor="transformer_lens", progress=False)
    assert hooked.provenance["executor"] == "transformer_lens" and hooked.provenance["stack"] == 3
    assert_matches_reference(hooked, expected, label=f"{arch} tl")


# Gemma 2: sandwich norms (the contribution is the post-norm's output); BLOOM folds the residual
# into its modules' outputs; Falcon adds the attention output into the MLP's output in place.
@pytest.mark.parametrize("name", ["gemma2", "bloom", "falcon"])
def test_family_effects_equal_hf_reference(name, strong, tokenizer):
    model, hf = strong(name)
    expected = reference_effects(hf, tokenizer, PROMPTS, SPECS)
    assert_effects_are_large(expected)
    result = measure_effects(model, PROMPTS, batch_size=2, tokenizer=tokenizer, progress=False)
    assert_matches_reference(result, expected, label=name)


def test_sandwich_contribution_is_the_post_norm_output(strong, tokenizer):
    """Changing the module's own output (before the post-norm) gives other numbers: the test above
    would fail if the intervention sat there."""
    import torch

    model, hf = strong("gemma2")
    layer = hf.model.layers[0]
    expected = reference_effects(hf, tokenizer, PROMPTS[:2], [("scale:2", "scale", 2.0)], layers=[0])
    handle = layer.self_attn.register_forward_hook(lambda module, args, output: (output[0] * 2,) + tuple(output[1:]))
    try:
        with torch.inference_mode():
            before_norm = [hf(**tokenizer(p, return_tensors="pt")).logits for p in PROMPTS[:2]]
    finally:
        handle.remove()
    result = measure_effects(model, PROMPTS[:2], interventions="scale:2", layers=[0], progress=False)
    np.testing.assert_allclose(
        result.per_prompt("delta_loss", "scale:2", "attention")[:, 0],
        expected["scale:2"]["attention"]["delta_loss"][:, 0],
        rtol=RELATIVE,
        atol=FLOOR,
    )
    # RMSNorm is scale-invariant: doubling before the post-norm changes (almost) nothing, after it a lot.
    with torch.inference_mode():
        clean = [hf(**tokenizer(p, return_tensors="pt")).logits for p in PROMPTS[:2]]
    assert max(float((a - b).abs().max()) for a, b in zip(before_norm, clean, strict=True)) < 1e-3
    assert np.abs(expected["scale:2"]["attention"]["kl"]).min() > 1e-3


def test_hooked_transformer_effects_equal_reference(strong, tokenizer, tmp_path):
    """A TL 3.x HookedTransformer (skipped on TransformerLens 4.x, run by make test-tl3): the TL hooks alone."""
    from conftest import load_hooked

    _, hf = strong("gpt2")
    folder = tmp_path / "gpt2"
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model = load_hooked(folder)
    expected = reference_effects(hf, tokenizer, PROMPTS, SPECS)
    result = measure_effects(model, PROMPTS, batch_size=2, tokenizer=tokenizer, progress=False)
    assert result.provenance["executor"] == "transformer_lens"
    assert_matches_reference(result, expected, label="HookedTransformer")


def test_drop_first_and_layer_subset_equal_reference(strong, tokenizer):
    model, hf = strong("llama-gqa")
    expected = reference_effects(hf, tokenizer, PROMPTS, SPECS, drop_first=2, layers=[1])
    result = measure_effects(model, PROMPTS, layers=[-1], drop_first=2, batch_size=3, progress=False)
    assert result.layers == (1,) and result.drop_first == 2
    assert_matches_reference(result, expected, label="drop_first=2, layer 1")
    assert list(result.n_predicted) == [len(tokenizer(p)["input_ids"]) - 3 for p in PROMPTS]


def test_mean_is_over_every_measured_token(strong, tokenizer):
    model, hf = strong("neox-serial")
    for drop_first in (0, 1):
        means = component_means(model, PROMPTS, MeasureOptions(batch_size=3, drop_first=drop_first), progress=False)
        expected = reference_means(hf, tokenizer, PROMPTS, drop_first=drop_first)
        assert means.n_tokens == sum(len(tokenizer(p)["input_ids"]) - drop_first for p in PROMPTS)
        for component in EFFECT_COMPONENTS:
            # float64 sums of the same float32 activations, batched and padded against one prompt at a time.
            np.testing.assert_allclose(means.mean(component), expected[component], rtol=1e-5, atol=1e-7)


# ---- numbers that must not move ----------------------------------------------------------------
def _assert_same(a: EffectResult, b: EffectResult, tolerance=(1e-5, 1e-6)):
    np.testing.assert_allclose(a.clean_loss, b.clean_loss, rtol=tolerance[0], atol=tolerance[1])
    for name in a.interventions:
        for component in EFFECT_COMPONENTS:
            for measure in MEASURES:
                np.testing.assert_allclose(
                    a.per_prompt(measure, name, component),
                    b.per_prompt(measure, name, component),
                    rtol=tolerance[0],
                    atol=tolerance[1],
                    err_msg=f"{name} {component} {measure}",
                )


def test_batch_size_padding_stack_and_executor_change_nothing(strong):
    """Float32 rounding only: one prompt per batch (no padding), padded batches, stacked copies,
    the TL hooks and the HF modules."""
    model, _ = strong("neox-parallel")
    alone = measure_effects(model, PROMPTS, batch_size=1, executor="transformer_lens", progress=False)
    for options in (
        dict(batch_size=4),
        dict(batch_size=3, stack=5),
        dict(batch_size=2, stack=32),
        dict(batch_size=2, executor="hf"),
    ):
        _assert_same(measure_effects(model, PROMPTS, progress=False, **options), alone)


def test_replay_skips_the_layers_before_the_change_and_changes_no_bit(strong, tokenizer):
    import torch

    from funnel_tl.measure.intervene import Edit, HFRunner, contribution_hooks

    model, _ = strong("llama-gqa")
    runner, _ = HFRunner.for_model(model, contribution_hooks([0, 1]))
    assert runner.name == "hf+replay"
    ran = []  # forwards in which layer 0's attention ran
    first_attention = runner.executor.points["blocks.0.hook_attn_out"][0]
    handle = first_attention.register_forward_hook(lambda *args: ran.append(1))
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
    width = max(map(len, ids))
    tokens = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    edits = [
        Edit(1, "mlp", parse_intervention("zero"), slice(0, 2)),
        Edit(1, "attention", parse_intervention("scale:2"), slice(2, 4)),
    ]
    try:
        with torch.inference_mode():
            runner.logits(tokens, mask)  # the clean forward keeps every layer's output
            replayed = runner.logits(tokens.repeat(2, 1), mask.repeat(2, 1), edits)
            assert len(ran) == 1  # layer 0 did not run again
            runner.kept = None  # computed in full
            computed = runner.logits(tokens.repeat(2, 1), mask.repeat(2, 1), edits)
            assert len(ran) == 2
    finally:
        handle.remove()
    assert torch.equal(replayed, computed)


def test_a_fast_runner_that_disagrees_is_not_used(bridge, monkeypatch):
    """The HF runner proves itself on every run: one that scales the logits is caught and replaced."""
    from funnel_tl.measure import intervene

    honest = intervene.HFRunner.logits
    monkeypatch.setattr(
        intervene.HFRunner, "logits", lambda self, *args, **kwargs: honest(self, *args, **kwargs) * 1.01
    )
    truth = measure_effects(bridge("gpt2"), PROMPTS, batch_size=2, executor="transformer_lens", progress=False)
    with pytest.warns(UserWarning, match="differed from the TransformerLens hooks"):
        result = measure_effects(bridge("gpt2"), PROMPTS, batch_size=2, progress=False)
    assert result.provenance["executor"] == "transformer_lens"
    assert "differed" in result.provenance["executor_fallback"]
    # The means' pass may still run on the engine's fast executor (checked by the engine itself).
    _assert_same(result, truth)


def test_intervals_are_the_gains_method(bridge):
    """``stats.mean_intervals`` on per-prompt gains gives ``bootstrap_intervals``' attention intervals,
    t intervals (the default) and the percentile bootstrap alike: the effects follow the gains' method."""
    from funnel_tl.analysis.stats import mean_intervals, t_critical

    base = measure_effects(bridge("gpt2"), PROMPTS, interventions="zero", progress=False)
    for method in ("t", "percentile"):
        result = base.with_intervals(n_resamples=500, seed=3, method=method)
        gains = result.gains
        assert result.intervals.method == gains.intervals.method == method
        expected = mean_intervals(gains.per_prompt_gains("attn"), n_resamples=500, seed=3, method=method)
        np.testing.assert_allclose(np.maximum(expected, 0), gains.intervals.attn, rtol=1e-12)  # a gain's kept ≥ 0
        values = result.per_prompt("delta_loss", "zero", "mlp")  # [prompt, layer]
        bounds = result.intervals.of("delta_loss", "zero", "mlp")
        assert np.all(bounds[:, 0] <= values.mean(axis=0)) and np.all(values.mean(axis=0) <= bounds[:, 1])
        assert result.intervals.clean_loss[0] <= result.mean_clean_loss <= result.intervals.clean_loss[1]
        assert np.all(result.intervals.of("kl", "zero", "attention")[:, 0] >= 0)
    # The t interval by hand: mean ± t(n−1) · sd / √n over the four prompts.
    half = t_critical(0.95, 3) * values.std(axis=0, ddof=1) / 2
    np.testing.assert_allclose(
        base.with_intervals().intervals.of("delta_loss", "zero", "mlp"),
        np.stack([values.mean(axis=0) - half, values.mean(axis=0) + half], axis=1),
        rtol=1e-12,
    )


# ---- resume ------------------------------------------------------------------------------------
def test_unfinished_checkpoint_is_continued_and_finished_one_reused(bridge, tmp_path, monkeypatch):
    model = bridge("llama-gqa")
    path = tmp_path / "effects.json"
    whole = measure_effects(model, PROMPTS, batch_size=1, progress=False)
    monkeypatch.setattr(effects_module, "CHECKPOINT_SECONDS", 1e9)  # no periodic write: the one on stopping
    real, calls = effects_module.batch_effects, []

    def interrupted(*args, **kwargs):  # killed during the third batch (the fast runner's check does not count)
        if kwargs.get("on_forward") is not None:
            if len(calls) == 2:
                raise KeyboardInterrupt
            calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(effects_module, "batch_effects", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure_effects(model, PROMPTS, batch_size=1, progress=False, checkpoint=path)
    partial = json.loads(path.read_text())
    assert partial["complete"] is False and len(partial["per_prompt"]["rows"]) == 2
    with pytest.raises(FunnelError, match="did not finish"):
        EffectResult.load(path)
    monkeypatch.setattr(effects_module, "batch_effects", real)
    resumed = measure_effects(model, PROMPTS, batch_size=1, progress=False, checkpoint=path)
    assert resumed.provenance["resumed_prompts"] == 2
    _assert_same(resumed, whole, tolerance=(1e-12, 0))

    def never(*args, **kwargs):
        raise AssertionError("a finished checkpoint of the same settings was measured again")

    monkeypatch.setattr(effects_module, "batch_effects", never)
    again = measure_effects(model, PROMPTS, batch_size=1, progress=False, checkpoint=path)
    _assert_same(again, whole, tolerance=(1e-12, 0))
    monkeypatch.setattr(effects_module, "batch_effects", real)
    with pytest.warns(UserWarning, match="drop_first 0, now 1"):
        other = measure_effects(model, PROMPTS, batch_size=1, drop_first=1, progress=False, checkpoint=path)
    assert other.drop_first == 1 and EffectResult.load(path).drop_first == 1


def test_effects_file_round_trip_and_table(bridge, tmp_path):
    result = measure_effects(
        bridge("gpt2"), PROMPTS, interventions=["zero", "scale:0.5"], progress=False, intervals=True
    )
    path = result.save(tmp_path / "effects.json")
    data = json.loads(path.read_text())
    assert data["interventions"] == ["zero", "scale:0.5"]
    for name in ("zero", "scale:0.5"):
        for component in EFFECT_COMPONENTS:
            for measure in MEASURES:
                assert data[name][component][measure] == pytest.approx(list(result.effect(measure, name, component)))
    assert data["intervals"]["zero"]["mlp"]["delta_loss"] == result.intervals.of("delta_loss", "zero", "mlp").tolist()
    assert data["analysis"]["intervention"] == "zero" and data["gains"]["attention"]["gains"]
    loaded = EffectResult.load(path)
    _assert_same(loaded, result, tolerance=(0, 0))
    assert loaded.to_dict() == data
    table = loaded.to_pandas()
    assert len(table) == 2 * 2 * result.n_layers
    assert {"delta_loss_ci_low", "kl_ci_high", "gain", "gain_ci_low"} <= set(table.columns)
    zero_mlp = table.query("intervention == 'zero' and component == 'mlp'")
    np.testing.assert_allclose(zero_mlp["gain"], result.gain("mlp"))
    (tmp_path / "other.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(FunnelError, match="not a funnel_tl effects file"):
        EffectResult.load(tmp_path / "other.json")


def test_bad_input_is_refused_before_any_pass(bridge):
    model = bridge("gpt2")
    for bad, words in (
        ("shift", "unknown intervention"),
        ("scale:1", "changes nothing"),
        ("scale:inf", "finite"),
        (["zero", "zero"], "twice"),
        ([], "no interventions"),
    ):
        with pytest.raises(FunnelError, match=words):
            measure_effects(model, PROMPTS, interventions=bad)
    with pytest.raises(FunnelError, match="stack must be"):
        measure_effects(model, PROMPTS, stack=0)
    with pytest.raises(FunnelError, match="next token to predict"):
        measure_effects(model, ["x"])
    with pytest.raises(FunnelError, match="out of range"):
        measure_effects(model, PROMPTS, layers=[5])
    with pytest.raises(FunnelError, match=r"non-finite logits with scale:1e\+39 on attention L0"):
        measure_effects(model, PROMPTS, interventions="scale:1e39", progress=False)  # past float32's largest
    assert parse_intervention(" Scale:2.0 ").name == "scale:2"


# ---- the reading -------------------------------------------------------------------------------
def test_spearman_matches_a_hand_computation():
    # Ranks 1..5 against 2,1,4,3,5: d² = 1+1+1+1+0 = 4, ρ = 1 - 6·4 / (5·24) = 0.8.
    assert float(spearman(np.arange(5.0), np.array([2.0, 1.0, 4.0, 3.0, 5.0]))) == pytest.approx(0.8)
    # Ties share their mean rank (as scipy.stats.spearmanr): x ranks 1.5,1.5,3 against 1,2,3.
    assert float(spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0]))) == pytest.approx(np.sqrt(3) / 2)
    assert np.isnan(spearman(np.ones(4), np.arange(4.0)))


def _seed_gains(model: str, out_sums: dict, in_sums: dict, n_tokens: int, reads=None) -> GainResult:
    """A seed-definition, serial-block GainResult of the given ``[prompt, layer]`` sums, every
    prompt ``n_tokens`` long."""
    n_prompts, n_layers = out_sums["mlp"].shape
    return GainResult(
        model=model,
        definition="seed",
        n_layers=n_layers,
        d_model=8,
        parallel_blocks=False,
        prompts=None,
        n_tokens=np.full(n_prompts, n_tokens),
        out_sums=out_sums,
        in_sums=in_sums,
        reads=reads,
    )


def _synthetic(
    last_mlp: float,
    other_mlp: float | None,
    spread: float = 0.01,
    n_prompts: int = 12,
    n_layers: int = 4,
    mlp_effects: np.ndarray | None = None,
    gain=None,
):
    """An EffectResult with known MLP effects (layer 0 ``other_mlp``, the last ``last_mlp``, others 0;
    ``other_mlp=None``: layer 0 is the last MLP's values ± ``spread`` in turn, a tie on average).
    ``mlp_effects`` (``[layer]``) and ``gain`` (a GainResult of ``n_prompts``) replace those."""
    rng = np.random.default_rng(0)
    if gain is None:
        gains = {c: np.full((n_prompts, n_layers), 2.0) for c in ("attn", "mlp", "block")}
        gains["mlp"][:, -1] = 4.0  # the last MLP expands most
        ins = {c: np.ones((n_prompts, n_layers)) for c in gains}
        gain = _seed_gains("toy", {c: gains[c] * 5 for c in gains}, {c: ins[c] * 5 for c in gains}, n_tokens=5)
    mlp = np.zeros((n_prompts, n_layers)) + spread * rng.standard_normal((n_prompts, n_layers))
    if mlp_effects is not None:
        mlp += mlp_effects
    elif other_mlp is None:
        mlp[:, -1] += last_mlp
        mlp[:, 0] = mlp[:, -1] + spread * (-1.0) ** np.arange(n_prompts)
    else:
        mlp[:, -1] += last_mlp
        mlp[:, 0] += other_mlp
    tables = {
        m: {"zero": {"attention": np.abs(spread * rng.standard_normal((n_prompts, n_layers))), "mlp": mlp}}
        for m in MEASURES
    }
    return EffectResult(
        model="toy",
        n_layers=n_layers,
        layers=tuple(range(n_layers)),
        interventions=("zero",),
        prompts=None,
        n_predicted=np.full(n_prompts, 4),
        n_positions=np.full(n_prompts, 5),
        clean_loss=np.full(n_prompts, 3.0),
        gains=gain,
        **tables,
    ).with_intervals(n_resamples=500)


def test_rank_correlation_from_position_1_is_a_drop_first_runs(tokenizer, tmp_path):
    """The companion ρ (gains from position 1, where an attention sink's first token can make a
    layer's gain) equals the ρ of the same effects against the gains of an independent
    drop_first=1 measurement of the same prompts; and a run that drops position 0 itself has none."""
    folder = build_checkpoint(tmp_path / "deep", "llama-gqa", tokenizer=tokenizer, n_layers=5, initializer_range=0.1)
    model = load_model(str(folder), device="cpu", dtype="float32")
    result = measure_effects(model, PROMPTS, interventions="zero", progress=False).with_intervals(n_resamples=200)
    reading = gain_versus_effect(result)
    later = measure_gains(model, PROMPTS, drop_first=1, progress=False)  # never counts position 0
    for component, gain_component in (("attention", "attn"), ("mlp", "mlp")):
        correlation = reading.correlations[component]
        effect = result.effect("delta_loss", "zero", component)
        expected = float(spearman(np.abs(np.log(later.gains(gain_component))), effect))
        # ranks of gains that agree to float32 rounding (the same sums, in other batches): equal ranks
        assert correlation.from_position_1 == pytest.approx(expected, abs=1e-12), component
        low, high = correlation.from_position_1_interval
        assert low <= correlation.from_position_1 <= high
    assert "with gains from position 1" in "\n".join(summary_lines(result, reading))
    dropped = measure_effects(model, PROMPTS, interventions="zero", drop_first=1, progress=False)
    assert all(c.from_position_1 is None for c in gain_versus_effect(dropped).correlations.values())


def _gains_with_a_sink(all_positions, from_position_1, n_prompts: int = 12) -> GainResult:
    """A seed-definition GainResult of ``n_prompts`` prompts of 5 tokens whose ``[layer]`` MLP
    gains are ``all_positions`` over every token and ``from_position_1`` over positions 1-4 (as
    a first token's norms can make them); attention and block gains 0.5 and 1 at every position."""

    def sums(gains, n_tokens):  # [prompt, layer] sums of norms over n_tokens tokens, inputs of norm 1
        return np.tile(np.asarray(gains, dtype=np.float64), (n_prompts, 1)) * n_tokens

    n_layers = len(all_positions)
    ones = [1.0] * n_layers
    every, later = (
        {"resid_pre": sums(ones, n), "attn_in": sums(ones, n), "mlp_in": sums(ones, n),
         "attn_out": sums([0.5] * n_layers, n), "resid_post": sums(ones, n), "mlp_out": sums(mlp, n)}
        for n, mlp in ((5, all_positions), (4, from_position_1))
    )  # fmt: skip
    roles = {"attn": ("attn_out", "attn_in"), "mlp": ("mlp_out", "mlp_in"), "block": ("resid_post", "resid_pre")}
    return _seed_gains(
        "synthetic/sink",
        {c: every[o] for c, (o, _) in roles.items()},
        {c: every[i] for c, (_, i) in roles.items()},
        n_tokens=5,
        reads=ReadSums(
            reads={role: role for role in every}, sums=every, sums_from_1=later, n_tokens_from_1=[4] * n_prompts
        ),
    )


def test_rank_correlation_from_position_1_can_reverse_the_one_with_position_0():
    """Where position 0 orders the MLP gains (|log gain| rises with the effect) and the later
    tokens reverse that order, the two correlations say so: +1 with it, -1 from position 1."""
    gain = _gains_with_a_sink(all_positions=[1.5, 2.0, 4.0, 8.0], from_position_1=[8.0, 4.0, 2.0, 1.5])
    np.testing.assert_allclose(gain.without_first(1).gains("mlp"), [8.0, 4.0, 2.0, 1.5])
    result = _synthetic(0.0, 0.0, mlp_effects=np.array([0.1, 0.2, 0.3, 0.4]), gain=gain)
    mlp = gain_versus_effect(result).correlations["mlp"]
    assert mlp.spearman == pytest.approx(1.0) and mlp.from_position_1 == pytest.approx(-1.0)
    # the effects' spread (0.01) is far below their steps (0.1): every resample keeps both orders
    assert mlp.interval == pytest.approx((1.0, 1.0)) and mlp.from_position_1_interval == pytest.approx((-1.0, -1.0))
    line = next(line for line in summary_lines(result) if "ρ = +1.00" in line and "MLP" in line)
    assert "with gains from position 1 (an attention sink's first token left out): ρ = -1.00" in line
    written = gain_versus_effect(result).to_dict()["spearman_abs_log_gain_from_position_1_vs_delta_loss"]
    assert written["mlp"]["rho"] == pytest.approx(-1.0)


def test_the_last_mlp_answer_follows_the_paired_intervals():
    assert gain_versus_effect(_synthetic(last_mlp=1.0, other_mlp=0.5)).last_mlp.answer == "yes"
    no = gain_versus_effect(_synthetic(last_mlp=0.5, other_mlp=1.0)).last_mlp
    assert (no.answer, no.top_layer, no.rank) == ("no", 0, 2) and no.difference[1] > 0
    close = gain_versus_effect(_synthetic(last_mlp=1.0, other_mlp=None, spread=0.2)).last_mlp
    assert close.answer == "not separable" and close.ties == (0,)
    text = format_effects(_synthetic(last_mlp=0.5, other_mlp=1.0))
    assert "Is the expanding last-layer MLP the most important MLP? No:" in text
    assert "Spearman" in text and "Relied on most" in text
    from dataclasses import replace

    bare = replace(_synthetic(last_mlp=0.5, other_mlp=1.0), intervals=None)  # --bootstrap 0
    assert gain_versus_effect(bare).last_mlp.answer == "no"
    assert "No, on the point estimates (no intervals drawn)" in format_effects(bare)


def test_cuda_batch_size_arithmetic():
    assert effects_batch_size(8 * 2**30, 10**6, 128, 10_000) == 33
    assert effects_batch_size(2**20, 10**6, 128, 10) == 1


# ---- the command line --------------------------------------------------------------------------
def test_cli_writes_effects_and_page(checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "effects",
        "--model",
        str(checkpoints["gpt2"]),
        "--out",
        str(out),
        "--bootstrap",
        "200",
        "--interventions",
        "zero,mean",
        "scale:2",
        "--batch-size",
        "2",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Is the expanding last-layer MLP the most important MLP?" in printed and "Spearman" in printed
    data = json.loads((out / "effects.json").read_text())
    assert data["interventions"] == ["zero", "mean", "scale:2"] and data["intervals"]["n_resamples"] == 200
    page = (out / "effects.html").read_text()
    assert "plotly.min.js" in page and "Relied on most" in page
    assert main(argv) == 0  # a finished file of the same settings is read back, not measured
    assert "finished earlier" in capsys.readouterr().err
    (out / "effects.html").unlink()
    assert main(["report", str(out), "--bootstrap", "100"]) == 0  # no model: the page from effects.json
    assert (out / "effects.html").is_file() and "Spearman" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--interventions", "shift"], "unknown intervention"),
        (["--interventions", "zero", "zero"], "twice"),
        (["--stack", "0"], "--stack"),
        (["--layers", "3-1"], "runs backwards"),
    ],
)
def test_cli_refuses_bad_options_before_loading(argv, words, tmp_path, capsys):
    # The model folder does not exist: an error about it would mean the option was checked too late.
    try:
        status = main(["effects", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *argv])
    except SystemExit as exit:  # argparse's own refusal of a bad value
        status = exit.code
    assert status == 2
    error = capsys.readouterr().err
    assert words in error and len(error.strip().splitlines()) == 1


# ---- the real model -----------------------------------------------------------------------------
# SmolLM2-135M's first-token residual stream reaches norms of ~10^3: a padded row's float32 softmax
# over another sequence length rounds its logits by up to 1.3e-4 against the prompt alone
# (measured), which moves Δloss and KL by up to 2e-5 nats; unpadded, they equal the reference to 1e-15.
SMOLLM2_FLOOR = 1e-4


@pytest.mark.slow
def test_smollm2_effects_equal_reference(smollm2_hf, tmp_path, capsys):
    """The issue's bar on the real model: ``funnel-tl effects`` writes zero-ablation Δloss and KL of
    every layer and component equal to the HF-hook reference to 1e-4; then every intervention,
    batched and padded, on the first layer, the massive-activation layer 11 and the last."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(smollm2_hf, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    prompts = tmp_path / "prompts.json"  # a list: the second prompt holds a line break
    prompts.write_text(json.dumps(PROMPTS[:2]), encoding="utf-8")
    out = tmp_path / "run"
    assert (
        main(
            [
                "effects",
                "--model",
                str(smollm2_hf),
                "--prompts",
                str(prompts),
                "--interventions",
                "zero",
                "--batch-size",
                "1",
                "--bootstrap",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "Is the expanding last-layer MLP the most important MLP?" in capsys.readouterr().out
    data = json.loads((out / "effects.json").read_text())
    expected = reference_effects(hf, tokenizer, PROMPTS[:2], [("zero", "zero", 1.0)])
    for component in EFFECT_COMPONENTS:
        for measure in MEASURES:
            values = expected["zero"][component][measure]  # [prompt, layer]
            assert values.shape == (2, 30) and np.abs(values).min() > 1e-4  # unpadded: no floor needed
            np.testing.assert_allclose(
                data["zero"][component][measure],
                values.mean(axis=0),
                rtol=RELATIVE,
                err_msg=f"SmolLM2 zero {component} {measure}",
            )
            np.testing.assert_allclose(data["per_prompt"]["zero"][component][measure], values, rtol=RELATIVE)
    model = load_model(str(smollm2_hf), device="cpu", dtype="float32")
    layers = [0, 11, 29]
    expected = reference_effects(hf, tokenizer, PROMPTS[:3], SPECS, layers=layers)
    result = measure_effects(model, PROMPTS[:3], layers=layers, batch_size=2, progress=False)
    assert_matches_reference(result, expected, floor=SMOLLM2_FLOOR, label="SmolLM2")


@pytest.mark.slow
def test_torchrun_effects_equal_one_process(tmp_path):
    """Two CPU processes (gloo) write what one does: the means summed over both ranks first, every
    prompt in the batch one process would put it in, rank 0 alone writing."""
    from test_distributed import _torchrun

    prompts = tmp_path / "prompts.json"  # a list: one prompt holds a line break
    prompts.write_text(json.dumps(PROMPTS + ["One more line of text to measure.", "And a last one."]), encoding="utf-8")
    common = [
        "--model",
        "nano-2l",
        "--prompts",
        str(prompts),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--interventions",
        "zero,mean",
        "--bootstrap",
        "0",
    ]
    done = _torchrun(["effects", *common, "--out", str(tmp_path / "two")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Saved: ") == 2  # rank 0 alone
    assert main(["effects", *common, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "effects.json").read_text())
    one = json.loads((tmp_path / "one" / "effects.json").read_text())
    assert two["prompts"] == one["prompts"] and two["provenance"]["world_size"] == 2
    # The same batches; the executor may differ (a rank's one batch goes through the TL hooks, which
    # give the HF modules' logits to float32 rounding). A Δloss is the difference of two float32 losses
    # of a few nats, so its rounding is absolute, ~loss·eps ≈ 1e-6 (FLOOR), not relative to the Δloss.
    for name in ("zero", "mean"):
        for component in EFFECT_COMPONENTS:
            for measure in MEASURES:
                np.testing.assert_allclose(
                    two["per_prompt"][name][component][measure],
                    one["per_prompt"][name][component][measure],
                    rtol=1e-5,
                    atol=FLOOR,
                )
    np.testing.assert_allclose(two["per_prompt"]["clean_loss"], one["per_prompt"]["clean_loss"], rtol=1e-6)
