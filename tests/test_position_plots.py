"""Position figures and `funnel-tl run --by-position` end to end.

Figure checks use a synthetic result whose gains we chose (tests/synthetic_positions.py), so what
each trace must hold follows from the inputs, not from the plotting code.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from synthetic_positions import sink_result

from funnel_tl.cli.entry import main
from funnel_tl.plots.positions import (
    plot_position_heatmap,
    plot_position_heatmaps,
    plot_sink_comparison,
    write_position_page,
)


def test_heatmap_is_log_gain_diverging_at_1_with_blank_empty_cells():
    result = sink_result(sink_gain=2.0, empty_last_bucket=True).with_intervals(n_resamples=200)
    fig = plot_position_heatmap(result, "attn")
    (heatmap,) = fig.data
    # Position 0: attention gain 2 in every layer; elsewhere 0.5 (both prompts agree).
    expected = np.full((3, 4), math.log10(0.5))
    expected[:, 0] = math.log10(2.0)
    np.testing.assert_allclose(np.asarray(heatmap.z, dtype=float), expected)
    axis = fig.layout.coloraxis
    assert axis.cmid == 0 and axis.cmin == -axis.cmax  # white at gain 1, symmetric about it
    assert "1" in axis.colorbar.ticktext and list(heatmap.x) == ["0", "1", "2", "3"]
    # Prompts behind each cell: position 3 is reached by one prompt of two.
    counts = np.asarray(heatmap.customdata)[..., 3]
    assert counts[:, 3].tolist() == [1, 1, 1] and counts[:, 0].tolist() == [2, 2, 2]


def test_cells_no_prompt_reaches_are_blank():
    result = sink_result(sink_gain=2.0).without_first(2)  # positions 0 and 1 left out
    fig = plot_position_heatmaps(result)
    assert len(fig.data) == 3
    for heatmap in fig.data:
        z = np.asarray(heatmap.z, dtype=float)
        assert np.all(np.isnan(z[:, :2])) and np.all(np.isfinite(z[:, 2:]))
    assert fig.data[0].coloraxis != fig.data[1].coloraxis  # each component its own scale


def test_sink_comparison_draws_both_versions_and_names_the_verdict_change():
    result = sink_result(sink_gain=2.0)
    fig = plot_sink_comparison(result)
    by_name = {trace.name: trace for trace in fig.data}
    np.testing.assert_allclose(by_name["attention gain, all positions"].y, 201.5 / 103)  # see test_positions
    np.testing.assert_allclose(by_name["attention gain, without position 0"].y, 0.5)
    np.testing.assert_allclose(by_name["MLP gain, without position 0"].y, [0.5, 0.5, 3.0])
    assert by_name["attention gain, without position 0"].line.dash == "dash"
    assert "the verdict depends on it" in fig.layout.title.text
    unchanged = plot_sink_comparison(sink_result(sink_gain=0.4))
    assert "does not depend on it" in unchanged.layout.title.text


def test_position_page_opens_offline(tmp_path):
    path = write_position_page(sink_result(sink_gain=2.0), tmp_path / "positions.html")
    html = path.read_text()
    assert html.count('id="funnel-tl-positions-') == 2  # heatmaps, then the comparison
    assert "html { overflow-y: scroll; }" in html  # seen in Chromium: no sideways scroll at 1400 px
    # The folder's shared plotly.js, by relative path (no network), or embedded when asked.
    assert '<script src="plotly.min.js"' in html and (tmp_path / "plotly.min.js").is_file()
    alone = write_position_page(sink_result(sink_gain=2.0), tmp_path / "alone.html", self_contained=True).read_text()
    assert "<script src=" not in alone and len(alone) > len((tmp_path / "plotly.min.js").read_text())


@pytest.mark.slow
def test_run_by_position_end_to_end(checkpoints, hf_model, tokenizer, tmp_path, capsys):
    from funnel_tl.testing.reference import reference_position_gains, seed_token_norms

    prompts = ["Hi there", ("The quick brown fox jumps over the lazy dog " * 3).strip(), "x = 1", "def f(x): return x"]
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--model",
                str(checkpoints["gpt2"]),
                "--prompts",
                str(source),
                "--by-position",
                "--batch-size",
                "4",
                "--bootstrap",
                "200",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "POSITIONS: is the verdict about position 0?" in printed and "Funnel verdict, without position 0" in printed
    data = json.loads((out / "results.json").read_text())
    block = data["by_position"]
    expected, counts = reference_position_gains(seed_token_norms(hf_model("gpt2"), tokenizer, prompts), block["edges"])
    assert block["n_prompts"] == counts.tolist()
    gains = np.asarray(block["gains"]["mlp"], dtype=float)  # null (no prompt) reads as NaN
    # float32 on both paths; they differ only in summation order (~1e-7).
    np.testing.assert_allclose(gains, expected["mlp"], rtol=1e-4)
    assert isinstance(block["sink"]["verdict_changes"], bool)
    assert (out / "positions.html").is_file()
    (out / "positions.html").unlink()
    assert main(["report", str(out)]) == 0  # re-rendered from results.json, no model
    assert (out / "positions.html").is_file() and "POSITIONS:" in capsys.readouterr().out


def test_sink_positions_out_of_range_is_refused_before_loading(capsys):
    assert main(["run", "--model", "no/such-model", "--by-position", "--sink-positions", "0"]) == 2
    assert "argument --sink-positions: give a whole number, 1 to 16" in capsys.readouterr().err


def test_compare_by_position_measures_again_files_without_positions(checkpoints, tmp_path):
    from funnel_tl import compare

    models = [str(checkpoints["gpt2"]), str(checkpoints["llama-gqa"])]
    options = dict(
        prompts=["Hi there", "x = 1", "def f(x): return x"],
        device="cpu",
        dtype="float32",
        out=tmp_path,
        bootstrap=0,
        progress=False,
    )
    plain = compare(models, **options)
    assert all(result.positions is None for result in plain.results.values())
    swept = compare(models, by_position=True, **options)
    assert not any(row.resumed for row in swept.rows)  # the plain files lack position sums
    for model in models:
        assert swept.results[model].position_gains("mlp").shape[0] == swept.results[model].n_layers
    again = compare(models, **options)  # files with positions serve a sweep without them
    assert all(row.resumed for row in again.rows)


@pytest.mark.slow
def test_done_when_nano_8l_by_position_equals_hf_reference(tmp_path, capsys):
    """The issue's bar: `funnel-tl run --model nano-8l --by-position` on a padded batch of the seed
    prompts (lengths differ) equals the HF-module reference, token by token, to 1e-4."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from funnel_tl.models.loading import bundled_models
    from funnel_tl.prompts.sets import SEED_PROMPTS
    from funnel_tl.testing.reference import reference_position_gains, seed_token_norms

    assert (
        main(
            [
                "run",
                "--model",
                "nano-8l",
                "--by-position",
                "--batch-size",
                "8",
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--bootstrap",
                "100",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Funnel verdict, without position 0" in printed and "depend" in printed
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["provenance"]["padding_fraction"] > 0  # one padded batch of eight prompts
    folder = bundled_models()["nano-8l"]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    norms = seed_token_norms(hf, AutoTokenizer.from_pretrained(folder), list(SEED_PROMPTS))
    expected, counts = reference_position_gains(norms, data["by_position"]["edges"], "seed")
    assert data["by_position"]["n_prompts"] == counts.tolist()
    for component, key in (("attn", "attention"), ("mlp", "mlp"), ("block", "block")):
        # float32 on both paths; they differ only in summation order (~1e-7).
        np.testing.assert_allclose(
            np.asarray(data["by_position"]["gains"][key], dtype=float),
            expected[component],
            rtol=1e-4,
            err_msg=component,
        )
    sink = data["by_position"]["sink"]
    assert sink["k"] == 1 and isinstance(sink["verdict_changes"], bool)
    assert (tmp_path / "positions.html").is_file()


def test_sink_positions_without_by_position_is_refused(capsys):
    assert main(["run", "--model", "no/such-model", "--sink-positions", "3"]) == 2
    assert "--sink-positions needs --by-position" in capsys.readouterr().err


def test_heads_by_position_from_the_command_line(checkpoints, tmp_path, capsys):
    assert (
        main(
            [
                "heads",
                "--model",
                str(checkpoints["neox-parallel"]),
                "--by-position",
                "--top",
                "4",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "heads.json").read_text())
    block = data["by_position"]
    assert np.asarray(block["head_gain"], dtype=float).shape == (
        data["n_layers"],
        data["n_heads"],
        len(block["labels"]),
    )
    assert "the top 4 heads' gain by position" in (tmp_path / "heads.html").read_text()


def test_bucket_labels_are_plain_hyphens_in_data_and_en_dashes_in_figures():
    """`df.query("position == '16-31'")` found nothing while the labels held an en dash."""
    pytest.importorskip("pandas")
    from funnel_tl.measure.positions import bucket_edges
    from funnel_tl.results.gains import GainResult
    from funnel_tl.results.positions import PositionSums

    edges = bucket_edges(40)  # 0 … 15 one by one, then 16-31 and 32-63
    n_tokens = np.array([[1] * 16 + [16, 8]])  # [prompt, bucket]: one prompt of 40 tokens
    ones = np.ones((1, 2, len(edges) - 1)) * n_tokens[:, None, :]  # [prompt, layer, bucket]
    sums = {c: ones.copy() for c in ("attn", "mlp", "block")}
    positions = PositionSums(edges=edges, n_tokens=n_tokens, out_sums=sums, in_sums={c: ones.copy() for c in sums})
    result = GainResult(
        model="synthetic/long",
        definition="seed",
        n_layers=2,
        d_model=8,
        parallel_blocks=True,
        prompts=("a",),
        n_tokens=n_tokens.sum(axis=1),
        out_sums={c: v.sum(axis=2) for c, v in sums.items()},
        in_sums={c: v.sum(axis=2) for c, v in sums.items()},
        positions=positions,
    )
    frame = result.to_pandas()
    assert len(frame.query("position == '16-31'")) == len(frame.query("position == '0'")) > 0
    assert list(plot_position_heatmap(result, "attn").data[0].x)[-2:] == ["16–31", "32–63"]
