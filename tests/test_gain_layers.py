"""``measure_gains(..., layers=...)``: some layers only, their numbers, the early stop, and everything downstream.

The checkpoints here have five layers (the session's shared ones two), so that a subset can be a
prefix (0-1), leave gaps (0-1,4) or miss layer 0 (2-3).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from funnel_tl import FunnelError, load_model, measure_gains
from funnel_tl.analysis.funnel import funnel_test
from funnel_tl.analysis.report import format_analysis
from funnel_tl.analysis.stats import robust_funnel_test
from funnel_tl.cli.entry import main
from funnel_tl.components import COMPONENTS
from funnel_tl.plots.panels import plot_funnel
from funnel_tl.prompts.sets import SEED_PROMPTS
from funnel_tl.results.gains import GainResult
from funnel_tl.testing.reference import reference_gains, seed_reference
from funnel_tl.testing.toy import build_checkpoint

N_LAYERS = 5
# float32 on both paths; the seed's HF hooks and the engine differ only in summation order (~1e-7).
RELATIVE = 1e-4
# One serial and one parallel block shape (the two ways the MLP's input differs), norms randomized.
SERIAL, PARALLEL = "llama-gqa", "neox-parallel"


@pytest.fixture(scope="module")
def deep(tmp_path_factory, tokenizer):
    """``deep[arch]``: a five-layer checkpoint folder (randomized norm affines and biases)."""
    root = tmp_path_factory.mktemp("deep")
    return {
        arch: build_checkpoint(root / arch, arch, tokenizer=tokenizer, n_layers=N_LAYERS) for arch in (SERIAL, PARALLEL)
    }


@pytest.fixture(scope="module")
def deep_model(deep):
    loaded = {}

    def get(arch):
        if arch not in loaded:
            loaded[arch] = load_model(str(deep[arch]), device="cpu", dtype="float32")
        return loaded[arch]

    return get


@pytest.fixture(scope="module")
def full(deep_model):
    """Every layer of the serial model, batches of 3 (three batches: the fast executor is checked too)."""
    return measure_gains(deep_model(SERIAL), "seed", batch_size=3)


@pytest.mark.parametrize("layers, expected", [([0, 1, -1], (0, 1, 4)), ([3, 2], (2, 3)), (4, (4,))])
def test_subset_gains_equal_the_full_result_at_those_layers(deep_model, full, layers, expected):
    """The same batches read the same tensors up to the stop: equal bit for bit, not just close."""
    subset = measure_gains(deep_model(SERIAL), "seed", batch_size=3, layers=layers)
    assert subset.layers == expected and subset.n_layers == N_LAYERS
    assert subset.provenance["executor"] == full.provenance["executor"]
    np.testing.assert_array_equal(subset.n_tokens, full.n_tokens)
    for component in COMPONENTS:
        np.testing.assert_array_equal(subset.out_sums[component], full.out_sums[component][:, list(expected)])
        np.testing.assert_array_equal(subset.in_sums[component], full.in_sums[component][:, list(expected)])


@pytest.mark.parametrize("arch", [SERIAL, PARALLEL])
@pytest.mark.parametrize("definition", ["seed", "residual"])
def test_subset_gains_equal_the_seed_method(arch, definition, deep, deep_model, tokenizer):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(deep[arch], attn_implementation="eager").eval()
    reference = reference_gains(seed_reference(hf, tokenizer, list(SEED_PROMPTS)), definition)
    result = measure_gains(deep_model(arch), "seed", definition=definition, batch_size=3, layers=[1, 3, 4])
    for component in COMPONENTS:
        np.testing.assert_allclose(
            result.gains(component),
            reference[component][[1, 3, 4]],
            rtol=RELATIVE,
            err_msg=f"{arch} {definition} {component}",
        )


@pytest.mark.parametrize("executor", ["auto", "transformer_lens"])
def test_the_forward_stops_after_the_last_layer_asked_for(deep_model, monkeypatch, executor):
    """Counted at the HF decoder layers, which both executors run (the bridge wraps them, the fast
    executor runs copies of them): the class's forward sees every call."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    ran = []
    forward = LlamaDecoderLayer.forward

    def counting(self, *args, **kwargs):
        ran.append(self.self_attn.layer_idx)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaDecoderLayer, "forward", counting)
    model = deep_model(SERIAL)
    every = measure_gains(model, "seed", batch_size=3, executor=executor)
    assert sorted(set(ran)) == list(range(N_LAYERS))  # the count sees every layer when all are asked for
    expected_executor = every.provenance["executor"]
    ran.clear()
    early = measure_gains(model, "seed", batch_size=3, layers=[0, 1], executor=executor)
    assert early.provenance["executor"] == expected_executor
    assert sorted(set(ran)) == [0, 1]
    # Every pass ran exactly layers 0 and 1: as many calls of each, so about 2 of 5 layers' cost.
    assert ran.count(0) == ran.count(1) == len(ran) // 2


