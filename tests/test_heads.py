"""Per-head drill-down: numbers against an independent HF-module reference, invariants, file, CLI.

The reference hooks the input of each layer's attention output projection in the plain
HuggingFace model (GPT-NeoX ``attention.dense``, GPT-2 ``attn.c_proj``, Llama
``self_attn.o_proj``), splits it per head, multiplies each head's slice by that head's slice of the
projection weight, and averages the norms over each prompt's tokens, one prompt at a time like the
seed notebook. It shares no code with funnel_tl.measure.heads (no TransformerLens, no hook_z, no W_O).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import einops
import numpy as np
import pytest
import torch

from funnel_tl import FunnelError, GainResult, HeadResult, head_gains, measure_gains
from funnel_tl.cli.entry import main
from funnel_tl.measure.heads import check_head_identity
from funnel_tl.measure.layers import parse_layers
from funnel_tl.prompts.sets import SEED_PROMPTS
from funnel_tl.testing.reference import hf_sublayers, seed_reference

# The output projection of the attention module, per HF model type.
OUTPUT_PROJECTION = {"gpt_neox": "dense", "gpt2": "c_proj", "llama": "o_proj"}
REFERENCE_ARCHS = ("neox-parallel", "gpt2", "llama-gqa")


@torch.inference_mode()
def hf_head_reference(hf_model, tokenizer, prompts, drop_first=0) -> dict[str, np.ndarray]:
    """Per-prompt mean over tokens of ‖h_i‖ and of ⟨h_i, a⟩/‖a‖, each ``[prompt, layer, head]``."""
    n_heads = hf_model.config.num_attention_heads
    projections = [
        getattr(attention, OUTPUT_PROJECTION[hf_model.config.model_type]) for _, attention, _ in hf_sublayers(hf_model)
    ]
    captured = {}

    def capture(index):
        def hook(module, args, output):
            captured[index] = (args[0].float(), output.float())

        return hook

    handles = [module.register_forward_hook(capture(index)) for index, module in enumerate(projections)]
    norms = np.zeros((len(prompts), len(projections), n_heads))
    along = np.zeros_like(norms)
    try:
        for p, prompt in enumerate(prompts):
            captured.clear()
            hf_model(**tokenizer(prompt, return_tensors="pt"))
            for layer, module in enumerate(projections):
                z, a = captured[layer]  # [1, pos, n_heads * d_head], [1, pos, d_model]
                weight = module.weight.float()
                # nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
                per_head_weight = weight if type(module).__name__ == "Conv1D" else weight.T
                per_head_weight = einops.rearrange(
                    per_head_weight, "(head d_head) d_model -> head d_head d_model", head=n_heads
                )
                z = einops.rearrange(z, "batch pos (head d_head) -> batch pos head d_head", head=n_heads)
                h = torch.stack(
                    [z[:, :, i] @ per_head_weight[i] for i in range(n_heads)], dim=2
                )  # [1, pos, head, d_model]
                norms[p, layer] = torch.linalg.vector_norm(h, dim=-1)[0, drop_first:].mean(dim=0).numpy()
                dots = (h * a[:, :, None, :]).sum(-1) / torch.linalg.vector_norm(a, dim=-1)[..., None]
                along[p, layer] = dots[0, drop_first:].mean(dim=0).numpy()
    finally:
        for handle in handles:
            handle.remove()
    return {"norm": norms, "projection": along}


@pytest.fixture(scope="module")
def reference(hf_model, tokenizer):
    """``reference(arch)``: HF per-head means and the seed's per-layer means, cached."""
    cached = {}

    def get(arch):
        if arch not in cached:
            model = hf_model(arch)
            cached[arch] = {
                **hf_head_reference(model, tokenizer, SEED_PROMPTS),
                "seed": seed_reference(model, tokenizer, SEED_PROMPTS),
            }
        return cached[arch]

    return get


@pytest.fixture(scope="module")
def measured(bridge):
    """``measured(arch)``: head_gains on the seed prompts, batch size 3 (so batches pad), cached."""
    cached = {}

    def get(arch):
        if arch not in cached:
            cached[arch] = head_gains(bridge(arch), "seed", batch_size=3, progress=False)
        return cached[arch]

    return get


