"""Sweeps over models and checkpoints: equal to single runs, resumable, fault tolerant, ordered.

The reference for every number is a single ``load_model`` + ``measure_gains`` run on the same
checkpoint (itself tested against the seed's HF-hook method in the core tests), and for one model
the seed's method directly. Resume is proven by counting ``load_model`` calls.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from funnel_tl import FunnelError, GainResult, load_model, measure_gains
from funnel_tl.analysis.funnel import summarize
from funnel_tl.cli.entry import main
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.models.identity import local_checkpoints
from funnel_tl.prompts.sets import SEED_PROMPTS, prompts_sha256
from funnel_tl.sweep.one_target import SweepOptions
from funnel_tl.testing.reference import reference_gains, seed_reference
from funnel_tl.testing.toy import build_checkpoint

# The sweep's modules, patched where each name is looked up (`funnel_tl.compare` is the function).
sweep_package = importlib.import_module("funnel_tl.sweep")
sweep_rows = importlib.import_module("funnel_tl.sweep.rows")
sweep_one_target = importlib.import_module("funnel_tl.sweep.one_target")
sweep_plan = importlib.import_module("funnel_tl.sweep.plan")
sweep_torchrun = importlib.import_module("funnel_tl.sweep.torchrun")
loading = importlib.import_module("funnel_tl.models.loading")
compare = sweep_package.compare

# The default batch size of `run`: the same batches as a single run, so the same float ops.
OPTIONS = dict(device="cpu", dtype="float32", batch_size=8, progress=False)
SWEPT = ("neox-parallel", "gpt2", "llama-gqa")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, checkpoints):
    """One sweep over three architectures, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("sweep")
    comparison = compare([str(checkpoints[arch]) for arch in SWEPT], out=out, **OPTIONS)
    return comparison, out


@pytest.fixture(scope="module")
def training_run(tmp_path_factory, tokenizer):
    """A local folder of three "training checkpoints" whose names sort wrongly as strings."""
    root = tmp_path_factory.mktemp("training_run")
    for step, seed in ((0, 10), (500, 11), (10000, 12)):
        build_checkpoint(root / f"step{step}", "neox-parallel", tokenizer=tokenizer, seed=seed, n_layers=3)
    return root


def single_run(folder, **kwargs) -> GainResult:
    model = load_model(str(folder), device="cpu", dtype="float32")
    return measure_gains(
        model, "seed", batch_size=kwargs.get("batch_size", 8), progress=False, drop_first=kwargs.get("drop_first", 0)
    )


# ---- numbers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", SWEPT)
def test_sweep_equals_single_runs_exactly(sweep, checkpoints, arch):
    comparison, out = sweep
    label = str(checkpoints[arch])
    single = single_run(checkpoints[arch])
    swept = comparison.results[label]
    on_disk = GainResult.load(out / comparison.row(label).slug / "results.json")
    for result in (swept, on_disk):  # same batches, same float32 ops on the same CPU: identical
        np.testing.assert_array_equal(result.n_tokens, single.n_tokens)
        for component in ("attn", "mlp", "block"):
            np.testing.assert_array_equal(result.out_sums[component], single.out_sums[component])
            np.testing.assert_array_equal(result.in_sums[component], single.in_sums[component])
    row = comparison.row(label)
    attn, mlp, combined = summarize(single.attn_gains), summarize(single.mlp_gains), summarize(single.combined_gains)
    assert (row.n_layers, row.hidden_dim) == (single.n_layers, single.d_model)
    assert (row.attn_min_layer, row.attn_max_layer, row.mlp_min_layer, row.mlp_max_layer, row.combined_max_layer) == (
        attn.min_layer,
        attn.max_layer,
        mlp.min_layer,
        mlp.max_layer,
        combined.max_layer,
    )
    assert [
        row.attn_min_gain,
        row.attn_max_gain,
        row.mlp_min_gain,
        row.mlp_max_gain,
        row.last_layer_mlp_gain,
        row.combined_max_gain,
    ] == [attn.min_gain, attn.max_gain, mlp.min_gain, mlp.max_gain, float(single.mlp_gains[-1]), combined.max_gain]
    assert row.funnel_confirmed == bool(
        json.loads((out / row.slug / "results.json").read_text())["funnel_test"]["funnel_confirmed"]
    )
    # The checkpoint's own count, read from its file (tied embeddings are stored once there), not
    # the bridge's parameters(), which hold the fused QKV and TransformerLens' split copies too.
    assert row.n_parameters == checkpoint_parameters(checkpoints[arch])
    if arch != "llama-gqa":  # fused QKV (NeoX, GPT-2): the bridge's own sum counts the split copies too
        model = load_model(str(checkpoints[arch]), device="cpu", dtype="float32")
        assert row.n_parameters < sum(p.numel() for p in model.parameters())


def checkpoint_parameters(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "model.safetensors"), framework="pt") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())


def test_sweep_matches_the_seed_method(sweep, checkpoints, hf_model, tokenizer):
    comparison, _ = sweep
    swept = comparison.results[str(checkpoints["gpt2"])]
    reference = reference_gains(seed_reference(hf_model("gpt2"), tokenizer, SEED_PROMPTS), "seed")
    for component in ("attn", "mlp", "block"):
        # The bridge equals HF to ~1e-7; batching and padding add float32 reordering: 1e-4 relative.
        np.testing.assert_allclose(swept.gains(component), reference[component], rtol=1e-4)