def test_results_json_round_trip_and_layer_numbers(deep_model, tmp_path):
    result = measure_gains(deep_model(SERIAL), "seed", batch_size=3, layers=[0, 1, 4]).with_intervals(
        n_resamples=200, seed=0
    )
    data = json.loads(result.save(tmp_path / "results.json").read_text())
    assert data["n_layers"] == N_LAYERS and data["layers"] == [0, 1, 4]
    assert len(data["attention"]["gains"]) == 3 and len(data["per_prompt"]["attn"]["out_sum"][0]) == 3
    # L* are true layer numbers, found independently of the code under test from the gains written.
    assert data["attention"]["L_star_min"] == [0, 1, 4][int(np.argmin(data["attention"]["gains"]))]
    assert data["mlp"]["L_star_max"] == [0, 1, 4][int(np.argmax(data["mlp"]["gains"]))]
    assert data["mlp"]["last_layer_gain"] == data["mlp"]["gains"][-1]  # layer 4 is the model's last
    # The cumulative gain covers the prefix 0-1: the product of the first two combined gains.
    combined = data["combined"]["gains"]
    np.testing.assert_allclose(
        data["combined"]["cumulative_gains"], [combined[0], combined[0] * combined[1]], rtol=1e-12
    )  # float64 products of the same numbers
    assert len(data["intervals"]["cumulative"]) == 2 and len(data["intervals"]["attention"]) == 3
    assert data["funnel_test"] is None and data["robust_funnel_test"] is None and data["comparison_1_4b"] is None
    assert data["not_testable"].startswith("not testable: layers 0-1,4 of 5 measured")

    back = GainResult.load(tmp_path / "results.json")
    assert back.layers == (0, 1, 4) and back.cumulative_layers == (0, 1)
    for component in COMPONENTS:
        np.testing.assert_array_equal(back.out_sums[component], result.out_sums[component])
    np.testing.assert_array_equal(back.intervals.cumulative, result.intervals.cumulative)
    assert back.to_dict() == data


def test_views_show_true_layer_numbers(deep_model):
    result = measure_gains(deep_model(SERIAL), "seed", batch_size=3, layers=[2, 4])
    table = result.to_pandas()
    assert sorted(set(table["layer"])) == [2, 4]
    assert "cumulative" not in set(table["component"])  # layer 0 not measured: no running product from it
    np.testing.assert_allclose(table.query("component == 'mlp'")["gain"], result.mlp_gains, rtol=0)
    assert "layers='2,4'" in repr(result) and "not testable" in repr(result)
    assert "<td>2</td>" in result._repr_html_() and "<td>0</td>" not in result._repr_html_()
    printed = format_analysis(result)
    top = int([2, 4][np.argmax(result.mlp_gains)])
    assert f"Max gain: {result.mlp_gains.max():.4f} (Layer {top})" in printed
    assert "not testable: layers 2,4 of 5 measured" in printed and "CROSS-MODEL" not in printed


def test_verdicts_refuse_a_subset(deep_model):
    result = measure_gains(deep_model(SERIAL), "seed", batch_size=3, layers=[0, 1, 2, 3], intervals=True)
    for verdict in (funnel_test, robust_funnel_test):
        with pytest.raises(FunnelError, match=r"not testable: layers 0-3 of 5 measured.*layers=None") as caught:
            verdict(result)
        assert "\n" not in str(caught.value)
    # A subset that happens to hold every layer is a full result: the verdict is given.
    everything = measure_gains(deep_model(SERIAL), "seed", batch_size=3, layers=[4, 3, 2, 1, 0])
    assert everything.to_dict().keys() == measure_gains(deep_model(SERIAL), "seed", batch_size=3).to_dict().keys()
    funnel_test(everything)