# ---- numbers against the independent reference ------------------------------------------------
@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_head_norms_match_hf_modules(arch, measured, reference):
    result, expected = measured(arch), reference(arch)
    # float32 forward passes through the same weights, batched vs one prompt: rounding only (~1e-6).
    np.testing.assert_allclose(result.per_prompt_head_norms, expected["norm"], rtol=1e-4)
    np.testing.assert_allclose(result.head_norms, expected["norm"].mean(axis=0), rtol=1e-4)


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_head_gains_share_the_seed_attention_denominator(arch, measured, reference):
    result, expected = measured(arch), reference(arch)
    attn_in = expected["seed"]["attn_in"][:, :, None]  # [prompt, layer, 1]: what the attention module receives
    # Same float32 rounding as above.
    np.testing.assert_allclose(result.head_gains, (expected["norm"] / (attn_in + 1e-10)).mean(axis=0), rtol=1e-4)


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_head_projections_match_hf_modules(arch, measured, reference):
    result, expected = measured(arch), reference(arch)
    # Signed means can be near zero, so an absolute floor at 1e-4 of the typical head norm.
    np.testing.assert_allclose(
        result.head_projections, expected["projection"].mean(axis=0), rtol=1e-4, atol=1e-4 * expected["norm"].mean()
    )


def test_layer_attention_gain_equals_measure_gains(bridge, measured):
    result = measured("gpt2")
    layers = measure_gains(bridge("gpt2"), "seed", batch_size=8, progress=False)
    # Same tokens and the same ‖a‖/‖u‖ sums in another batching: float32 rounding only.
    np.testing.assert_allclose(result.attn_gains, layers.attn_gains, rtol=1e-5)


# ---- invariants ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
@torch.inference_mode()
def test_heads_plus_bias_sum_to_attn_out(arch, bridge, tokenizer):
    """Σ_i z_i W_O^i + b_O = hook_attn_out in float32 (Llama has no b_O)."""
    model = bridge(arch)
    tokens = torch.tensor([tokenizer(SEED_PROMPTS[0])["input_ids"]])
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(("attn.hook_z", "hook_attn_out")))
    for layer in range(model.cfg.n_layers):
        attention = model.blocks[layer].attn
        z = cache[f"blocks.{layer}.attn.hook_z"]  # [batch, pos, head, d_head]
        summed = sum(z[:, :, i] @ attention.W_O[i] for i in range(model.cfg.n_heads))
        if attention.b_O is not None:
            summed = summed + attention.b_O
        expected = cache[f"blocks.{layer}.hook_attn_out"]
        relative = torch.linalg.vector_norm(summed - expected, dim=-1) / torch.linalg.vector_norm(expected, dim=-1)
        # float32 sums of d_model products in another order: ~1e-7; 1e-4 is the contract.
        assert float(relative.max()) < 1e-4
    assert (model.blocks[0].attn.b_O is None) == (arch == "llama-gqa")


@torch.inference_mode()
def test_identity_check_catches_a_wrong_W_O(bridge, tokenizer):
    model = bridge("neox-serial")
    tokens = torch.tensor([tokenizer(SEED_PROMPTS[1])["input_ids"]])
    _, cache = model.run_with_cache(
        tokens,
        names_filter=lambda name: name.startswith("blocks.1.") and name.endswith(("attn.hook_z", "hook_attn_out")),
    )
    z, a = cache["blocks.1.attn.hook_z"], cache["blocks.1.hook_attn_out"]
    attention, mask = model.blocks[1].attn, torch.ones(tokens.shape)
    check_head_identity(model, 1, z, attention.W_O, attention.b_O, a, mask, torch.float32)  # passes
    with pytest.raises(FunnelError, match="layer 1: the heads' outputs"):
        check_head_identity(model, 1, z, attention.W_O.flip(0), attention.b_O, a, mask, torch.float32)
    with pytest.raises(FunnelError, match="layer 1"):
        check_head_identity(model, 1, z, 1.01 * attention.W_O, attention.b_O, a, mask, torch.float32)


def test_shares(tmp_path, tokenizer):
    from funnel_tl import load_model
    from funnel_tl.testing.toy import build_checkpoint

    # Biases left at their zero init (the shared toy checkpoints randomize them), so b_O is zero.
    folder = build_checkpoint(tmp_path / "unbiased", "neox-parallel", tokenizer=tokenizer, randomize_biases=False)
    result = head_gains(load_model(str(folder), device="cpu", dtype="float32"), "seed", batch_size=3, progress=False)
    # Sums of nonnegative float64 ratios: rounding only.
    np.testing.assert_allclose(result.norm_shares.sum(axis=1), 1.0, rtol=1e-12)
    # The output bias is zero, so heads carry all of ‖a‖ (float32 rounding).
    np.testing.assert_allclose(result.projection_shares.sum(axis=1), 1.0, rtol=1e-5)
    # Triangle inequality: the heads' norms together are at least the layer's output norm.
    assert np.all(result.head_gains.sum(axis=1) >= result.attn_gains * (1 - 1e-6))