def test_compare_json_has_one_row_per_model(sweep, checkpoints):
    comparison, out = sweep
    data = json.loads((out / "compare.json").read_text())
    assert [row["model"] for row in data["models"]] == [str(checkpoints[arch]) for arch in SWEPT]
    assert data["n_failed"] == 0 and data["definition"] == "seed" and data["dtype"] == "float32"
    for row in data["models"]:
        assert row["status"] == "ok" and row["error"] is None
        assert row["seconds"] > 0 and row["peak_memory_bytes"] > 0 and row["memory_kind"]
        results = json.loads((out / row["slug"] / "results.json").read_text())
        robust = results.get("robust_funnel_test", {}).get("funnel_confirmed")  # only where intervals are drawn
        assert row["robust_funnel_confirmed"] == robust and row["has_intervals"] == ("intervals" in results)
    # The parallel NeoX checkpoint is recorded as such; GPT-2 and Llama are serial.
    assert [row["parallel_blocks"] for row in data["models"]] == [True, False, False]


def test_time_column_is_the_measurement_alone(checkpoints, tmp_path, monkeypatch):
    """A slow load and the first pass's one-time costs land in load_seconds and seconds, not in
    measure_seconds: the time the table shows compares models. A fake clock stands in for the wall
    clock (only the stubs below advance it), so the split is exact and no timing under load can flake."""
    import time
    import types

    clock = [100.0]
    monkeypatch.setattr(
        sweep_one_target, "time", types.SimpleNamespace(perf_counter=lambda: clock[0], monotonic=time.monotonic)
    )

    def advance(seconds):
        clock[0] += seconds

    real_load, real_measure, passes = sweep_one_target.load_model, sweep_one_target.measure_gains, []
    monkeypatch.setattr(sweep_one_target, "load_model", lambda *a, **k: (advance(10.0), real_load(*a, **k))[1])

    def timed_pass(model, prompts, **kwargs):
        passes.append(list(prompts))
        advance(5.0 if len(passes) == 1 else 0.25)  # the warm-up's one-time costs, then the measurement
        return real_measure(model, prompts, **kwargs)

    monkeypatch.setattr(sweep_one_target, "measure_gains", timed_pass)
    row = compare([str(checkpoints["gpt2"])], "seed", out=tmp_path, **OPTIONS).rows[0]
    assert passes[0] == [sweep_one_target.WARM_UP_PROMPT] and len(passes) == 2  # warm-up first, then the prompts
    assert (row.load_seconds, row.measure_seconds, row.seconds) == (10.0, 0.25, 15.25)  # the whole, warm-up included
    from funnel_tl.plots.compare_page import format_seconds, table_html

    sweep = sweep_package.Comparison.load(tmp_path)  # the page and the terminal show the measurement, load aside
    # As the page formats them (three significant digits: "10.0 s", "0.25 s"), not as a fixed .2f.
    load, measure = (format_seconds(seconds) for seconds in (row.load_seconds, row.measure_seconds))
    assert f'title="load {load}">{measure.replace(" ", "&nbsp;")}</td>' in table_html(sweep)
    assert sweep.format_table().splitlines()[0].endswith("measure")


def test_terminal_table_stays_in_columns_with_large_gains_and_layers(sweep):
    """A combined gain of 1000 or more (or a layer 100) once pushed every later column to the right."""
    comparison, _ = sweep
    first, second, third = comparison.rows
    wide = replace(
        comparison,
        rows=(
            first,
            replace(second, combined_max_gain=12345.678, combined_max_layer=11),
            replace(third, status="failed", error="boom"),
        ),
    )
    header, rule, *lines = wide.format_table().splitlines()
    assert len(rule) == len(header) and lines[-1].endswith("FAILED: boom")
    titles = ("layers", "funnel", "robust", "attn min", "mlp max", "last mlp", "comb max", "measure")
    ends = [header.index(title) + len(title) for title in titles]  # every column is right-aligned to its title
    for line in lines[:2]:
        assert len(line) == len(header), line
        # No cell runs over into the next column: a space at every column end, text in every column.
        assert all(line[end] == " " for end in ends[:-1]), line
        assert all(line[start:end].strip() for start, end in zip([34, *ends[:-1]], ends, strict=True)), line
    assert "12345.678 L11" in lines[1] and f"{first.combined_max_gain:.3f} L{first.combined_max_layer} " in lines[0]
    comb = slice(ends[-3], ends[-2])
    assert lines[0][comb].index(".") == lines[1][comb].index(".")  # the gains line up at the decimal point


def test_row_verdicts_come_from_the_sums_not_the_file(sweep, checkpoints):
    """A hand-edited (or older-rule) results file cannot make a row contradict its own gains."""
    from funnel_tl.analysis.funnel import funnel_test
    from funnel_tl.analysis.stats import robust_funnel_test

    comparison, out = sweep
    label = str(checkpoints["gpt2"])
    data = json.loads((out / comparison.row(label).slug / "results.json").read_text())
    result = GainResult.from_dict(data).with_intervals(n_resamples=200, seed=0)
    seed_verdict, robust_verdict = funnel_test(result).funnel_confirmed, robust_funnel_test(result).funnel_confirmed
    target = sweep_plan.Target(label, label, label)
    data["funnel_test"]["funnel_confirmed"] = not seed_verdict  # what the edited file claims
    data["robust_funnel_test"] = {"funnel_confirmed": not robust_verdict}
    row = sweep_rows.row_from_results(target, data, result, resumed=True)
    assert row.funnel_confirmed is seed_verdict and row.robust_funnel_confirmed is robust_verdict
    assert row.has_intervals
    data["intervals"] = {"stands": "in"}  # a file claiming intervals the result does not carry
    row = sweep_rows.row_from_results(target, data, GainResult.from_dict({**data, "intervals": None}), resumed=True)
    assert row.robust_funnel_confirmed is None and not row.has_intervals