def test_figure_draws_true_layers_and_the_prefix(deep_model):
    gaps = measure_gains(deep_model(SERIAL), "seed", batch_size=3, layers=[0, 1, 4])
    fig = plot_funnel(gaps)
    attention = next(trace for trace in fig.data if trace.name == "attention gain")
    drawn = ~np.isnan(np.asarray(attention.y, dtype=float))  # the gap's NaN point breaks the line
    assert list(np.asarray(attention.x)[drawn]) == [0, 1, 4]
    assert list(attention.customdata[drawn, 0]) == [0, 1, 4]  # the hover says the true layer
    # The stream's growth needs layer 0's resid_pre only: every measured layer, broken at the gap.
    growth = next(trace for trace in fig.data if trace.name == "stream growth")
    drawn = ~np.isnan(np.asarray(growth.y, dtype=float))
    assert list(np.asarray(growth.x)[drawn]) == [0, 1, 4]
    np.testing.assert_allclose(np.asarray(growth.y)[drawn], gaps.block_cumulative_gains)
    # The seed's running product covers the measured prefix 0-1 only.
    from funnel_tl.plots.panels import plot_seed_product

    product = next(
        trace for trace in plot_seed_product(gaps).data if trace.name == "the seed's cumulative attn × MLP gain"
    )
    assert list(product.x) == [0, 1]
    assert "Funnel test not testable" in fig.layout.title.text
    no_zero = plot_funnel(measure_gains(deep_model(SERIAL), "seed", batch_size=3, layers=[2, 3]))
    assert not any(trace.name == "stream growth" for trace in no_zero.data)
    assert any("layer 0 was not measured" in annotation.text for annotation in no_zero.layout.annotations)


def test_bad_layers_and_by_position(deep_model):
    model = deep_model(SERIAL)
    with pytest.raises(FunnelError, match="out of range: the model has 5 layers"):
        measure_gains(model, "seed", layers=[5])
    with pytest.raises(FunnelError, match="by_position needs every layer"):
        measure_gains(model, "seed", layers=[0], by_position=True)


def test_cli_run_and_report_a_subset(deep, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--model",
            str(deep[SERIAL]),
            "--layers",
            "0-1,-1",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--batch-size",
            "3",
            "--bootstrap",
            "100",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "layers 0-1,4 of 5 measured" in printed and "FUNNEL MODEL CONFIRMED" not in printed
    data = json.loads((out / "results.json").read_text())
    assert data["layers"] == [0, 1, 4] and data["funnel_test"] is None
    assert (out / "funnel.html").is_file()
    (out / "funnel.html").unlink()
    assert main(["report", str(out)]) == 0
    assert "layers 0-1,4 of 5 measured" in capsys.readouterr().out and (out / "funnel.html").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layers", "3-1"], "runs backwards"),
        (["--layers", "x"], "cannot read --layers"),
        (["--layers", "7"], "layer 7 out of range: the model has 5 layers"),
        (["--layers", "0", "--by-position"], "--by-position needs every layer"),
    ],
)
def test_cli_bad_layers_fail_before_the_model_loads(deep, tmp_path, capsys, monkeypatch, argv, message):
    import funnel_tl.models.loading

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --layers was checked")

    monkeypatch.setattr(funnel_tl.models.loading, "load_model", no_load)
    code = main(["run", "--model", str(deep[SERIAL]), "--out", str(tmp_path / "out"), *argv])
    error = capsys.readouterr().err.strip()
    assert code == 2 and message in error and len(error.splitlines()) == 1


def test_layers_that_name_every_layer_allow_by_position(deep, tmp_path):
    """`--layers 0-4` of a 5-layer model is every layer: a full result, so --by-position is allowed."""
    assert (
        main(
            [
                "run",
                "--model",
                str(deep[SERIAL]),
                "--layers",
                "0-4",
                "--by-position",
                "--bootstrap",
                "0",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "layers" not in data and "by_position" in data


def test_lines_break_where_layers_are_missing(deep_model):
    """A line drawn on from layer 1 to layer 4 would read as gains layers 2-3 never had."""
    fig = plot_funnel(measure_gains(deep_model(SERIAL), "seed", batch_size=3, layers=[0, 1, 4]))
    mlp = next(trace for trace in fig.data if trace.name == "MLP gain")
    assert np.isnan(mlp.y[2]) and list(mlp.x[[0, 1, 3]]) == [0, 1, 4] and mlp.fill is None
    every = plot_funnel(measure_gains(deep_model(SERIAL), "seed", batch_size=3))
    assert not np.isnan(np.asarray(next(t for t in every.data if t.name == "MLP gain").y, dtype=float)).any()


def test_a_non_finite_layer_is_named_by_its_true_index(deep):
    """The norms of a subset are stacked by position; the error must still name the model's layer."""
    model = load_model(str(deep[SERIAL]), device="cpu", dtype="float32")  # its own copy: hooks are added
    model.add_hook("blocks.3.hook_mlp_out", lambda tensor, hook: tensor * float("nan"))
    try:
        with pytest.raises(FunnelError, match=r"layer 3, hook_mlp_out"):
            measure_gains(model, "seed", layers=[1, 3])
    finally:
        model.reset_hooks()
