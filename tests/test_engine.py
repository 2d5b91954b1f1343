"""The measurement engine: the fast executor gives the TL hooks' numbers, or is not used.

Every comparison here is against the TransformerLens hooks themselves (``executor="transformer_lens"``),
the definition of what is read; test_gains/test_heads compare both against the seed's HF hooks.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from funnel_tl import FunnelError, head_gains, measure_gains
from funnel_tl.measure import engine
from funnel_tl.measure.engine import HFExecutor, auto_batch_size, prompt_sums, resolve_batch_size
from funnel_tl.testing.toy import ARCHITECTURES, corpus_texts

COMPONENTS = ("attn", "mlp", "block")


@pytest.fixture(scope="module")
def prompts():
    """1 to ~60 tokens, out of order: batches of 3 pad most rows."""
    words = " ".join(corpus_texts()).split()
    counts = [14, 1, 5, 20, 2, 9, 1, 7, 3, 12]
    out, start = [], 0
    for count in counts:
        out.append(" ".join(words[start : start + count]))
        start += count
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("definition", ["seed", "residual"])
def test_fast_executor_gives_the_tl_hooks_numbers(arch, definition, prompts, bridge):
    model = bridge(arch)
    fast = measure_gains(model, prompts, definition=definition, batch_size=3, drop_first=1)
    truth = measure_gains(
        model, prompts, definition=definition, batch_size=3, drop_first=1, executor="transformer_lens"
    )
    assert fast.provenance["executor"].startswith("hf")  # the fast path really ran (else this test proves nothing)
    assert truth.provenance["executor"] == "transformer_lens"
    np.testing.assert_array_equal(fast.n_tokens, truth.n_tokens)
    for component in COMPONENTS:
        for got, expected in ((fast.out_sums, truth.out_sums), (fast.in_sums, truth.in_sums)):
            # float32, the same HF weights; SDPA vs the bridge's attention reorders sums (~2e-7 measured).
            np.testing.assert_allclose(got[component], expected[component], rtol=1e-6, err_msg=f"{arch} {component}")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fast_executor_gives_the_tl_hooks_head_numbers(arch, prompts, bridge):
    model = bridge(arch)
    fast = head_gains(model, prompts, batch_size=3)
    truth = head_gains(model, prompts, batch_size=3, executor="transformer_lens")
    assert fast.provenance["executor"].startswith("hf")
    for name in ("head_norm_sums", "attn_out_sums", "in_sums"):
        # As above: float32 sums of norms, summation order only.
        np.testing.assert_allclose(getattr(fast, name), getattr(truth, name), rtol=1e-6, err_msg=name)
    # Projections are signed and can be near 0: relative to the layer output's norm sums they share.
    scale = truth.attn_out_sums[:, :, None]
    assert np.max(np.abs(fast.head_projection_sums - truth.head_projection_sums) / scale) < 1e-6


def test_head_gains_of_one_layer_equal_those_of_all_layers(bridge, prompts):
    """Early stop after the last layer asked for changes no number of the layers read."""
    model = bridge("llama-gqa")
    every = head_gains(model, prompts, batch_size=4)
    first = head_gains(model, prompts, layers=[0], batch_size=4)
    # Same executor, same tensors up to the stop: equal up to float32 kernel order (~1e-7).
    np.testing.assert_allclose(first.head_norm_sums[:, 0], every.head_norm_sums[:, 0], rtol=1e-6)
    np.testing.assert_allclose(first.in_sums[:, 0], every.in_sums[:, 0], rtol=1e-6)


class _Skewed(HFExecutor):
    """An executor that reads 0.1% too much at one layer: what a wrong module mapping would do, only subtler."""

    def attached(self, names, on_read):
        def skewed(index, activation):
            on_read(index, activation * 1.001 if names[index].startswith("blocks.1.") else activation)

        return super().attached(names, skewed)


def test_a_fast_executor_that_disagrees_is_not_used(bridge, prompts, monkeypatch):
    model = bridge("neox-serial")
    truth = measure_gains(model, prompts, batch_size=3, executor="transformer_lens")
    monkeypatch.setattr(engine, "HFExecutor", _Skewed)
    with pytest.warns(UserWarning, match="differed from the TransformerLens hooks"):
        result = measure_gains(model, prompts, batch_size=3)
    assert result.provenance["executor"] == "transformer_lens"
    assert "differed" in result.provenance["executor_fallback"]
    for component in COMPONENTS:
        # Both read through the TL hooks: the same tensors, bit for bit.
        np.testing.assert_array_equal(result.out_sums[component], truth.out_sums[component])
        np.testing.assert_array_equal(result.in_sums[component], truth.in_sums[component])


def test_the_skewed_executor_would_have_changed_the_numbers(bridge, prompts, monkeypatch):
    """Guards the test above: its skew is visible in the numbers, so agreement could not hide it."""
    model = bridge("neox-serial")
    truth = measure_gains(model, prompts, batch_size=3, executor="transformer_lens")
    monkeypatch.setattr(engine, "AGREEMENT_TOLERANCE", {torch.float32: 1.0})  # accept anything
    monkeypatch.setattr(engine, "HFExecutor", _Skewed)
    skewed = measure_gains(model, prompts, batch_size=3)
    assert skewed.provenance["executor"].startswith("hf")
    assert np.max(np.abs(skewed.out_sums["attn"][:, 1] / truth.out_sums["attn"][:, 1] - 1)) > 5e-4


class _Broken(HFExecutor):
    def forward(self, tokens, attention_mask):
        raise RuntimeError("Expected all tensors to be on the same device")


def test_a_fast_executor_that_crashes_is_not_used(bridge, prompts, monkeypatch):
    model = bridge("gpt2")
    truth = measure_gains(model, prompts, batch_size=3, executor="transformer_lens")
    monkeypatch.setattr(engine, "HFExecutor", _Broken)
    with pytest.warns(UserWarning, match="failed: RuntimeError"):
        result = measure_gains(model, prompts, batch_size=3)
    assert result.provenance["executor"] == "transformer_lens"
    np.testing.assert_array_equal(result.out_sums["attn"], truth.out_sums["attn"])


def test_callers_hooks_send_the_run_through_transformer_lens(bridge, prompts):
    """Hooks a user attached (an ablation, a cache) run only on the TL path, so it is the one used."""
    model = bridge("gpt2")
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda tensor, hook: seen.append(tensor.shape))]):
        result = measure_gains(model, prompts[:4], batch_size=2)
    assert seen and result.provenance["executor"] == "transformer_lens"
    assert "hooks are attached" in result.provenance["executor_fallback"]


def test_the_fast_executor_shares_the_bridges_weights_and_leaves_it_alone(bridge):
    model = bridge("llama-gqa")
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.attn.hook_z"]
    fast, why_not = HFExecutor.for_model(model, names, "sdpa")
    assert fast is not None, why_not
    bridge_tensors = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in fast.root.parameters()} <= bridge_tensors  # no second copy of any weight
    assert model.original_model.config._attn_implementation == "eager"  # its own config copy got sdpa
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    in_tree = {id(module) for module in fast.root.modules()}
    assert not any(isinstance(module, GeneralizedComponent) for module in fast.root.modules())  # no bridge wrapper
    assert all(id(module) in in_tree for module, _side in fast.points.values())


def test_fast_executor_stops_before_the_unembedding(bridge, prompts):
    model = bridge("neox-parallel")
    widths = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: widths.append(output.shape[-1]) if isinstance(output, torch.Tensor) else None
    )
    try:
        result = measure_gains(model, prompts[:4], batch_size=2)
    finally:
        handle.remove()
    assert result.provenance["executor"].startswith("hf")
    assert widths and model.cfg.d_vocab not in widths  # no module produced logits


def test_a_flattened_hf_read_is_read_as_batch_and_position():
    """OPT's decoder layer (transformers 5.x) runs its norm and MLP on reshape(-1, d): the fast
    executor gives those reads back their [batch, pos, d] shape, row for row; others pass as they are."""
    executor = HFExecutor(torch.nn.Identity(), {}, (2, 4))
    executor.tokens_shape = (3, 5)
    stream = torch.randn(3, 5, 8)  # [batch, pos, d]
    assert torch.equal(executor._unflattened(stream.reshape(-1, 8)), stream)
    assert executor._unflattened(stream) is stream
    other = torch.randn(4, 8)  # 2-D but not batch·pos rows: left alone
    assert executor._unflattened(other) is other


def test_unknown_executor(bridge):
    with pytest.raises(FunnelError, match="unknown executor"):
        measure_gains(bridge("gpt2"), ["a b c"], executor="fast")


def test_prompt_sums_mask_by_selection():
    values = torch.tensor([[[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]]])  # [layer 1, batch 2, pos 3]
    counted = torch.tensor([[True, True, False], [True, False, True]])
    sums = prompt_sums(values, counted)  # [batch, layer]
    assert sums.tolist() == [[3.0], [10.0]]  # non-finite values at uncounted positions do not leak
    counted[0, 2] = True
    assert torch.isnan(prompt_sums(values, counted)[0, 0])  # a counted one does


def test_prompt_sums_keeps_trailing_dimensions():
    values = torch.arange(24.0).reshape(2, 1, 3, 4)  # [layer, batch, pos, head]
    counted = torch.tensor([[True, False, True]])
    expected = values[:, 0, [0, 2]].sum(dim=1)[None]  # [batch, layer, head]
    torch.testing.assert_close(prompt_sums(values, counted), expected, rtol=0, atol=0)


def test_auto_batch_size_budget():
    gib = 2**30
    # Half of 8 GiB at 100 kB per token is 42,949 tokens: 335 prompts of 128 tokens.
    assert auto_batch_size(8 * gib, 100_000, longest=128, n_prompts=10_000) == 335
    assert auto_batch_size(16 * gib, 100_000, 128, 10_000) == 671  # twice the memory, twice the batch (floor)
    assert auto_batch_size(8 * gib, 100_000, 256, 10_000) == 167  # twice as long, half as many
    assert auto_batch_size(8 * gib, 100_000, 128, n_prompts=50) == 50  # never more than there are prompts
    assert auto_batch_size(10**6, 100_000, 128, 10_000) == 1  # a starved GPU still gets batches of one
    assert auto_batch_size(10**15, 1, 1, 10**9) == engine.MAX_AUTO_BATCH_SIZE


def test_batch_size_auto_on_the_cpu_is_the_cpu_default(bridge, prompts):
    model = bridge("gpt2")
    assert resolve_batch_size("auto", model, [[1, 2]] * 20, "cpu") == engine.CPU_BATCH_SIZE
    result = measure_gains(model, prompts, batch_size="auto")
    assert result.provenance["batch_size"] == engine.CPU_BATCH_SIZE
    assert result.provenance["batch_size_requested"] == "auto"


@pytest.mark.parametrize("bad", [0, -3, "many", 2.5, True])
def test_bad_batch_size(bad, bridge):
    with pytest.raises(FunnelError, match="batch size must be an integer, at least 1, or auto"):
        measure_gains(bridge("gpt2"), ["a b c"], batch_size=bad)


def test_no_warning_when_the_fast_executor_agrees(bridge, prompts):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        measure_gains(bridge("gpt2"), prompts, batch_size=5)


@pytest.mark.parametrize("arch", ["neox-parallel", "gpt2"])
def test_loading_leaves_no_weight_unset_and_restores_linear_init(arch, checkpoints):
    """The split-QKV linears are NaN until replaced by the checkpoint's slices: none may stay NaN."""
    from funnel_tl import load_model

    reset = torch.nn.Linear.reset_parameters
    model = load_model(str(checkpoints[arch]), device="cpu")
    assert torch.nn.Linear.reset_parameters is reset
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert all(bool(torch.isfinite(m.weight).all()) for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert not torch.isnan(torch.nn.Linear(3, 2).weight).any()  # Linears built afterwards get their usual init


def test_cli_batch_size_auto_is_recorded(checkpoints, tmp_path):
    import json

    from funnel_tl.cli.entry import main

    assert (
        main(
            [
                "run",
                "--model",
                str(checkpoints["gpt2"]),
                "--device",
                "cpu",
                "--batch-size",
                "auto",
                "--bootstrap",
                "0",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    provenance = json.loads((tmp_path / "results.json").read_text())["provenance"]
    assert provenance["batch_size"] == engine.CPU_BATCH_SIZE and provenance["batch_size_requested"] == "auto"
    assert provenance["executor"] in ("hf-sdpa", "hf", "transformer_lens")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("0", "argument --batch-size: give a whole number, 1 or more"),
        ("-2", "argument --batch-size: give a whole number, 1 or more"),
        ("lots", "1 or more, or auto, not 'lots'"),
    ],
)
def test_cli_bad_batch_size_exits_2(bad, message, checkpoints, tmp_path, capsys):
    from funnel_tl.cli.entry import main

    try:
        code = main(["run", "--model", str(checkpoints["gpt2"]), "--batch-size", bad, "--out", str(tmp_path)])
    except SystemExit as exit_info:  # argparse's own refusal of a non-number
        code = exit_info.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_position_sums_through_the_fast_executor_equal_the_tl_hooks(bridge, prompts):
    """by_position (funnel_tl.results.positions) through the fast executor: the TL hooks' sums by bucket, to 1e-6."""
    model = bridge("llama-gqa")
    fast = measure_gains(model, prompts, batch_size=3, by_position=True)
    truth = measure_gains(model, prompts, batch_size=3, by_position=True, executor="transformer_lens")
    assert fast.provenance["executor"].startswith("hf")
    np.testing.assert_array_equal(fast.positions.n_tokens, truth.positions.n_tokens)
    for component in COMPONENTS:
        # float32 sums of the same norms by bucket; SDPA vs the bridge's attention: order only.
        np.testing.assert_allclose(fast.positions.out_sums[component], truth.positions.out_sums[component], rtol=1e-6)
        np.testing.assert_allclose(fast.positions.in_sums[component], truth.positions.in_sums[component], rtol=1e-6)
    heads_fast = head_gains(model, prompts, batch_size=3, by_position=True)
    heads_truth = head_gains(model, prompts, batch_size=3, by_position=True, executor="transformer_lens")
    assert heads_fast.provenance["executor"].startswith("hf")
    np.testing.assert_allclose(heads_fast.positions.head_norm_sums, heads_truth.positions.head_norm_sums, rtol=1e-6)
    np.testing.assert_allclose(heads_fast.positions.in_sums, heads_truth.positions.in_sums, rtol=1e-6)
