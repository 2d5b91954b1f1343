"""The benchmark and the GPU check script run end to end (tiny shape, CPU): they must not rot unseen.

No timing is asserted: speed depends on the machine. benchmarks/ is not a package, so the
scripts are loaded from their files.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # check_gpu_numbers imports bench_gains
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_gains_reports_every_method(tmp_path):
    # No capsys: HF's logging handler, created on first use, would keep its closed stream.
    bench = load_script("bench_gains")
    out = tmp_path / "bench.json"
    import torch

    # --threads as now: the script sets torch's thread count, which would outlive this test.
    assert (
        bench.main(
            [
                "--shape",
                "tiny",
                "--n-prompts",
                "8",
                "--rounds",
                "1",
                "--no-memory",
                "--threads",
                str(torch.get_num_threads()),
                "--checkpoint",
                str(tmp_path / "tiny"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    numbers = json.loads(out.read_text())
    assert set(numbers["median_seconds"]["wall"]) == set(bench.METHODS)
    assert numbers["n_prompts"] == 8 and numbers["n_tokens"] > 8
    assert "measure_gains tokens/s ÷ seed loop's" in numbers["table"]
    assert "head_gains (every layer) tokens/s ÷ bare forward's" in numbers["table"]
    assert "load_model time ÷ AutoModelForCausalLM.from_pretrained's" in numbers["table"]
    assert set(numbers["load_seconds"]["cpu"]) == {"hf", "funnel", "bridge"}
    assert "of load_model's time, building TransformerLens' bridge" in numbers["table"]


@pytest.mark.slow
def test_bench_gains_launch_case_with_auto_batch_size(tmp_path):
    """The launch-bound case's own defaults (4 layers, d_model 64, vocab 512, batch 32), shrunk, and auto."""
    bench = load_script("bench_gains")
    out = tmp_path / "bench.json"
    import torch

    # With memory: each method's worker runs twice (malloc returning freed memory, glibc's default).
    assert (
        bench.main(
            [
                "--case",
                "launch",
                "--n-prompts",
                "8",
                "--rounds",
                "1",
                "--no-load",
                "--methods",
                "bare,funnel,heads",
                "--batch-size",
                "auto",
                "--threads",
                str(torch.get_num_threads()),
                "--checkpoint",
                str(tmp_path / "tiny-4l"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    numbers = json.loads(out.read_text())
    assert (numbers["n_layers"], numbers["d_model"], numbers["vocab_size"]) == (4, 64, 512)
    assert numbers["batch_size"] == 8 and numbers["batch_size_requested"] == "auto"  # the CPU's auto
    for method in ("bare", "funnel", "heads"):
        measured = numbers["memory_mib"][method]
        assert measured["peak_mib"] >= measured["loaded_mib"] > 0
        assert measured["default_peak_mib"] >= measured["default_loaded_mib"] > 0
    assert any(label.startswith("head_gains peak above the model") for label in numbers["ratios"])
    words = sorted(len(p.split()) for p in bench.bench_prompts(256, (12, 40)))
    assert words[0] == 12 and words[-1] == 40


@pytest.mark.slow
def test_gpu_check_numbers_pass_in_half_precision_on_the_cpu(tmp_path):
    """The script's checks, float16 included, run and pass on the CPU for a tiny shape."""
    check = load_script("check_gpu_numbers")
    out = tmp_path / "check.json"
    assert (
        check.main(
            [
                "--device",
                "cpu",
                "--shape",
                "tiny",
                "--n-prompts",
                "8",
                "--checkpoint",
                str(tmp_path / "tiny"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    checks = json.loads(out.read_text())["checks"]
    assert len(checks) == 6 and all(c["passed"] for c in checks)


def test_bench_prompts_are_mixed_length():
    bench = load_script("bench_gains")
    prompts = bench.bench_prompts(64)
    words = sorted(len(p.split()) for p in prompts)
    assert len(prompts) == 64 and words[0] == 1 and words[-1] == 24


@pytest.mark.slow
def test_bench_streaming_reports_peak_rss(tmp_path):
    bench = load_script("bench_streaming")
    out = tmp_path / "bench.json"
    assert bench.main(["--sizes", "12", "24", "--chunk", "5", "--json", str(out)]) == 0
    numbers = json.loads(out.read_text())["peak_rss_mb"]
    assert set(numbers) == {"streamed 12", "whole 12", "streamed 24", "whole 24"}
    assert all(value > 0 for value in numbers.values())


def test_bench_sweep_page_prints_seconds_per_row(tmp_path, capsys):
    bench = load_script("bench_sweep")
    out = tmp_path / "page.json"
    assert bench.main(["--case", "page", "--rows", "3,30", "--json", str(out)]) == 0
    numbers = json.loads(out.read_text())
    assert [t["rows"] for t in numbers["timings"]] == [3, 30]
    assert "CPU s/row" in capsys.readouterr().out and numbers["per_row_ratio"] > 0


@pytest.mark.slow
def test_bench_sweep_whole_sweep_resumes_by_identity_and_keeps_rows(tmp_path):
    bench = load_script("bench_sweep")
    out = tmp_path / "sweep.json"
    assert (
        bench.main(
            [
                "--case",
                "sweep",
                "--n-checkpoints",
                "3",
                "--threads",
                "1",
                "--keep",
                str(tmp_path / "work"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    numbers = json.loads(out.read_text())
    assert numbers["n_checkpoints"] == 3 and numbers["load_seconds"] > 0
    assert numbers["rerun_measured"] == 0  # `ckpts/` is the same model as `ckpts`
    assert numbers["rows_after_one_checkpoint"] == 3  # a one-checkpoint run keeps every row


@pytest.mark.slow
def test_bench_effects_reports_every_method(tmp_path):
    """The effects' benchmark (launch-bound shape, shrunk): every scheme runs and is tabulated."""
    bench = load_script("bench_effects")
    out = tmp_path / "bench.json"
    import torch

    assert (
        bench.main(
            [
                "--case",
                "launch",
                "--n-prompts",
                "4",
                "--batch-size",
                "2",
                "--rounds",
                "1",
                "--stacks",
                "2",
                "--threads",
                str(torch.get_num_threads()),
                "--checkpoint",
                str(tmp_path / "tiny-4l"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    numbers = json.loads(out.read_text())
    assert set(numbers["ratio_to_gains"]) == {"gains", "effects", "no-replay", "stack-2", "tl"}
    assert "CPU time ÷ measure_gains'" in numbers["table"] and "executor hf+replay" in numbers["table"]