def test_output_bias_enters_identity_and_projection(tmp_path, tokenizer):
    """A nonzero b_O: the in-code identity must include it, and its share of ‖a‖ is what heads lack."""
    from transformers import AutoModelForCausalLM

    from funnel_tl import load_model
    from funnel_tl.testing.toy import build_checkpoint

    folder = build_checkpoint(tmp_path / "biased", "neox-serial", tokenizer=tokenizer, seed=3)
    hf = AutoModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in hf.gpt_neox.layers:
            layer.attention.dense.bias.copy_(0.05 * torch.randn(layer.attention.dense.bias.shape, generator=generator))
    hf.save_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    prompts = list(SEED_PROMPTS[:3])
    result = head_gains(load_model(str(folder), device="cpu", dtype="float32"), prompts, batch_size=2, progress=False)
    expected = hf_head_reference(hf, tokenizer, prompts)
    # float32 rounding, as for the unbiased checkpoints.
    np.testing.assert_allclose(result.per_prompt_head_norms, expected["norm"], rtol=1e-4)
    np.testing.assert_allclose(result.head_projections, expected["projection"].mean(axis=0), rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(result.bias_projection_shares) > 1e-3)  # the bias really carries part of ‖a‖


def test_batch_size_changes_no_number(bridge, measured):
    one_at_a_time = head_gains(bridge("llama-gqa"), "seed", batch_size=1, progress=False)
    # Padding is masked out; the only difference is float32 rounding in batched matmuls.
    np.testing.assert_allclose(one_at_a_time.head_norm_sums, measured("llama-gqa").head_norm_sums, rtol=1e-5)


def test_grouped_query_attention(measured, bridge):
    """Llama GQA: 4 query heads share 2 key/value heads; every query head is measured on its own."""
    result = measured("llama-gqa")
    assert bridge("llama-gqa").cfg.n_key_value_heads == 2
    assert result.n_heads == 4 and result.n_key_value_heads == 2
    assert result.head_gains.shape == (2, 4)
    hover = result.heatmap().data[0].text
    assert "key/value head 1" in hover[0][3] and "key/value head 0" in hover[0][1]


