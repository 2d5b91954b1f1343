"""Bootstrap intervals over prompts and the robust verdict, checked against theory on known data.

The GainResults here are built from per-prompt gains we choose (tests/synthetic_results.py), so
the right answer is known without running the code under test: the normal-theory width of a
mean's interval, a coverage rate, a hand-written resampling loop, intervals we place ourselves.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from funnel_tl import FunnelError, format_analysis, funnel_test
from funnel_tl.results import GainResult
from funnel_tl.stats import Intervals, bootstrap_intervals, robust_funnel_test
from synthetic_results import from_gains, funnel_like

COMPONENTS = ("attn", "mlp", "combined", "block", "cumulative")


def constant_layers(values_per_layer, n_prompts=6) -> dict[str, np.ndarray]:
    """Per-prompt gains equal on every prompt: the bootstrap has nothing to vary."""
    row = np.asarray(values_per_layer, dtype=np.float64)
    return np.tile(row, (n_prompts, 1))


def test_intervals_contain_the_point_estimate():
    result = funnel_like(n_layers=12, n_prompts=8, noise=0.3).with_intervals(n_resamples=2000, seed=1)
    points = {"attn": result.attn_gains, "mlp": result.mlp_gains, "block": result.block_gains,
              "combined": result.combined_gains, "cumulative": result.cumulative_gains}
    for component, point in points.items():
        lo, hi = result.intervals.of(component).T
        assert np.all(lo <= point) and np.all(point <= hi), component
        assert np.all(hi > lo), f"{component}: noisy prompts must give intervals of nonzero width"


def test_intervals_shrink_as_one_over_sqrt_prompts():
    # Same distribution, 25 times the prompts: the width should drop about 5-fold.
    widths = {}
    for n_prompts in (16, 400):
        result = funnel_like(n_layers=4, n_prompts=n_prompts, noise=0.3, seed=n_prompts)
        intervals = bootstrap_intervals(result, n_resamples=4000, seed=0)
        widths[n_prompts] = {c: np.diff(intervals.of(c), axis=1).ravel() for c in COMPONENTS}
    for component in COMPONENTS:
        ratio = widths[16][component] / widths[400][component]
        # sqrt(400/16) = 5; the spread of a sample sd at 16 prompts (~20%) sets the slack.
        assert np.all((ratio > 3) & (ratio < 8)), (component, ratio)


def test_interval_width_matches_normal_theory_for_a_mean():
    # With many prompts the bootstrap distribution of a mean is normal with sd = s·sqrt((n-1)/n)/sqrt(n).
    rng = np.random.default_rng(7)
    n_prompts = 400
    gains = {c: rng.normal(0.5, 0.1, (n_prompts, 3)) for c in ("attn", "mlp", "block")}
    result = from_gains(gains)
    intervals = bootstrap_intervals(result, n_resamples=8000, seed=3)
    for component in ("attn", "mlp", "block"):
        sample = gains[component]
        sd = sample.std(axis=0, ddof=0) / np.sqrt(n_prompts)
        expected = 2 * 1.959964 * sd
        width = np.diff(intervals.of(component), axis=1).ravel()
        # Monte Carlo error of 2.5/97.5 percentiles at 8,000 resamples is ~3% of the width.
        np.testing.assert_allclose(width, expected, rtol=0.06)
        np.testing.assert_allclose(intervals.of(component).mean(axis=1), sample.mean(axis=0), atol=0.1 * sd.max())


def test_coverage_is_near_the_confidence():
    # 300 prompt sets drawn from a known distribution: the 95% interval of the attention gain
    # (a mean of per-prompt gains) must cover the true mean in about 95% of them.
    rng = np.random.default_rng(11)
    true_mean = np.exp(0.3 ** 2 / 2)  # mean of lognormal(0, 0.3)
    covered = 0
    for trial in range(300):
        gains = {c: rng.lognormal(0, 0.3, (40, 1)) for c in ("attn", "mlp", "block")}
        lo, hi = bootstrap_intervals(from_gains(gains), n_resamples=1000, seed=trial).attn[0]
        covered += lo <= true_mean <= hi
    # Percentile bootstrap at n=40 under-covers a little (~93%); binomial sd over 300 trials is 1.4%.
    assert 0.88 <= covered / 300 <= 0.985, covered


def test_matches_a_hand_written_resampling_loop():
    # An independent bootstrap: draw prompt indices with replacement, recompute each gain as the
    # seed does (mean of per-prompt gains; combined = attn mean × MLP mean; cumulative = cumprod).
    result = funnel_like(n_layers=5, n_prompts=10, noise=0.4, seed=5)
    rng = np.random.default_rng(123)
    per_prompt = {c: result.per_prompt_gains(c) for c in ("attn", "mlp", "block")}
    draws = {c: [] for c in COMPONENTS}
    for _ in range(6000):
        index = rng.integers(0, result.n_prompts, result.n_prompts)
        attn, mlp = per_prompt["attn"][index].mean(0), per_prompt["mlp"][index].mean(0)
        draws["attn"].append(attn)
        draws["mlp"].append(mlp)
        draws["block"].append(per_prompt["block"][index].mean(0))
        draws["combined"].append(attn * mlp)
        draws["cumulative"].append(np.cumprod(attn * mlp))
    ours = bootstrap_intervals(result, n_resamples=6000, seed=0)
    for component in COMPONENTS:
        reference = np.percentile(np.array(draws[component]), [2.5, 97.5], axis=0).T  # [layer, 2]
        width = reference[:, 1] - reference[:, 0]
        # Two independent Monte Carlo runs of 6,000: their percentiles differ by a few % of the width.
        assert np.all(np.abs(ours.of(component) - reference) <= 0.08 * width[:, None]), component


def test_seeded_and_configurable():
    result = funnel_like(noise=0.3)
    first = bootstrap_intervals(result, n_resamples=500, seed=4)
    again = bootstrap_intervals(result, n_resamples=500, seed=4)
    other = bootstrap_intervals(result, n_resamples=500, seed=5)
    assert np.array_equal(first.mlp, again.mlp)
    assert not np.array_equal(first.mlp, other.mlp)
    assert (first.n_resamples, first.seed, first.confidence) == (500, 4, 0.95)
    narrow = bootstrap_intervals(result, n_resamples=2000, seed=4, confidence=0.5)
    wide = bootstrap_intervals(result, n_resamples=2000, seed=4, confidence=0.99)
    assert np.all(np.diff(narrow.attn, axis=1) < np.diff(wide.attn, axis=1))


def test_bad_requests_are_funnel_errors():
    result = funnel_like()
    with pytest.raises(FunnelError, match="at least 2 prompts"):
        bootstrap_intervals(result.subset([0]))
    with pytest.raises(FunnelError, match="at least one resample"):
        bootstrap_intervals(result, n_resamples=0)
    with pytest.raises(FunnelError, match="between 0 and 1"):
        bootstrap_intervals(result, confidence=95)
    good = bootstrap_intervals(result, n_resamples=100)
    with pytest.raises(FunnelError, match="lower bound above"):
        Intervals(0.95, 100, 0, attn=good.attn[:, ::-1],
                  mlp=good.mlp, combined=good.combined, block=good.block, cumulative=good.cumulative)
    with pytest.raises(ValueError, match="intervals cover"):
        funnel_like(n_layers=3).with_intervals(good)  # intervals of 8 layers on a 3-layer result


# ---- the robust verdict -------------------------------------------------------------------------
def test_robust_verdict_equals_point_verdict_without_variation():
    # Identical prompts: every interval collapses on the point estimate, so both tests agree.
    gains = {"attn": constant_layers([0.1, 0.2, 0.3, 0.4]), "mlp": constant_layers([0.4, 0.5, 0.6, 3.0]),
             "block": constant_layers([1.1, 1.1, 1.1, 1.2])}
    result = from_gains(gains).with_intervals(n_resamples=200)
    robust, point = robust_funnel_test(result), funnel_test(result)
    assert robust.to_dict()["funnel_confirmed"] is True
    assert {k: v for k, v in robust.to_dict().items() if k != "counts"} == point.to_dict()
    assert robust.counts["attention"] == {"n_contracting": 4, "n_expanding": 0, "n_undetermined": 0}
    assert robust.counts["block"] == {"n_contracting": 0, "n_expanding": 4, "n_undetermined": 0}


def test_robust_verdict_counts_straddling_layers_as_neither():
    # Hand-placed intervals: layer 1's attention straddles 1 although its point estimate is 0.9.
    result = from_gains({"attn": constant_layers([0.1, 0.9, 0.3]), "mlp": constant_layers([0.5, 0.5, 2.0]),
                         "block": constant_layers([1.0, 1.0, 1.0])})
    intervals = Intervals(
        confidence=0.95, n_resamples=1, seed=0,
        attn=np.array([[0.05, 0.2], [0.7, 1.2], [0.2, 0.4]]),
        mlp=np.array([[0.4, 0.6], [0.3, 1.01], [0.9, 3.0]]),
        combined=np.array([[0.0, 0.1], [0.2, 1.2], [0.2, 1.1]]),
        block=np.array([[0.9, 1.1], [1.01, 1.2], [0.8, 0.99]]),
        cumulative=np.array([[0.0, 0.1], [0.0, 0.1], [0.0, 0.1]]),
    )
    robust = robust_funnel_test(result.with_intervals(intervals))
    assert funnel_test(result).attention_always_contracts  # the point estimates all lie below 1
    assert robust.counts == {
        "attention": {"n_contracting": 2, "n_expanding": 0, "n_undetermined": 1},
        "mlp": {"n_contracting": 1, "n_expanding": 0, "n_undetermined": 2},
        "combined": {"n_contracting": 1, "n_expanding": 0, "n_undetermined": 2},
        "block": {"n_contracting": 1, "n_expanding": 1, "n_undetermined": 1},
    }
    assert not robust.attention_always_contracts
    # 1 of 3 contracting: the seed's "at most three may fail" would pass; the depth-scaled rule
    # lets max(1, floor(3 / 8)) = 1 fail, so it needs 2.
    assert not robust.mlp_mostly_contracts
    assert not robust.last_layer_expands  # its interval [0.9, 3.0] reaches below 1
    assert robust.last_layer_is_max is False  # 0.9 is not above layer 1's upper bound 1.01
    assert not robust.funnel_confirmed


def test_robust_verdict_needs_intervals():
    with pytest.raises(FunnelError, match="no bootstrap intervals"):
        robust_funnel_test(funnel_like())


# ---- results.json and the printed analysis ------------------------------------------------------
def test_results_json_carries_intervals_and_round_trips(tmp_path):
    result = funnel_like(n_layers=6, noise=0.3).with_intervals(n_resamples=300, seed=9)
    first = result.save(tmp_path / "a" / "results.json")
    data = json.loads(first.read_text())
    block = data["intervals"]
    assert (block["confidence"], block["n_resamples"], block["seed"]) == (0.95, 300, 9)
    for key, component in (("attention", "attn"), ("mlp", "mlp"), ("combined", "combined"), ("block", "block")):
        assert np.array_equal(np.array(block[key]), result.intervals.of(component))
        assert len(block[key]) == 6 and all(len(pair) == 2 for pair in block[key])
    robust = data["robust_funnel_test"]
    assert set(robust) == set(data["funnel_test"]) | {"counts"}
    assert set(robust["counts"]) == {"attention", "mlp", "combined", "block"}

    loaded = GainResult.load(first)
    second = loaded.save(tmp_path / "b" / "results.json")
    assert first.read_bytes() == second.read_bytes()
    assert np.array_equal(loaded.intervals.cumulative, result.intervals.cumulative)


def test_results_without_intervals_have_no_interval_keys(tmp_path):
    path = funnel_like().save(tmp_path / "results.json")
    data = json.loads(path.read_text())
    assert "intervals" not in data and "robust_funnel_test" not in data
    assert GainResult.load(path).intervals is None


def test_a_broken_intervals_block_is_a_funnel_error(tmp_path):
    data = funnel_like().with_intervals(n_resamples=50).to_dict()
    del data["intervals"]["mlp"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FunnelError, match="intervals.mlp is missing"):
        GainResult.load(path)


def test_with_intervals_returns_a_new_result_and_subset_drops_them():
    result = funnel_like()
    with_intervals = result.with_intervals(n_resamples=100)
    assert result.intervals is None and with_intervals.intervals is not None
    assert with_intervals.subset([0, 1, 2]).intervals is None  # they described all eight prompts


def test_analysis_prints_the_robust_verdict_only_with_intervals():
    result = funnel_like()
    assert "ROBUST" not in format_analysis(result)
    text = format_analysis(result.with_intervals(n_resamples=200, seed=2))
    assert "ROBUST TEST: 95% bootstrap intervals over 8 prompts (200 resamples, seed 2)" in text
    assert ">>> FUNNEL MODEL CONFIRMED (robust): " in text


def test_robust_verdict_over_few_prompts_carries_a_caveat():
    from funnel_tl.funnel import FEW_PROMPTS

    few = funnel_like().with_intervals(n_resamples=100)  # the seed set's 8 prompts
    assert few.n_prompts < FEW_PROMPTS and "few prompts: a percentile bootstrap over 8 is rough" in format_analysis(few)
    many = funnel_like(n_prompts=FEW_PROMPTS).with_intervals(n_resamples=100)
    assert "few prompts" not in format_analysis(many)


def test_seed_rule_that_cannot_fail_is_flagged_and_the_robust_rule_scales_with_depth():
    # nano-2l's case: both MLP gains above 3. The seed's literal rule (>= n - 3 contracting) passes
    # at two layers whatever the gains; the analysis says so, and the robust rule fails it.
    result = from_gains({"attn": constant_layers([0.2, 0.3]), "mlp": constant_layers([8.0, 3.5]),
                         "block": constant_layers([1.5, 1.2])}).with_intervals(n_resamples=100)
    assert funnel_test(result).mlp_mostly_contracts  # kept literally: reproduction matters
    assert not robust_funnel_test(result).mlp_mostly_contracts  # 0 of 2 contract; 1 may fail
    text = format_analysis(result)
    assert "2. MLP mostly contracts: True (0/2)  [cannot fail at 2 layers: the seed allows 3 expanding]" in text
    assert "depth-scaled: at most 1 of 2 may fail" in text
    # At 24 layers the depth-scaled rule is the seed's: three may fail, four may not.
    mlp = [0.5] * 20 + [2.0] * 4
    deep = from_gains({"attn": constant_layers([0.3] * 24), "mlp": constant_layers(mlp),
                       "block": constant_layers([1.1] * 24)}).with_intervals(n_resamples=100)
    assert not funnel_test(deep).mlp_mostly_contracts and not robust_funnel_test(deep).mlp_mostly_contracts
    assert "cannot fail" not in format_analysis(deep)
    mlp = [0.5] * 21 + [2.0] * 3
    deep = from_gains({"attn": constant_layers([0.3] * 24), "mlp": constant_layers(mlp),
                       "block": constant_layers([1.1] * 24)}).with_intervals(n_resamples=100)
    assert funnel_test(deep).mlp_mostly_contracts and robust_funnel_test(deep).mlp_mostly_contracts


def test_depth_scaled_allowance_at_every_boundary():
    """max(1, floor(n / 8)), written out by hand: one eighth of the layers (the seed's 3 of 24),
    at least one; the boundaries 8k - 1 / 8k are where a float ratio could round the wrong way."""
    from funnel_tl.criteria import mlp_expanding_allowed

    #          1-15 layers   16-23       24-31       32-39       40-47      48
    expected = [1] * 15 + [2] * 8 + [3] * 8 + [4] * 8 + [5] * 8 + [6]
    assert [mlp_expanding_allowed(n) for n in range(1, 49)] == expected
    assert [mlp_expanding_allowed(n) for n in (0, 79, 80, 95, 96, 119, 120, 1000)] == [1, 9, 10, 11, 12, 14, 15, 125]


def test_cross_model_table_compares_max_with_max_and_last_with_last():
    # Our MLP maximum (8.0) is in layer 0, our last layer's gain 1.5: each row must pair like with like.
    result = from_gains({"attn": constant_layers([0.2, 0.3, 0.4]), "mlp": constant_layers([8.0, 0.5, 1.5]),
                         "block": constant_layers([1.5, 1.2, 1.1])})
    lines = format_analysis(result).splitlines()
    max_row = next(line for line in lines if line.startswith("MLP max gain"))
    last_row = next(line for line in lines if line.startswith("MLP last-layer gain"))
    assert max_row.split()[-4:] == ["3.604", "(L23)", "8.000", "(L0)"]
    assert last_row.split()[-2:] == ["3.604", "1.500"]
    assert len(max_row) == len(last_row)  # the columns line up


def test_printed_numbers_keep_their_digits_and_columns():
    """The MLP-max row once read `7.996  (L0)` (two spaces), and the repr rounded 7.996 to `8`."""
    gains = {"attn": np.full((2, 3), 1.5), "mlp": np.tile([7.996, 1.25, 1.084], (2, 1)), "block": np.full((2, 3), 1.1)}
    result = from_gains(gains, model="synthetic/short")
    row = next(line for line in format_analysis(result).splitlines() if line.startswith("MLP max gain (layer)"))
    header = next(line for line in format_analysis(result).splitlines() if line.startswith("Metric"))
    assert row.endswith(" 7.996 (L0)") and "  (L" not in row
    assert len(row) == len(header)  # right-aligned under the model's column, as the rows around it
    assert "mlp_gains=[7.996, 1.25, 1.084]" in repr(result)


def test_one_dropped_position_is_said_in_the_singular():
    from dataclasses import replace

    from funnel_tl.plots import plot_funnel

    gains = {"attn": np.full((2, 3), 0.5), "mlp": np.full((2, 3), 0.9), "block": np.full((2, 3), 1.1)}
    one, four = (replace(from_gains(gains), drop_first=n) for n in (1, 4))
    assert "first position dropped" in format_analysis(one) and "first 1 positions" not in format_analysis(one)
    assert "first position dropped" in plot_funnel(one).layout.title.text
    assert "first 4 positions dropped" in format_analysis(four)