@pytest.mark.skipif(not hasattr(GainResult, "with_intervals"), reason="bootstrap intervals not in this funnel_tl")
def test_intervals_are_drawn_and_added_on_resume_without_a_model(checkpoints, tmp_path, load_calls):
    from funnel_tl.analysis.stats import robust_funnel_test

    label = str(checkpoints["gpt2"])
    compare([label], out=tmp_path, bootstrap=0, **OPTIONS)
    path = tmp_path / sweep_plan.plan_targets([label])[0].slug / "results.json"
    assert "intervals" not in json.loads(path.read_text())
    load_calls.clear()
    comparison = compare([label], out=tmp_path, bootstrap=200, bootstrap_seed=3, **OPTIONS)
    assert load_calls == []  # intervals come from the stored per-prompt sums
    saved = GainResult.load(path)
    assert (saved.intervals.n_resamples, saved.intervals.seed) == (200, 3)
    expected = robust_funnel_test(GainResult.load(path).with_intervals(n_resamples=200, seed=3)).funnel_confirmed
    assert comparison.rows[0].robust_funnel_confirmed == expected and comparison.rows[0].has_intervals
    error_bars = comparison.figure().data[1].error_y  # the MLP panel
    np.testing.assert_allclose(error_bars.array, saved.intervals.mlp[:, 1] - saved.mlp_gains)


# ---- resume and force --------------------------------------------------------------------------
def test_second_call_recomputes_nothing(sweep, checkpoints, load_calls):
    comparison, out = sweep
    before = {p: p.read_bytes() for p in out.glob("*/results.json")}
    again = compare([str(checkpoints[arch]) for arch in SWEPT], out=out, **OPTIONS)
    assert load_calls == []
    assert {p: p.read_bytes() for p in out.glob("*/results.json")} == before
    assert all(row.resumed for row in again.rows)
    # Resumed rows carry the first run's numbers, time and memory unchanged.
    assert [replace(row, resumed=False) for row in again.rows] == [
        replace(row, resumed=False) for row in comparison.rows
    ]


def test_force_and_changed_settings_recompute(sweep, checkpoints, load_calls, tmp_path):
    import shutil

    _, out = sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    models = [str(checkpoints[arch]) for arch in SWEPT]
    compare(models[:2], out=copy, force=True, **OPTIONS)
    assert [source for source, _ in load_calls] == models[:2]
    # The table keeps the model this run did not name (tests/test_sweep_scale.py: never a row dropped).
    assert [row["model"] for row in json.loads((copy / "compare.json").read_text())["models"]] == models
    load_calls.clear()
    # Results files with no table (a table of other settings is refused): those measured otherwise, anew.
    for changed in (dict(drop_first=1), dict(prompts=SEED_PROMPTS[:4], drop_first=1)):  # drop_first, then prompts
        (copy / "compare.json").unlink()
        compare(models[:1], out=copy, **changed, **OPTIONS)
    compare(models[:1], SEED_PROMPTS[:4], out=copy, drop_first=1, **OPTIONS)  # same again: read back
    assert [source for source, _ in load_calls] == models[:1] * 2
    assert GainResult.load(copy / sweep_plan.plan_targets(models[:1])[0].slug / "results.json").n_prompts == 4


def test_a_replaced_results_file_is_named_with_what_changed(sweep, checkpoints, load_calls, tmp_path, capsys):
    """Another definition re-measures a finished model; the sweep says so, one line per model, naming
    the setting that changed, in the one-process sweep and in the sharded one (one rank here)."""
    import shutil

    from funnel_tl.measure.distributed import World

    _, out = sweep
    models = [str(checkpoints[arch]) for arch in SWEPT[:2]]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "compare.json").unlink()  # results files without their table (its settings would be refused)
    capsys.readouterr()
    compare(models, out=copy, definition="residual", **OPTIONS)
    err = capsys.readouterr().err
    assert [source for source, _ in load_calls] == models  # which models are measured: unchanged
    for target in sweep_plan.plan_targets(models):
        path = copy / target.slug / "results.json"
        line = f"{target.label}: replacing {path} (measured with definition=seed; this sweep asks definition=residual)"
        assert err.count(line) == 1, err
    compare(models, out=copy, definition="residual", **OPTIONS)  # the same again: read back, nothing said
    assert "replacing" not in capsys.readouterr().err

    sharded = tmp_path / "sharded"
    shutil.copytree(out, sharded)
    (sharded / "compare.json").unlink()
    load_calls.clear()
    targets = sweep_plan.plan_targets(models[:1])
    settings = dict(
        definition="seed",
        n_prompts=len(SEED_PROMPTS),
        prompts_sha256=prompts_sha256(list(SEED_PROMPTS)),
        drop_first=1,
        dtype="float32",
    )
    options = SweepOptions(
        measure=MeasureOptions(definition="seed", batch_size=8, drop_first=1),
        device="cpu",
        dtype="float32",
        bootstrap=0,
        bootstrap_seed=0,
        progress=False,
    )
    sweep_torchrun.sweep_sharded(targets, list(SEED_PROMPTS), sharded, settings, World(), force=False, options=options)
    err = capsys.readouterr().err
    path = sharded / targets[0].slug / "results.json"
    assert (
        err.count(f"{targets[0].label}: replacing {path} (measured with drop_first=0; this sweep asks drop_first=1)")
        == 1
    ), err
    assert [source for source, _ in load_calls] == models[:1]