def test_grouped_query_heads_are_grouped_by_their_key_value_head(measured, tmp_path):
    """HF's repeat_kv gives query head h the key/value head h // (n_heads / n_kv): 0, 0, 1, 1 here."""
    result = measured("llama-gqa")
    assert result.group_size == 2 and [result.key_value_head(h) for h in range(4)] == [0, 0, 1, 1]
    assert [row.key_value_head for row in result.top(8)] == [int(row.label[-1]) // 2 for row in result.top(8)]
    figure = result.heatmap()
    assert [shape.x0 for shape in figure.layout.shapes] == [1.5]  # one rule, between heads 1 and 2
    assert [note.text for note in figure.layout.annotations] == ["kv 0: heads 0–1", "kv 1: heads 2–3"]
    table = result.format_top(4).splitlines()
    assert "4 query heads read 2 key/value heads, 2 each" in table[0] and table[1].split()[2] == "kv"
    for line, row in zip(table[2:-1], result.top(4), strict=True):
        assert line.split()[2] == str(row.key_value_head)
    page = result.save_html(tmp_path / "heads.html", k=4).read_text()
    assert "<th>kv</th>" in page and "key/value head <i>h</i> // 2" in page
    # Without GQA: no column, no rules.
    plain = measured("gpt2")
    assert plain.group_size is None and "kv" not in plain.format_top(3).splitlines()[1]
    assert not plain.heatmap().layout.shapes


def test_layers_subset_and_negative_index(bridge, measured):
    full = measured("gpt2")
    last = head_gains(bridge("gpt2"), "seed", layers=[-1], batch_size=3, progress=False)
    assert last.layers == (1,)
    # The same layer in the same batches: identical up to float32 reduction order.
    np.testing.assert_allclose(last.head_norm_sums[:, 0], full.head_norm_sums[:, 1], rtol=1e-6)
    assert last.stat(1, 2).label == "L1H2"
    with pytest.raises(FunnelError, match="layer 0 was not measured"):
        last.stat(0, 0)


@pytest.mark.parametrize("layers", [[2], [-3], []])
def test_bad_layers(bridge, layers):
    with pytest.raises(FunnelError, match="out of range|no layers"):
        head_gains(bridge("gpt2"), "seed", layers=layers, progress=False)


def test_parse_layers():
    assert parse_layers("0,2-4,-1") == [0, 2, 3, 4, -1]
    assert parse_layers(None) is None
    assert parse_layers("-2--1") == [-2, -1] and parse_layers("0,-3--2") == [0, -3, -2]
    for bad in ("a", "3-1", "1-", "2:4", "-1--2", "2--1", "-2-3"):
        with pytest.raises(FunnelError):
            parse_layers(bad)


def test_layers_counted_from_the_end_on_the_command_line(tmp_path, capsys):
    """`--layers -2--1` once stopped in argparse ("expected one argument"): a value starting with '-'."""
    for argv in (["--layers", "-2--1"], ["--layers=-2--1"]):
        out = tmp_path / argv[-1].strip("-=")
        assert main(["heads", "--model", "nano-2l", "--device", "cpu", "--top", "2", *argv, "--out", str(out)]) == 0
        assert HeadResult.load(out / "heads.json").layers == (0, 1)  # nano-2l: the last two are both
    capsys.readouterr()
    assert (
        main(
            [
                "run",
                "--model",
                "nano-2l",
                "--device",
                "cpu",
                "--bootstrap",
                "0",
                "--layers",
                "-1--1",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "run" / "results.json").read_text())["layers"] == [1]


# ---- interactive API and heads.json -------------------------------------------------------------
def test_top_ranks_heads_by_gain(measured):
    result = measured("neox-parallel")
    top = result.top(3)
    gains = result.head_gains
    flat = sorted(
        (
            (gains[row, head], f"L{layer}H{head}")
            for row, layer in enumerate(result.layers)
            for head in range(result.n_heads)
        ),
        reverse=True,
    )
    assert [row.label for row in top] == [name for _, name in flat[:3]]
    assert top[0].gain == pytest.approx(flat[0][0])
    assert [row.label for row in result.top(2, largest=False)] == [name for _, name in flat[::-1][:2]]
    assert "L" in result.format_top(3) and len(result.top(100)) == result.head_gains.size
    with pytest.raises(FunnelError, match="unknown ranking"):
        result.top(3, by="size")


def test_heatmap_is_a_figure(measured):
    import plotly.graph_objects as go

    result = measured("gpt2")
    figure = result.heatmap()
    assert isinstance(figure, go.Figure)
    # Gains are coloured on a log scale diverging at gain 1 (log10 = 0), symmetric either side.
    np.testing.assert_allclose(np.asarray(figure.data[0].z), np.log10(result.head_gains))
    heat = figure.data[0]
    assert heat.zmid == 0 and heat.zmin == -heat.zmax and heat.colorscale[0][1] != heat.colorscale[-1][1]
    assert figure.data[0].text[1][2].startswith("<b>L1H2</b>")
    assert result.heatmap("projection_share").data[0].zmid == 0
    assert "positions dropped" not in figure.layout.title.text  # said only when some were dropped
    # Heads add up (and cancel): a head below 1 is no contracting layer, so the legend must not say so.
    assert "blue contracts" not in figure.layout.title.text and "heads add up" in figure.layout.title.text


def test_heads_page_shares_plotlyjs_unless_self_contained(tmp_path, measured):
    result = measured("gpt2")
    page = result.save_html(tmp_path / "heads.html", k=5).read_text()
    assert '<script src="plotly.min.js"' in page and len(page) < 200_000
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    assert page.count("gpt2") >= 1 and page.count("per-head gains</h1>") == 1
    assert "blue contracts" not in page and "does not mean its layer contracts" in page
    alone = result.save_html(tmp_path / "alone" / "heads.html", self_contained=True).read_text()
    assert not re.search(r"<script[^>]+src=", alone) and len(alone) > 1_000_000
    assert not (tmp_path / "alone" / "plotly.min.js").exists()


def test_report_redraws_heads_html_from_heads_json(tmp_path, measured, capsys):
    """``funnel-tl report DIR`` on a ``funnel-tl heads`` folder redraws heads.html, no model loaded:
    the same page ``save_html`` writes (default table length), not an error asking for results.json."""
    result = measured("gpt2")
    result.save(tmp_path / "heads.json")
    assert main(["report", str(tmp_path)]) == 0
    assert f"Saved: {tmp_path / 'heads.html'}" in capsys.readouterr().out
    expected = result.save_html(tmp_path / "expected" / "heads.html").read_text()
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # plotly's random div ids
    assert re.sub(uuid, "ID", (tmp_path / "heads.html").read_text()) == re.sub(uuid, "ID", expected)
    assert main(["report", str(tmp_path / "expected")]) == 2  # a page and no heads.json or results.json
    assert "no results.json, heads.json or effects.json" in capsys.readouterr().err


def test_report_prints_the_heads_table_heads_printed(tmp_path, capsys):
    """``report`` on a heads folder prints the top-heads table ``heads`` printed, as long as its --top."""
    assert main(["heads", "--model", "nano-2l", "--device", "cpu", "--top", "3", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    start = printed.index("Top 3 of 4 heads")  # nano-2l: 2 layers of 2 heads
    table = printed[start : printed.index("\n\n", start)]
    assert len(table.splitlines()) == 2 + 3 + 1  # title, header, three heads, what the columns mean
    assert main(["report", str(tmp_path)]) == 0
    assert table in capsys.readouterr().out


def test_head_norms_print_with_one_precision_down_the_column(tmp_path, measured):
    """`%.4g` per value printed `8.49` beside `9.302`; the terminal table and heads.html now agree on one."""
    result = measured("gpt2")
    rows = result.format_top(8).splitlines()[2:-1]  # title, header; the columns' legend last
    norms = [line.split()[3] for line in rows]
    assert len({len(norm.split(".")[-1]) for norm in norms}) == 1, norms
    page = result.save_html(tmp_path / "heads.html", k=8).read_text()
    cells = re.findall(r"<tr><td>\d+</td><td>L\d+H\d+</td><td>[^<]*</td><td>([^<]*)</td>", page)
    assert cells == norms


def test_head_result_to_pandas_is_tidy(measured):
    pytest.importorskip("pandas")
    result = measured("llama-gqa")
    table = result.to_pandas()
    assert len(table) == len(result.layers) * result.n_heads
    assert {"model", "layer", "head", "component", "gain", "ci_low", "ci_high", "n_prompts"} <= set(table.columns)
    row = table[(table["layer"] == 1) & (table["head"] == 3)].iloc[0]
    assert row.gain == result.stat(1, 3).gain and row.n_prompts == result.n_prompts
    assert table["ci_low"].isna().all()  # not asked for: NaN, not a made-up number
    with_intervals = result.to_pandas(intervals=True)
    assert (with_intervals["ci_low"] <= with_intervals["gain"]).all() and (
        with_intervals["gain"] <= with_intervals["ci_high"]
    ).all()


def test_head_gain_intervals_match_a_hand_written_resampling_loop(measured):
    result = measured("gpt2")
    bounds = result.gain_intervals(n_resamples=300, seed=5)  # [layer, head, 2]
    # The same multinomial draws, then an explicit loop over resamples and prompts.
    rng = np.random.default_rng(5)
    counts = rng.multinomial(result.n_prompts, np.full(result.n_prompts, 1 / result.n_prompts), size=300)
    per_prompt = result.per_prompt_head_gains  # [prompt, layer, head]
    means = np.array([sum(c * per_prompt[p] for p, c in enumerate(draw)) / result.n_prompts for draw in counts])
    # 1e-12: the same sums in another order.
    np.testing.assert_allclose(bounds[..., 0], np.percentile(means, 2.5, axis=0), rtol=1e-12)
    np.testing.assert_allclose(bounds[..., 1], np.percentile(means, 97.5, axis=0), rtol=1e-12)


def test_save_load_round_trip(tmp_path, measured):
    result = measured("llama-gqa")
    path = result.save(tmp_path / "heads.json")
    data = json.loads(path.read_text())
    assert np.asarray(data["head_norm"]).shape == (2, 4) and np.asarray(data["head_gain"]).shape == (2, 4)
    assert data["schema_version"] == 1 and data["provenance"]["dtype"] == "float32"
    assert np.asarray(data["per_prompt"]["head_norm_sum"]).shape == (8, 2, 4)
    loaded = HeadResult.load(path)
    np.testing.assert_array_equal(loaded.head_gains, result.head_gains)
    np.testing.assert_array_equal(loaded.projection_shares, result.projection_shares)
    assert loaded.n_key_value_heads == 2 and loaded.layers == result.layers
    assert repr(loaded).startswith("HeadResult(model=") and "layers=[0, 1]" in repr(loaded)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_load_rejects_foreign_files(tmp_path, bridge):
    results = measure_gains(bridge("gpt2"), ["a short prompt"], progress=False).save(tmp_path / "results.json")
    with pytest.raises(FunnelError, match="GainResult.load"):
        HeadResult.load(results)
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(FunnelError, match="not a funnel_tl heads file"):
        HeadResult.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text('{"kind": "funnel_tl.heads", "schema_version": 1}')
    with pytest.raises(FunnelError, match="broken.json: model is missing"):
        HeadResult.load(tmp_path / "broken.json")
    with pytest.raises(FunnelError, match="not found"):
        HeadResult.load(tmp_path / "missing.json")
    assert isinstance(GainResult.load(results), GainResult)


# ---- command line -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_cli_heads_end_to_end(arch, checkpoints, reference, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            "heads",
            "--model",
            str(checkpoints[arch]),
            "--prompts",
            "seed",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--out",
            str(out),
            "--top",
            "5",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "Top 5 of " in printed and "heads.json" in printed
    data = json.loads((out / "heads.json").read_text())
    # float32 rounding, as in test_head_norms_match_hf_modules.
    np.testing.assert_allclose(data["head_norm"], reference(arch)["norm"].mean(axis=0), rtol=1e-4)
    page = (out / "heads.html").read_text()
    assert "plotly" in page and "<table>" in page and data["top_heads"][0]["label"] in page


def test_report_redraws_heads_html_with_the_top_its_run_used(checkpoints, tmp_path, capsys):
    def table_rows(page: Path) -> int:
        return len(re.findall(r"<tr><td>\d+</td>", page.read_text()))  # the ranked rows of the top-heads table

    out = tmp_path / "out"
    assert (
        main(
            [
                "heads",
                "--model",
                str(checkpoints["gpt2"]),
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--out",
                str(out),
                "--top",
                "3",
            ]
        )
        == 0
    )
    gains = json.loads((out / "heads.json").read_text())["head_gain"]  # [layer][head]
    n_heads = len(gains) * len(gains[0])
    assert table_rows(out / "heads.html") == 3 < n_heads  # fewer than all heads: the cut shows
    (out / "heads.html").unlink()
    assert main(["report", str(out)]) == 0
    assert table_rows(out / "heads.html") == 3  # as the run drew it, not the default 20
    assert main(["report", str(out), "--top", "2"]) == 0
    assert table_rows(out / "heads.html") == 2
    capsys.readouterr()
    assert main(["report", str(out), "--top", "0"]) == 2
    assert "argument --top: give a whole number, 1 or more" in capsys.readouterr().err


def test_cli_heads_layers_option(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "heads",
                "--model",
                str(checkpoints["gpt2"]),
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--layers",
                "-1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "heads.json").read_text())["layers"] == [1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layers", "7"], "layer 7 out of range"),
        (["--layers", "x"], "cannot read --layers"),
        (["--top", "0"], "argument --top: give a whole number, 1 or more"),
        (["--prompts", "missing.txt"], "prompt file not found"),
    ],
)
def test_cli_heads_bad_input_exits_2(extra, message, checkpoints, tmp_path, capsys):
    status = main(
        [
            "heads",
            "--model",
            str(checkpoints["gpt2"]),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--out",
            str(tmp_path),
            *extra,
        ]
    )
    assert status == 2
    error = capsys.readouterr().err  # may also hold transformers' weight-loading progress bar
    ours = [line for line in error.splitlines() if line.startswith("funnel-tl")]
    assert len(ours) == 1 and message in ours[0] and "Traceback" not in error
    assert not (tmp_path / "heads.json").exists()


def test_drop_first_matches_reference(bridge, hf_model, tokenizer):
    prompts = list(SEED_PROMPTS[2:5])
    result = head_gains(bridge("gpt2"), prompts, drop_first=2, batch_size=2, progress=False)
    expected = hf_head_reference(hf_model("gpt2"), tokenizer, prompts, drop_first=2)
    # float32 rounding, as in test_head_norms_match_hf_modules.
    np.testing.assert_allclose(result.per_prompt_head_norms, expected["norm"], rtol=1e-4)
    assert result.drop_first == 2 and result.provenance["drop_first"] == 2
