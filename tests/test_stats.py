"""Intervals over prompts and the robust verdict, checked against theory on known data.

The GainResults here are built from per-prompt gains we choose (tests/synthetic_results.py), so
the right answer is known without running the code under test: the t table, the normal-theory
width of a mean's interval, a coverage rate, a hand-written resampling loop, a delta method by
numerical differentiation, intervals we place ourselves. Coverage on a real model's per-prompt
gains: tests/test_coverage.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_results import from_gains, funnel_like

from funnel_tl import FunnelError, format_analysis, funnel_test
from funnel_tl.analysis.stats import Intervals, bootstrap_intervals, dominant_prompts, robust_funnel_test, t_critical
from funnel_tl.results.gains import GainResult

COMPONENTS = ("attn", "mlp", "combined", "block", "cumulative")


def constant_layers(values_per_layer, n_prompts=6) -> dict[str, np.ndarray]:
    """Per-prompt gains equal on every prompt: the bootstrap has nothing to vary."""
    row = np.asarray(values_per_layer, dtype=np.float64)
    return np.tile(row, (n_prompts, 1))


def test_intervals_contain_the_point_estimate():
    result = funnel_like(n_layers=12, n_prompts=8, noise=0.3).with_intervals(n_resamples=2000, seed=1)
    points = {
        "attn": result.attn_gains,
        "mlp": result.mlp_gains,
        "block": result.block_gains,
        "combined": result.combined_gains,
        "cumulative": result.cumulative_gains,
    }
    for component, point in points.items():
        lo, hi = result.intervals.of(component).T
        assert np.all(lo <= point) and np.all(point <= hi), component
        assert np.all(hi > lo), f"{component}: noisy prompts must give intervals of nonzero width"


def test_intervals_shrink_as_one_over_sqrt_prompts():
    # Same distribution, 25 times the prompts: the width should drop about 5-fold.
    widths = {}
    for n_prompts in (16, 400):
        result = funnel_like(n_layers=4, n_prompts=n_prompts, noise=0.3, seed=n_prompts)
        intervals = bootstrap_intervals(result, n_resamples=4000, seed=0, method="percentile")
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
    intervals = bootstrap_intervals(result, n_resamples=8000, seed=3, method="percentile")
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
    true_mean = np.exp(0.3**2 / 2)  # mean of lognormal(0, 0.3)
    covered = 0
    for trial in range(300):
        gains = {c: rng.lognormal(0, 0.3, (40, 1)) for c in ("attn", "mlp", "block")}
        lo, hi = bootstrap_intervals(from_gains(gains), n_resamples=1000, seed=trial, method="percentile").attn[0]
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
    ours = bootstrap_intervals(result, n_resamples=6000, seed=0, method="percentile")
    for component in COMPONENTS:
        reference = np.percentile(np.array(draws[component]), [2.5, 97.5], axis=0).T  # [layer, 2]
        width = reference[:, 1] - reference[:, 0]
        # Two independent Monte Carlo runs of 6,000: their percentiles differ by a few % of the width.
        assert np.all(np.abs(ours.of(component) - reference) <= 0.08 * width[:, None]), component


def test_seeded_and_configurable():
    result = funnel_like(noise=0.3)
    first = bootstrap_intervals(result, n_resamples=500, seed=4, method="percentile")
    again = bootstrap_intervals(result, n_resamples=500, seed=4, method="percentile")
    other = bootstrap_intervals(result, n_resamples=500, seed=5, method="percentile")
    assert np.array_equal(first.mlp, again.mlp)
    assert not np.array_equal(first.mlp, other.mlp)
    assert (first.n_resamples, first.seed, first.confidence, first.method) == (500, 4, 0.95, "percentile")
    for method in ("t", "percentile"):
        narrow = bootstrap_intervals(result, n_resamples=2000, seed=4, confidence=0.5, method=method)
        wide = bootstrap_intervals(result, n_resamples=2000, seed=4, confidence=0.99, method=method)
        for component in COMPONENTS:
            assert np.all(np.diff(narrow.of(component), axis=1) < np.diff(wide.of(component), axis=1)), (
                method,
                component,
            )
    # The t intervals resample nothing: the seed changes none of them.
    assert np.array_equal(bootstrap_intervals(result, seed=1).mlp, bootstrap_intervals(result, seed=2).mlp)


# ---- the t intervals (the default) ---------------------------------------------------------------
def test_t_critical_values_match_the_t_table():
    # Two-sided critical values from a printed Student-t table (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2),
    # to the table's three decimals; 1e5 degrees of freedom is the normal's 1.960 / 2.576.
    table = {
        (0.95, 1): 12.706,
        (0.95, 2): 4.303,
        (0.95, 3): 3.182,
        (0.95, 7): 2.365,
        (0.95, 15): 2.131,
        (0.95, 31): 2.040,
        (0.90, 7): 1.895,
        (0.99, 7): 3.499,
        (0.99, 30): 2.750,
        (0.80, 10): 1.372,
        (0.95, 100_000): 1.960,
        (0.99, 100_000): 2.576,
    }
    for (confidence, df), value in table.items():
        assert abs(t_critical(confidence, df) - value) < 5e-4, (confidence, df)  # the table's rounding
    with pytest.raises(FunnelError, match="degree of freedom"):
        t_critical(0.95, 0)


def test_t_intervals_of_means_are_the_textbook_formula():
    # mean ± t(n-1) · sd / √n, with t(7) = 2.365 from the table, written out here by hand.
    rng = np.random.default_rng(3)
    gains = {c: rng.lognormal(-1, 0.4, (8, 5)) for c in ("attn", "mlp", "block")}
    intervals = bootstrap_intervals(from_gains(gains))
    assert intervals.method == "t"
    for component in ("attn", "mlp", "block"):
        sample = gains[component]
        half = 2.3646 * sample.std(axis=0, ddof=1) / np.sqrt(8)
        expected = np.stack([np.maximum(sample.mean(0) - half, 0), sample.mean(0) + half], axis=1)
        # from_gains' per-prompt gains carry the seed's 1e-10 epsilon; the table value 4 digits.
        np.testing.assert_allclose(intervals.of(component), expected, rtol=1e-4)


def _log_product_and_error(attn, mlp, upto, cumulative):
    """log(ā·m̄) of a layer (or summed over layers 0..upto) and its delta-method standard error,
    the gradient taken by finite differences, against the sample covariance (np.cov): an
    implementation independent of stats._log_products."""
    n_prompts, n_layers = attn.shape
    values = np.concatenate([attn, mlp], axis=1)  # [prompt, 2·layer]
    means, covariance = values.mean(axis=0), np.cov(values, rowvar=False)
    layers = range(upto + 1) if cumulative else [upto]

    def f(vector):
        return sum(np.log(vector[layer]) + np.log(vector[n_layers + layer]) for layer in layers)

    step = 1e-7 * means
    gradient = np.array(
        [(f(means + step * e) - f(means - step * e)) / (2 * step[i]) for i, e in enumerate(np.eye(len(means)))]
    )
    return f(means), np.sqrt(gradient @ covariance @ gradient / n_prompts)


def correlated_gains(rng, n_prompts, n_layers=4):
    shared = rng.normal(0, 0.3, (n_prompts, 1))  # attention and MLP gains correlated across prompts
    return {
        "attn": np.exp(shared + rng.normal(-1, 0.3, (n_prompts, n_layers))),
        "mlp": np.exp(shared + rng.normal(0.5, 0.3, (n_prompts, n_layers))),
        "block": rng.lognormal(0, 0.1, (n_prompts, n_layers)),
    }


def test_products_under_five_prompts_are_delta_method_t_intervals_of_the_log():
    gains = correlated_gains(np.random.default_rng(8), n_prompts=4)
    intervals = bootstrap_intervals(from_gains(gains))
    for component in ("combined", "cumulative"):
        for layer in range(4):
            log, error = _log_product_and_error(gains["attn"], gains["mlp"], layer, component == "cumulative")
            expected = np.exp(log + np.array([-1, 1]) * 3.1824 * error)  # t(3) from the table
            # Central differences of a log at 1e-7 relative steps (~1e-8); the table value's 5 digits.
            np.testing.assert_allclose(intervals.of(component)[layer], expected, rtol=1e-4)


def test_products_match_a_hand_written_studentized_bootstrap():
    # Resample prompts, studentize each resample's log product by its own delta-method error
    # (computed as above, by np.cov), and invert the quantiles; independent draws of 20,000.
    rng = np.random.default_rng(12)
    gains = correlated_gains(rng, n_prompts=10)
    ours = bootstrap_intervals(from_gains(gains), n_resamples=20_000, seed=0)
    for component in ("combined", "cumulative"):
        cumulative = component == "cumulative"
        for layer in (0, 1):
            log, error = _log_product_and_error(gains["attn"], gains["mlp"], layer, cumulative)
            draws = []
            for _ in range(20_000):
                index = rng.integers(0, 10, 10)
                if len(set(index)) == 1:
                    continue  # one prompt repeated: no error, an infinite statistic, beyond both tails
                star, star_error = _log_product_and_error(gains["attn"][index], gains["mlp"][index], layer, cumulative)
                draws.append((star - log) / star_error)
            low, high = np.quantile(draws, [0.025, 0.975])
            reference = np.exp([log - high * error, log - low * error])
            width = reference[1] - reference[0]
            # Two independent Monte Carlo runs. t* has a long lower tail (a resample that misses the
            # large prompts has a small se*): the upper bound moves by ~5% of the width (sd) between
            # runs of 20,000 on these gains; 0.15 is ~2 sd of a difference of two runs.
            assert np.all(np.abs(ours.of(component)[layer] - reference) <= 0.15 * width), (component, layer)


def test_t_intervals_cover_products_at_eight_prompts():
    # Known truth: E[attn] · E[mlp] per layer and its running product, for lognormal gains that
    # share a per-prompt factor. 600 sets of 8 prompts; binomial sd of a 95% rate over 600: 0.9%.
    rng = np.random.default_rng(21)
    sigma_shared, sigma = 0.25, 0.3
    mean_factor = np.exp((sigma_shared**2 + sigma**2) / 2)  # E[exp(shared + own)]
    attn_profile, mlp_profile = np.array([0.2, 0.5, 0.9]), np.array([1.5, 0.7, 3.0])
    truth = {"combined": attn_profile * mlp_profile * mean_factor**2}
    truth["cumulative"] = np.cumprod(truth["combined"])
    covered = {component: 0 for component in truth}
    for _ in range(600):
        shared = rng.normal(0, sigma_shared, (8, 1))
        gains = {
            "attn": attn_profile * np.exp(shared + rng.normal(0, sigma, (8, 3))),
            "mlp": mlp_profile * np.exp(shared + rng.normal(0, sigma, (8, 3))),
            "block": np.ones((8, 3)),
        }
        intervals = bootstrap_intervals(from_gains(gains))
        for component in covered:
            low, high = intervals.of(component).T
            covered[component] += np.mean((low <= truth[component]) & (truth[component] <= high))
    for component, hits in covered.items():
        assert 0.925 <= hits / 600 <= 0.975, (component, hits / 600)  # 95% ± ~2.5 binomial sd


# ---- a layer one prompt dominates ----------------------------------------------------------------
def test_a_prompt_far_from_the_others_dominates_its_layer():
    # Layer 1 of the MLP: seven prompts near 9, one at 184 (SmolLM2's MLP 11 without position 0).
    rng = np.random.default_rng(4)
    gains = {c: rng.normal(1.0, 0.05, (8, 3)) for c in ("attn", "mlp", "block")}
    gains["mlp"][:, 1] = rng.normal(9.0, 1.0, 8)
    gains["mlp"][5, 1] = 184.0
    flags = dominant_prompts(from_gains(gains))
    assert [(flag.component, flag.layer, flag.prompt) for flag in flags] == [("mlp", 1, 5)]
    flag = flags[0]
    others = np.delete(gains["mlp"][:, 1], 5)
    half = t_critical(0.95, 6) * others.std(ddof=1) / np.sqrt(7)
    np.testing.assert_allclose(
        [flag.gain_without, *flag.interval_without],
        [others.mean(), others.mean() - half, others.mean() + half],
        rtol=1e-8,
    )
    assert flag.gain == pytest.approx(gains["mlp"][:, 1].mean(), rel=1e-8)
    assert "MLP L1" in flag.describe() and "prompt 5 alone 184" in flag.describe()


def test_no_prompt_dominates_equal_or_spread_prompts():
    assert dominant_prompts(from_gains({c: constant_layers([0.5, 2.0], 8) for c in ("attn", "mlp", "block")})) == []
    # One prompt at 1.3 among prompts of sd 0.1: far, but within what the others' spread allows.
    gains = {c: np.array([[0.9], [1.0], [1.1], [1.0], [0.95], [1.05], [1.3]]) for c in ("attn", "mlp", "block")}
    assert dominant_prompts(from_gains(gains)) == []
    two = {c: np.array([[1.0], [50.0]]) for c in ("attn", "mlp", "block")}
    assert dominant_prompts(from_gains(two)) == []  # no interval over one other prompt


def test_bad_requests_are_funnel_errors():
    result = funnel_like()
    with pytest.raises(FunnelError, match="at least 2 prompts"):
        bootstrap_intervals(result.subset([0]))
    with pytest.raises(FunnelError, match="at least one resample"):
        bootstrap_intervals(result, n_resamples=0)
    with pytest.raises(FunnelError, match="between 0 and 1"):
        bootstrap_intervals(result, confidence=95)
    with pytest.raises(FunnelError, match="unknown interval method"):
        bootstrap_intervals(result, method="bca")
    good = bootstrap_intervals(result, n_resamples=100)
    with pytest.raises(FunnelError, match="lower bound above"):
        Intervals(
            0.95,
            100,
            0,
            attn=good.attn[:, ::-1],
            mlp=good.mlp,
            combined=good.combined,
            block=good.block,
            cumulative=good.cumulative,
        )
    with pytest.raises(ValueError, match="intervals cover"):
        funnel_like(n_layers=3).with_intervals(good)  # intervals of 8 layers on a 3-layer result


# ---- the robust verdict -------------------------------------------------------------------------
def test_robust_verdict_equals_point_verdict_without_variation():
    # Identical prompts: every interval collapses on the point estimate, so both tests agree.
    gains = {
        "attn": constant_layers([0.1, 0.2, 0.3, 0.4]),
        "mlp": constant_layers([0.4, 0.5, 0.6, 3.0]),
        "block": constant_layers([1.1, 1.1, 1.1, 1.2]),
    }
    result = from_gains(gains).with_intervals(n_resamples=200)
    robust, point = robust_funnel_test(result), funnel_test(result)
    assert robust.to_dict()["funnel_confirmed"] is True
    assert {k: v for k, v in robust.to_dict().items() if k != "counts"} == point.to_dict()
    assert robust.counts["attention"] == {"n_contracting": 4, "n_expanding": 0, "n_undetermined": 0}
    assert robust.counts["block"] == {"n_contracting": 0, "n_expanding": 4, "n_undetermined": 0}


def test_robust_verdict_counts_straddling_layers_as_neither():
    # Hand-placed intervals: layer 1's attention straddles 1 although its point estimate is 0.9.
    result = from_gains(
        {
            "attn": constant_layers([0.1, 0.9, 0.3]),
            "mlp": constant_layers([0.5, 0.5, 2.0]),
            "block": constant_layers([1.0, 1.0, 1.0]),
        }
    )
    intervals = Intervals(
        confidence=0.95,
        n_resamples=1,
        seed=0,
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
    assert (block["confidence"], block["n_resamples"], block["seed"], block["method"]) == (0.95, 300, 9, "t")
    assert block["method_description"].startswith("t interval")
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


def test_files_from_before_the_t_intervals_read_as_percentile(tmp_path):
    data = funnel_like().with_intervals(n_resamples=50, method="percentile").to_dict()
    data["intervals"]["method"] = "percentile bootstrap over prompts"  # what older files say
    del data["intervals"]["method_description"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    assert GainResult.load(path).intervals.method == "percentile"


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
    assert (
        "ROBUST TEST: 95% t intervals over 8 prompts (products: studentized bootstrap, 200 resamples, seed 2)" in text
    )
    assert ">>> FUNNEL MODEL CONFIRMED (robust): " in text
    text = format_analysis(result.with_intervals(n_resamples=200, seed=2, method="percentile"))
    assert "ROBUST TEST: 95% percentile-bootstrap intervals over 8 prompts (200 resamples, seed 2)" in text


def test_robust_verdict_over_few_prompts_carries_a_caveat():
    from funnel_tl.analysis.report import FEW_PROMPTS

    few = funnel_like().with_intervals(n_resamples=100)  # the seed set's 8 prompts
    assert few.n_prompts < FEW_PROMPTS
    # What is true of t intervals over 8 prompts: they cover, but are wide; and where more are.
    text = format_analysis(few)
    assert "few prompts: t intervals cover what they claim" in text and "8 make them wide" in text
    assert "--prompts varied" in text
    percentile = format_analysis(funnel_like().with_intervals(n_resamples=100, method="percentile"))
    assert "few prompts: a percentile bootstrap over 8 runs narrow" in percentile
    many = funnel_like(n_prompts=FEW_PROMPTS).with_intervals(n_resamples=100)
    assert "few prompts" not in format_analysis(many)


def test_dominated_layers_are_printed_and_written():
    gains = {c: np.random.default_rng(1).normal(1.0, 0.05, (8, 2)) for c in ("attn", "mlp", "block")}
    gains["mlp"][3, 0] = 40.0
    result = from_gains(gains).with_intervals()
    text = format_analysis(result)
    assert "One prompt dominates 1 layer gain(s)" in text and "MLP L0" in text and "prompt 3 alone 40" in text
    [flag] = result.to_dict()["dominant_prompts"]
    assert (flag["component"], flag["layer"], flag["prompt"], flag["prompt_gain"]) == ("mlp", 0, 3, pytest.approx(40.0))
    assert "One prompt dominates" not in format_analysis(funnel_like().with_intervals())


def test_seed_rule_that_cannot_fail_is_flagged_and_the_robust_rule_scales_with_depth():
    # nano-2l's case: both MLP gains above 3. The seed's literal rule (>= n - 3 contracting) passes
    # at two layers whatever the gains; the analysis says so, and the robust rule fails it.
    result = from_gains(
        {"attn": constant_layers([0.2, 0.3]), "mlp": constant_layers([8.0, 3.5]), "block": constant_layers([1.5, 1.2])}
    ).with_intervals(n_resamples=100)
    assert funnel_test(result).mlp_mostly_contracts  # kept literally: reproduction matters
    assert not robust_funnel_test(result).mlp_mostly_contracts  # 0 of 2 contract; 1 may fail
    text = format_analysis(result)
    assert "2. MLP mostly contracts: True (0/2)  [cannot fail at 2 layers: the seed allows 3 expanding]" in text
    assert "depth-scaled: at most 1 of 2 may fail" in text
    # At 24 layers the depth-scaled rule is the seed's: three may fail, four may not.
    mlp = [0.5] * 20 + [2.0] * 4
    deep = from_gains(
        {"attn": constant_layers([0.3] * 24), "mlp": constant_layers(mlp), "block": constant_layers([1.1] * 24)}
    ).with_intervals(n_resamples=100)
    assert not funnel_test(deep).mlp_mostly_contracts and not robust_funnel_test(deep).mlp_mostly_contracts
    assert "cannot fail" not in format_analysis(deep)
    mlp = [0.5] * 21 + [2.0] * 3
    deep = from_gains(
        {"attn": constant_layers([0.3] * 24), "mlp": constant_layers(mlp), "block": constant_layers([1.1] * 24)}
    ).with_intervals(n_resamples=100)
    assert funnel_test(deep).mlp_mostly_contracts and robust_funnel_test(deep).mlp_mostly_contracts


def test_depth_scaled_allowance_at_every_boundary():
    """max(1, floor(n / 8)), written out by hand: one eighth of the layers (the seed's 3 of 24),
    at least one; the boundaries 8k - 1 / 8k are where a float ratio could round the wrong way."""
    from funnel_tl.analysis.criteria import mlp_expanding_allowed

    #          1-15 layers   16-23       24-31       32-39       40-47      48
    expected = [1] * 15 + [2] * 8 + [3] * 8 + [4] * 8 + [5] * 8 + [6]
    assert [mlp_expanding_allowed(n) for n in range(1, 49)] == expected
    assert [mlp_expanding_allowed(n) for n in (0, 79, 80, 95, 96, 119, 120, 1000)] == [1, 9, 10, 11, 12, 14, 15, 125]


def test_cross_model_table_compares_max_with_max_and_last_with_last():
    # Our MLP maximum (8.0) is in layer 0, our last layer's gain 1.5: each row must pair like with like.
    result = from_gains(
        {
            "attn": constant_layers([0.2, 0.3, 0.4]),
            "mlp": constant_layers([8.0, 0.5, 1.5]),
            "block": constant_layers([1.5, 1.2, 1.1]),
        }
    )
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

    from funnel_tl.plots.panels import plot_funnel

    gains = {"attn": np.full((2, 3), 0.5), "mlp": np.full((2, 3), 0.9), "block": np.full((2, 3), 1.1)}
    one, four = (replace(from_gains(gains), drop_first=n) for n in (1, 4))
    assert "first position dropped" in format_analysis(one) and "first 1 positions" not in format_analysis(one)
    assert "first position dropped" in plot_funnel(one).layout.title.text
    assert "first 4 positions dropped" in format_analysis(four)