def test_a_damaged_results_file_is_measured_again(sweep, checkpoints, load_calls, tmp_path):
    import shutil

    _, out = sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    label = str(checkpoints["gpt2"])
    path = copy / sweep_plan.plan_targets([label])[0].slug / "results.json"
    path.write_text(path.read_text()[:500])  # truncated, as a copy by hand might leave it
    compare([label], out=copy, **OPTIONS)
    assert [source for source, _ in load_calls] == [label]
    GainResult.load(path)  # complete again


def test_a_layer_subset_in_the_sweep_folder_is_measured_again(sweep, checkpoints, load_calls, tmp_path, capsys):
    """A `run --layers` result saved where the sweep keeps that model has its settings but not every
    layer: the sweep measures the model again rather than build a row on a subset."""
    import shutil

    _, out = sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    label = str(checkpoints["gpt2"])
    path = copy / sweep_plan.plan_targets([label])[0].slug / "results.json"
    measure_gains(load_model(label, device="cpu", dtype="float32"), "seed", batch_size=8, layers=[0]).save(path)
    load_calls.clear()
    capsys.readouterr()
    comparison = compare([label], out=copy, **OPTIONS)
    assert [source for source, _ in load_calls] == [label]
    assert comparison.results[label].all_layers
    assert f"{label}: replacing {path} (measured with layers=0; this sweep asks every layer)" in capsys.readouterr().err


# ---- faults ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, checkpoints, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("nan_model")
    model = AutoModelForCausalLM.from_pretrained(checkpoints["gpt2"])
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_failing_models_are_recorded_and_the_sweep_goes_on(checkpoints, nan_checkpoint, tmp_path, monkeypatch, capsys):
    good, other = str(checkpoints["neox-parallel"]), str(checkpoints["neox-serial"])
    # A folder that resolves (its config.json is there) but fails as it loads: a missing folder
    # is refused before the sweep starts (test_faults), this one is a failed row.
    missing = tmp_path / "no_weights"
    missing.mkdir()
    shutil.copy(Path(good) / "config.json", missing / "config.json")
    missing = str(missing)
    real = sweep_one_target.load_model

    def flaky(source, **kwargs):  # an unexpected error (not a FunnelError) from one model
        if source == other:
            raise RuntimeError("simulated crash\nsecond line of a long message")
        return real(source, **kwargs)

    monkeypatch.setattr(sweep_one_target, "load_model", flaky)
    out = tmp_path / "out"
    status = main(
        [
            "compare",
            "--models",
            good,
            missing,
            str(nan_checkpoint),
            other,
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--out",
            str(out),
        ]
    )
    assert status == 2
    data = json.loads((out / "compare.json").read_text())
    rows = {row["model"]: row for row in data["models"]}
    assert [row["status"] for row in data["models"]] == ["ok", "failed", "failed", "failed"]
    assert data["n_failed"] == 3
    assert "no weights" in rows[missing]["error"]
    assert "nan" in rows[str(nan_checkpoint)]["error"].lower()
    assert rows[other]["error"] == "RuntimeError: simulated crash"
    assert all("\n" not in row["error"] for row in data["models"] if row["error"])
    assert (out / rows[good]["slug"] / "results.json").is_file()
    assert not (out / rows[str(nan_checkpoint)]["slug"] / "results.json").exists()
    assert "3 of 4 models failed" in capsys.readouterr().err
    assert "failed: RuntimeError: simulated crash" in (out / "compare.html").read_text()
    assert "4 models, 3 failed" in (out / "compare.html").read_text()


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {repo!r})

