"""results.json: every key of the seed notebook's JSON, a faithful round trip, clear errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from funnel_tl import FunnelError, GainResult, measure_gains

# Every key the seed notebook's results dict holds, nested as it nests them.
SEED_KEYS = {
    "model": None,
    "n_layers": None,
    "hidden_dim": None,
    "n_prompts": None,
    "attention": {"gains", "min_gain", "max_gain", "L_star_min", "n_contracting", "n_expanding"},
    "mlp": {"gains", "min_gain", "max_gain", "L_star_max", "n_contracting", "n_expanding", "last_layer_gain"},
    "combined": {"gains", "n_net_contracting", "n_net_expanding", "max_gain", "max_gain_layer"},
    "funnel_test": {
        "attention_always_contracts",
        "mlp_mostly_contracts",
        "last_layer_expands",
        "last_layer_is_max",
        "funnel_confirmed",
    },
    "comparison_1_4b": {"attn_contraction_match", "mlp_expansion_in_last", "pattern_match"},
}


@pytest.fixture(scope="module")
def result(bridge):
    return measure_gains(bridge("neox-parallel"), "seed", definition="seed")


def test_every_seed_key_present(result, tmp_path):
    data = json.loads(result.save(tmp_path / "results.json").read_text())
    for key, inner in SEED_KEYS.items():
        assert key in data, key
        if inner:
            assert inner <= set(data[key]), (key, inner - set(data[key]))
    assert data["definition"] == "seed" and data["schema_version"] == 1
    assert len(data["block"]["gains"]) == data["n_layers"] == 2
    provenance = data["provenance"]
    for key in ("funnel_tl", "transformer_lens", "torch", "dtype", "device", "prompts_sha256", "drop_first"):
        assert key in provenance
    assert provenance["prompts_sha256"] == data["prompts"]["sha256"]


def test_seed_meanings(result):
    """The seed's derived numbers, recomputed here from the gains by the seed's own formulas."""
    data = result.to_dict()
    attn, mlp = np.array(data["attention"]["gains"]), np.array(data["mlp"]["gains"])
    assert data["attention"]["n_contracting"] == int(np.sum(attn < 1))
    assert data["attention"]["L_star_min"] == int(np.nanargmin(attn))
    assert data["mlp"]["L_star_max"] == int(np.nanargmax(mlp))
    assert data["mlp"]["last_layer_gain"] == mlp[-1]
    np.testing.assert_allclose(data["combined"]["gains"], attn * mlp)
    per_prompt = np.array(data["per_prompt"]["attn"]["out_sum"]) / np.array(data["per_prompt"]["n_tokens"])[:, None]
    per_prompt_in = np.array(data["per_prompt"]["attn"]["in_sum"]) / np.array(data["per_prompt"]["n_tokens"])[:, None]
    np.testing.assert_allclose((per_prompt / (per_prompt_in + 1e-10)).mean(0), attn)


def test_round_trip(result, tmp_path):
    path = result.save(tmp_path / "out" / "results.json")
    loaded = GainResult.load(path)
    assert loaded.to_dict() == result.to_dict()
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file


@pytest.mark.parametrize(
    "key, edit, message",
    [
        ("mlp", 999.0, "mlp.gains[1] is 999.0, but the file's per-prompt sums give"),
        ("attention", "oops", "attention.gains[1] is 'oops'"),
        ("block", None, "block.gains[1] is None"),
    ],
)
def test_a_hand_edited_gain_is_named_not_replaced(result, tmp_path, key, edit, message):
    """funnel_tl reads the per-prompt sums: a summary edited by hand would otherwise be silently
    recomputed away (report printed the old numbers), so the file and the field are named."""
    data = result.to_dict()
    data[key]["gains"][1] = edit
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FunnelError, match=re.escape(f"{path}: {message}")):
        GainResult.load(path)


def test_foreign_and_old_files_give_clear_errors(tmp_path):
    seed_style = tmp_path / "seed.json"
    seed_style.write_text(json.dumps({"model": "x", "attention": {"gains": [0.5]}}))
    with pytest.raises(FunnelError, match="no schema_version"):
        GainResult.load(seed_style)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(FunnelError, match="schema_version 99"):
        GainResult.load(future)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(FunnelError, match="not valid JSON"):
        GainResult.load(broken)
    with pytest.raises(FunnelError, match="not found"):
        GainResult.load(tmp_path / "missing.json")


def test_written_files_are_readable_by_others(result, tmp_path):
    """mkstemp creates 0600 files; a results file must get the usual 0666-less-umask permissions."""
    import os

    umask = os.umask(0o022)
    try:
        path = result.save(tmp_path / "results.json")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


# ---- notebook display and tables ----------------------------------------------------------------
def test_repr_is_short_and_says_what_the_result_is(result, tmp_path):
    loaded = GainResult.load(result.with_intervals(n_resamples=50).save(tmp_path / "results.json"))
    text = repr(loaded)
    assert len(text) < 800 and text.startswith("GainResult(model=")
    assert "n_layers=2" in text and "intervals='95%, 50 resamples'" in text
    assert loaded.prompts[0] not in text  # no prompt text, no per-prompt arrays
    page = loaded._repr_html_()
    assert page.count("<tr>") == loaded.n_layers + 1 and f"{loaded.mlp_gains[1]:.4g}" in page


def test_to_pandas_is_tidy_long_format(result):
    pytest.importorskip("pandas")
    with_intervals = result.with_intervals(n_resamples=50)
    table = with_intervals.to_pandas()
    assert list(table.columns) == ["model", "layer", "component", "gain", "ci_low", "ci_high", "n_prompts"]
    assert len(table) == 5 * result.n_layers  # attn, mlp, block, combined, cumulative
    mlp = table[table["component"] == "mlp"].sort_values("layer")
    np.testing.assert_array_equal(mlp["gain"], result.mlp_gains)
    np.testing.assert_array_equal(mlp[["ci_low", "ci_high"]].to_numpy(), with_intervals.intervals.mlp)
    assert (table["n_prompts"] == result.n_prompts).all()
    assert result.to_pandas()["ci_low"].isna().all()  # no intervals drawn: NaN, not a made-up number


def test_measure_gains_can_draw_intervals(bridge):
    plain = measure_gains(bridge("gpt2"), "seed", progress=False)
    drawn = measure_gains(bridge("gpt2"), "seed", progress=False, intervals=True)
    expected = plain.with_intervals()  # the same defaults: 2,000 resamples, seed 0
    np.testing.assert_array_equal(drawn.intervals.mlp, expected.intervals.mlp)
    assert plain.intervals is None