# The results file of the victim model is killed half written: whatever writes it (json.dump or
# one write of the whole text) goes through a handle from os.fdopen on the temporary file.
class HalfThenKilled:
    def __init__(self, handle):
        self.handle = handle
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)
    def write(self, text):
        self.handle.write(text[: max(1, len(text) // 2)])  # half the file is on disk...
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # ...when the process is killed
    def __getattr__(self, name):
        return getattr(self.handle, name)

real_fdopen = os.fdopen
def fdopen(descriptor, *args, **kwargs):
    handle = real_fdopen(descriptor, *args, **kwargs)
    path = os.readlink(f"/proc/self/fd/{{descriptor}}")
    return HalfThenKilled(handle) if {victim_folder!r} in path and ".results.json." in path else handle
os.fdopen = fdopen

from funnel_tl import compare
compare({models!r}, out={out!r}, device="cpu", dtype="float32", progress=False)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the file being written through /proc")
def test_a_killed_run_leaves_no_partial_file(sweep, checkpoints, tmp_path, load_calls):
    first, second = str(checkpoints["neox-parallel"]), str(checkpoints["gpt2"])
    out = tmp_path / "out"
    slug_first, slug_second = (t.slug for t in sweep_plan.plan_targets([first, second]))
    script = KILL_SCRIPT.format(
        repo=str(REPO), victim_folder=str(out / slug_second), models=[first, second], out=str(out)
    )
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    GainResult.load(out / slug_first / "results.json")  # the model before the kill is complete
    assert not (out / slug_second / "results.json").exists()  # the one killed mid-write has no results.json
    leftovers = list((out / slug_second).glob(".*.tmp"))
    assert len(leftovers) == 1  # proof that the kill hit mid-write: the half-written temporary
    with pytest.raises(json.JSONDecodeError):
        json.loads(leftovers[0].read_text())
    assert json.loads((out / "compare.json").read_text())["n_models"] == 1  # the table so far

    resumed = compare([first, second], out=out, **OPTIONS)
    assert [source for source, _ in load_calls] == [second]  # only the unfinished model
    assert [row.resumed for row in resumed.rows] == [True, False]
    assert list((out / slug_second).glob(".*.tmp")) == []
    GainResult.load(out / slug_second / "results.json")
    # Killed half way and resumed equals uninterrupted: the shared sweep measured the same models.
    uninterrupted, _ = sweep
    for row in resumed.rows:
        expected = uninterrupted.results[row.model]
        for component in ("attn", "mlp", "block"):
            np.testing.assert_array_equal(resumed.results[row.model].out_sums[component], expected.out_sums[component])
        np.testing.assert_array_equal(resumed.results[row.model].intervals.mlp, expected.intervals.mlp)
        same = {"resumed", "seconds", "load_seconds", "measure_seconds", "peak_memory_bytes"}
        assert {k: v for k, v in row.to_dict().items() if k not in same} == {
            k: v for k, v in uninterrupted.row(row.model).to_dict().items() if k not in same
        }


def test_interrupt_mid_model_leaves_no_partial_file(checkpoints, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_one_target, "measure_gains", interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C stops the sweep; it is not a model failure
        compare([str(checkpoints["gpt2"])], out=tmp_path, **OPTIONS)
    assert list(tmp_path.rglob("results.json")) == [] and list(tmp_path.rglob("*.tmp")) == []


def test_bad_settings_fail_before_any_model_loads(checkpoints, tmp_path, load_calls):
    models = [str(checkpoints["gpt2"]), str(checkpoints["llama-gqa"])]
    for bad, message in (
        (dict(definition="resid"), "unknown definition"),
        (dict(batch_size=0), "batch size"),
        (dict(drop_first=-1), "drop_first"),
        (dict(bootstrap=-5), "bootstrap"),
    ):
        with pytest.raises(FunnelError, match=message):
            compare(models, out=tmp_path, **{**OPTIONS, **bad})
    assert load_calls == [] and not (tmp_path / "compare.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sweep_frees_every_model_even_one_out_of_memory(checkpoints, tmp_path, monkeypatch):
    first, hungry, last = (str(checkpoints[arch]) for arch in ("neox-parallel", "gpt2", "llama-gqa"))
    real = sweep_one_target.measure_gains

    def measure(model, *args, **kwargs):
        if model.funnel_name == hungry:  # a real CUDA out-of-memory error with the model on the GPU
            torch.empty(1 << 50, dtype=torch.uint8, device="cuda")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(sweep_one_target, "measure_gains", measure)
    # CUDA libraries keep workspaces from the caching allocator once first used (cuBLAS: 32 MiB,
    # then 1 MiB more for another kernel path, measured on an H200): a warm-up sweep of the same
    # models takes them, so the baseline holds everything but what a model might leave behind.
    compare([first, last], out=tmp_path / "warm-up", device="cuda", dtype="float16", progress=False)
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    comparison = compare([first, hungry, last], out=tmp_path, device="cuda", dtype="float16", progress=False)
    assert [row.status for row in comparison.rows] == ["ok", "failed", "ok"]
    assert comparison.rows[1].error.startswith("out of GPU memory")
    assert comparison.rows[0].memory_kind == "cuda_max_allocated" and comparison.rows[0].peak_memory_bytes > 0
    assert torch.cuda.memory_allocated() == baseline  # nothing of any model, the failed one included, stays


# ---- checkpoints ---------------------------------------------------------------------------------
def test_local_checkpoints_are_swept_in_step_order(training_run, tmp_path, load_calls):
    comparison = compare([str(training_run)], checkpoints="all", out=tmp_path, **OPTIONS)
    assert [row.step for row in comparison.rows] == [0, 500, 10000]  # not step0, step10000, step500
    assert [row.model for row in comparison.rows] == [f"{training_run}@step{s}" for s in (0, 500, 10000)]
    assert [Path(source).name for source, _ in load_calls] == ["step0", "step500", "step10000"]
    assert all(revision is None for _, revision in load_calls)  # local folders load by path
    # Each checkpoint's results name the checkpoint, and hold that checkpoint's numbers.
    for row in comparison.rows:
        assert GainResult.load(tmp_path / row.slug / "results.json").model == row.model
    single = single_run(training_run / "step500")
    np.testing.assert_array_equal(comparison.results[f"{training_run}@step500"].out_sums["mlp"], single.out_sums["mlp"])
    figure = comparison.training_figure()
    # 3 layers × attn, mlp; customdata rows are [step, interval low, interval high]
    assert [list(np.asarray(trace.customdata)[:, 0]) for trace in figure.data] == [[0, 500, 10000]] * 6
    assert "checkpoints" in figure.layout.title.text and "across models" not in figure.layout.title.text
    lows = [comparison.results[r.model].intervals.mlp[0, 0] for r in comparison.rows]
    np.testing.assert_allclose(np.asarray(figure.data[3].y) - figure.data[3].error_y.arrayminus, lows)
    assert "across training checkpoints" in comparison.figure().layout.title.text
    page = (tmp_path / "compare.html").read_text()
    assert "Funnel Model across checkpoints" in page
    assert "3 checkpoints, 0 failed" in page  # counted as what they are, as the title names them
    layer_0_mlp = figure.data[3].y
    np.testing.assert_array_equal(layer_0_mlp, [comparison.results[r.model].mlp_gains[0] for r in comparison.rows])


def test_a_local_runs_checkpoint_loads_by_revision(training_run, tmp_path, capsys):
    """``revision="step500"`` of a training run's folder is its step500/ subfolder, named as
    compare --checkpoints names it; the CLI's --revision takes it too."""
    direct = single_run(training_run / "step500")
    for revision in ("step500", "500", "checkpoint-500"):
        model = load_model(str(training_run), revision=revision, device="cpu", dtype="float32")
        result = measure_gains(model, "seed", batch_size=8, progress=False)
        assert result.model == f"{training_run}@step500", revision
        np.testing.assert_array_equal(result.out_sums["mlp"], direct.out_sums["mlp"])
    with pytest.raises(FunnelError, match="has no checkpoint 'step7': it has steps 0, 500, 10000"):
        load_model(str(training_run), revision="step7")
    assert main(["run", "--model", str(training_run), "--revision", "step500", "--out", str(tmp_path / "o")]) == 0
    assert GainResult.load(tmp_path / "o" / "results.json").model == f"{training_run}@step500"
    capsys.readouterr()


def test_checkpoint_selection(training_run):
    plan = sweep_plan.plan_targets([str(training_run)], checkpoints=["step10000", 0])
    assert [t.step for t in plan] == [0, 10000]
    with pytest.raises(FunnelError, match="no checkpoint at step 7: it has steps 0, 500, 10000"):
        sweep_plan.plan_targets([str(training_run)], checkpoints=[7])
    with pytest.raises(FunnelError, match="add --checkpoints all"):
        sweep_plan.plan_targets([str(training_run)])
    with pytest.raises(FunnelError, match="either 'all' or a list"):
        sweep_plan.parse_steps(["all", "5"])
    with pytest.raises(FunnelError, match="bad checkpoint"):
        sweep_plan.parse_steps(["latest"])


def test_hf_trainer_checkpoint_folders(tmp_path, tokenizer):
    for step in (20, 3):
        build_checkpoint(tmp_path / f"checkpoint-{step}", "gpt2", tokenizer=tokenizer, n_layers=1)
    (tmp_path / "checkpoint-9").mkdir()  # no config.json: not a checkpoint
    assert list(local_checkpoints(tmp_path)) == [3, 20]


def test_hub_checkpoints_are_pythia_revisions():
    plan = sweep_plan.plan_targets(["EleutherAI/pythia-70m"], checkpoints="all")
    steps = [t.step for t in plan]
    assert len(plan) == 154 and steps == sorted(steps)  # Pythia publishes 154 checkpoints
    assert steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000] and steps[-1] == 143000
    assert {(t.source, t.revision) for t in plan[:2]} == {
        ("EleutherAI/pythia-70m", "step0"),
        ("EleutherAI/pythia-70m", "step1"),
    }
    with pytest.raises(FunnelError, match="name the steps"):
        sweep_plan.plan_targets(["gpt2"], checkpoints="all")


def test_bundled_checkpoints_load_by_revision(training_run, tmp_path, monkeypatch):
    """A bundled model's checkpoints go through load_model(name, revision="step<N>"), in step order."""
    shipped = {10000: training_run / "step10000", 0: training_run / "step0", 500: training_run / "step500"}
    # Patched where the plan lists them and where it resolves each target before the sweep starts.
    for module in (sweep_plan, loading):
        monkeypatch.setattr(module, "bundled_models", lambda: {"nano-test": training_run / "step10000"})
        monkeypatch.setattr(module, "bundled_checkpoints", lambda name: dict(shipped))
    calls = []

    def fake_load(source, revision=None, **kwargs):  # stands in for the bundled loader
        calls.append((source, revision))
        return load_model(str(shipped[int(revision.removeprefix("step"))]), **kwargs)

    monkeypatch.setattr(sweep_one_target, "load_model", fake_load)
    comparison = compare(["nano-test"], checkpoints=[500, "step0"], out=tmp_path, **OPTIONS)
    assert calls == [("nano-test", "step0"), ("nano-test", "step500")]
    assert [row.model for row in comparison.rows] == ["nano-test@step0", "nano-test@step500"]
    assert [row.revision for row in comparison.rows] == ["step0", "step500"]


def test_bundled_training_checkpoints(tmp_path, load_calls):
    from funnel_tl import bundled_models
    from funnel_tl.models.loading import bundled_checkpoints

    with_checkpoints = [name for name in bundled_models() if bundled_checkpoints(name)]
    if not with_checkpoints:
        pytest.skip("this copy of funnel_tl ships no bundled training checkpoints")
    name = with_checkpoints[0]
    steps = sorted(bundled_checkpoints(name))
    assert len(steps) >= 3 and [f"step{s}" for s in steps] != sorted(f"step{s}" for s in steps), (
        "pick checkpoints whose string order differs from their step order, or this proves nothing"
    )
    comparison = compare([name], checkpoints="all", out=tmp_path, **OPTIONS)
    assert [row.step for row in comparison.rows] == steps
    assert load_calls == [(name, f"step{step}") for step in steps]
    single = measure_gains(
        load_model(name, revision=f"step{steps[1]}", device="cpu", dtype="float32"), "seed", progress=False
    )
    swept = comparison.results[f"{name}@step{steps[1]}"]
    np.testing.assert_array_equal(swept.out_sums["mlp"], single.out_sums["mlp"])
    np.testing.assert_array_equal(swept.in_sums["attn"], single.in_sums["attn"])


def test_pythia_suite_preset():
    assert sweep_plan.expand_models(["pythia-suite"]) == [
        "EleutherAI/pythia-70m",
        "EleutherAI/pythia-160m",
        "EleutherAI/pythia-410m",
        "EleutherAI/pythia-1b",
        "EleutherAI/pythia-1.4b",
        "EleutherAI/pythia-2.8b",
        "EleutherAI/pythia-6.9b",
        "EleutherAI/pythia-12b",
    ]


def test_names_that_collide_are_refused(checkpoints):
    with pytest.raises(FunnelError, match="named twice"):
        sweep_plan.plan_targets([str(checkpoints["gpt2"])] * 2)
    with pytest.raises(FunnelError, match="would share the folder"):
        sweep_plan.plan_targets(["org/model", "org__model"])


# ---- figures and files -------------------------------------------------------------------------
def test_figures(sweep):
    comparison, _ = sweep
    figure = comparison.figure()
    assert isinstance(figure, go.Figure)
    assert len(figure.data) == 3 * len(SWEPT)  # attention, MLP, block panel per model
    for trace in figure.data:
        n = len(trace.y)
        np.testing.assert_allclose(trace.x, np.arange(n) / (n - 1))  # the seed's normalized depth
    heatmap = comparison.heatmap("mlp")
    z = np.asarray(heatmap.data[0].z)
    assert z.shape == (len(SWEPT), 2)  # the toy models have 2 layers each
    expected = [np.log10(comparison.results[row.model].mlp_gains) for row in comparison.rows]
    np.testing.assert_allclose(z, expected)


def test_heatmap_maps_each_cell_to_the_layer_covering_it(checkpoints, tokenizer, tmp_path):
    deep = build_checkpoint(tmp_path / "deep", "gpt2", tokenizer=tokenizer, n_layers=3)
    comparison = compare([str(checkpoints["gpt2"]), str(deep)], out=tmp_path / "out", **OPTIONS)
    z = np.asarray(comparison.heatmap("attn").data[0].z)  # [model, column], 3 columns
    shallow = comparison.results[str(checkpoints["gpt2"])].attn_gains
    # Columns cover thirds of the network; a 2-layer model's layer 0 covers [0, ½), layer 1 [½, 1).
    np.testing.assert_allclose(z[0], np.log10([shallow[0], shallow[1], shallow[1]]))
    np.testing.assert_allclose(z[1], np.log10(comparison.results[str(deep)].attn_gains))


def test_html_shares_plotlyjs_and_load_round_trips(sweep, tmp_path):
    comparison, out = sweep
    page = (out / "compare.html").read_text()
    assert page.count("<div id=") >= 3 and "Plotly.newPlot" in page
    # plotly.js from one shared file beside the page: offline, and 4.8 MB once per tree, not per page.
    assert re.findall(r'<script src="([^"]+)"', page) == ["plotly.min.js"]
    assert "plotly.js v" in (out / "plotly.min.js").read_text()[:500]
    alone = sweep_package.Comparison.load(out).save_html(tmp_path, self_contained=True).read_text()
    assert "<script src" not in alone and "plotly.js v" in alone
    assert list(out.glob(".*.tmp")) == []
    loaded = sweep_package.Comparison.load(out)
    # Other tests resume this sweep, which marks its rows resumed; everything else must be equal.
    assert [replace(row, resumed=False) for row in loaded.rows] == [
        replace(row, resumed=False) for row in comparison.rows
    ]
    for label, result in comparison.results.items():
        np.testing.assert_array_equal(loaded.results[label].out_sums["attn"], result.out_sums["attn"])


# ---- command line ------------------------------------------------------------------------------
def test_cli_end_to_end_equals_single_runs_and_resumes(checkpoints, tmp_path, load_calls, capsys):
    a, b = str(checkpoints["neox-parallel"]), str(checkpoints["llama-gqa"])
    argv = [
        "compare",
        "--models",
        a,
        b,
        "--prompts",
        "seed",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--out",
        str(tmp_path / "cmp"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "compare.json" in printed and "compare.html" in printed and "FAILED" not in printed
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["models"]
    for folder, row in zip((a, b), rows, strict=True):
        assert (
            main(
                [
                    "run",
                    "--model",
                    folder,
                    "--device",
                    "cpu",
                    "--dtype",
                    "float32",
                    "--out",
                    str(tmp_path / "single" / row["slug"]),
                ]
            )
            == 0
        )
        single = json.loads((tmp_path / "single" / row["slug"] / "results.json").read_text())
        swept = json.loads((tmp_path / "cmp" / row["slug"] / "results.json").read_text())
        for key in ("attention", "mlp", "combined", "block", "funnel_test", "per_prompt", "prompts"):
            assert swept[key] == single[key], key  # same batch size, same ops: identical
        assert row["last_layer_mlp_gain"] == single["mlp"]["last_layer_gain"]
        assert row["combined_max_gain"] == single["combined"]["max_gain"]
    load_calls.clear()
    assert main(argv) == 0  # again: nothing recomputed
    assert load_calls == []


def test_no_prompt_texts_keeps_numbers_and_fingerprint_and_resumes(checkpoints, tmp_path, load_calls):
    """--no-prompt-texts: no texts in any model's file, the same gains as a sweep that keeps them, and a
    rerun recognises the models by the prompts' sha256 (nothing loaded again)."""
    folder = str(checkpoints["gpt2"])
    kept, bare = tmp_path / "kept", tmp_path / "bare"
    base = [
        "compare",
        "--models",
        folder,
        "--prompts",
        "seed",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--bootstrap",
        "0",
    ]
    assert main([*base, "--out", str(kept)]) == 0
    argv = [*base, "--no-prompt-texts", "--out", str(bare)]
    assert main(argv) == 0
    slug = json.loads((bare / "compare.json").read_text())["models"][0]["slug"]
    with_texts = json.loads((kept / slug / "results.json").read_text())
    without = json.loads((bare / slug / "results.json").read_text())
    assert with_texts["prompts"]["texts"] == list(SEED_PROMPTS)
    assert without["prompts"] == {**with_texts["prompts"], "texts": None}
    for key in ("attention", "mlp", "combined", "block", "per_prompt"):
        assert without[key] == with_texts[key], key  # same batches, same ops: identical
    load_calls.clear()
    assert main(argv) == 0
    assert load_calls == []


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["compare", "--models", "x", "--checkpoints", "latest", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad checkpoint 'latest'" in err
    assert main(["compare", "--models", "x", "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path)]) == 2
    assert "prompt file not found" in capsys.readouterr().err
    assert main(["compare", "--out", str(tmp_path)]) == 2  # --models is required


def test_compare_refuses_max_memory_without_device_map_before_any_work(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["compare", "--models", "nano-2l", "--max-memory", "0=1GiB", "--device", "cpu", "--out", str(out)]) == 2
    assert "--max-memory needs --device-map" in capsys.readouterr().err
    assert not out.exists()  # refused before the output folder is claimed


def test_step_axis_is_log_for_log_spaced_checkpoints():
    from funnel_tl.plots.sweep_style import step_axis

    x, axis = step_axis([0, 16, 64, 256, 900])  # log-spaced early checkpoints, step 0 included
    assert axis["type"] == "log" and x == [8.0, 16.0, 64.0, 256.0, 900.0]  # step 0 at half the first step
    assert axis["ticktext"] == ["0", "16", "64", "256", "900"] and axis["tickvals"] == x
    assert axis["title_text"] == "training step (log scale; step 0 drawn at 8)"  # where the axis has no 0
    assert step_axis([16, 64, 256, 900])[1]["title_text"] == "training step (log scale)"
    steps = list(sweep_plan.PYTHIA_STEPS)
    x, axis = step_axis(steps)  # 154 checkpoints: decades, and 0 at 0.5 with no label beside it
    assert axis["ticktext"] == ["0", "1", "10", "100", "1,000", "10,000", "100,000"]
    assert axis["tickvals"][:2] == [0.5, 1.0] and x[:3] == [0.5, 1.0, 2.0]
    x, axis = step_axis([0, 500, 10000])
    assert axis["type"] == "linear" and x == [0.0, 500.0, 10000.0]


def test_sweep_to_pandas_is_tidy(sweep):
    pytest.importorskip("pandas")
    comparison, _ = sweep
    assert repr(comparison).startswith("Comparison(3 models: [") and len(repr(comparison)) < 800
    table = comparison.to_pandas()
    assert {"model", "layer", "component", "gain", "ci_low", "ci_high", "n_prompts", "step", "depth"} <= set(
        table.columns
    )
    for row in comparison.ok:
        mine = table[(table["model"] == row.model) & (table["component"] == "attn")].sort_values("layer")
        np.testing.assert_array_equal(mine["gain"], comparison.results[row.model].attn_gains)
        np.testing.assert_array_equal(
            mine[["ci_low", "ci_high"]].to_numpy(), comparison.results[row.model].intervals.attn
        )


def test_report_over_a_sweep_shares_one_plotlyjs_and_redraws_compare_html(sweep, tmp_path, capsys):
    import shutil

    _, out = sweep
    tree = tmp_path / "tree"
    shutil.copytree(out, tree)
    (tree / "compare.html").unlink()
    assert main(["report", str(tree)]) == 0
    assert "compare.html" in capsys.readouterr().out
    pages = sorted(tree.rglob("*.html"))
    slugs = [row["slug"] for row in json.loads((tree / "compare.json").read_text())["models"]]
    assert [p.relative_to(tree).as_posix() for p in pages] == sorted(
        ["compare.html"] + [f"{slug}/funnel.html" for slug in slugs]
    )
    assert [p.name for p in tree.rglob("plotly.min.js")] == ["plotly.min.js"]  # one copy, at the top
    for page in pages:
        src = re.findall(r'<script src="([^"]+)"', page.read_text())
        assert len(src) == 1 and (page.parent / src[0]).resolve() == (tree / "plotly.min.js").resolve()
    written = sum(p.stat().st_size for p in pages) + (tree / "plotly.min.js").stat().st_size
    assert written < 7_000_000, written  # the bar for a 3-model sweep (was ~19 MB: 4.8 MB a page)


def test_report_reads_and_redraws_each_model_once(sweep, tmp_path, monkeypatch):
    """A sweep's models are among the results files report reads: their intervals are drawn once, and
    each file read once, whether they are redrawn as pages or for compare.html."""
    import shutil

    _, out = sweep
    tree = tmp_path / "tree"
    shutil.copytree(out, tree)
    loads, draws = [], []
    real_load, real_draw = GainResult.load.__func__, GainResult.with_intervals

    monkeypatch.setattr(
        GainResult, "load", classmethod(lambda cls, path, *a, **k: loads.append(path) or real_load(cls, path, *a, **k))
    )
    monkeypatch.setattr(
        GainResult, "with_intervals", lambda self, *a, **k: draws.append(self.model) or real_draw(self, *a, **k)
    )
    assert main(["report", str(tree), "--bootstrap", "50"]) == 0
    n_models = len(list(tree.rglob("results.json")))
    assert len(loads) == n_models and len(draws) == n_models, (loads, draws)


def test_report_over_a_folder_of_sweeps_redraws_each_compare_html(sweep, tmp_path, capsys):
    import shutil

    _, out = sweep
    parent = tmp_path / "sweeps"
    for name in ("first", "second"):
        shutil.copytree(out, parent / name)
        (parent / name / "compare.html").unlink()
        (parent / name / "plotly.min.js").unlink()
    assert main(["report", str(parent)]) == 0
    printed = capsys.readouterr().out
    for name in ("first", "second"):
        page = parent / name / "compare.html"
        assert f"Saved: {page}" in printed
        src = re.findall(r'<script src="([^"]+)"', page.read_text())
        assert len(src) == 1 and (page.parent / src[0]).resolve() == (parent / "plotly.min.js").resolve()
    assert [p.parent for p in parent.rglob("plotly.min.js")] == [parent]  # one copy, at the top
