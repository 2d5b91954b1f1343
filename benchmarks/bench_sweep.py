"""What does a sweep at the scale of the Pythia suite cost beyond its measurements?

Two cases, each printing seconds per row (per checkpoint) so that growth with the number of rows
shows as a ratio measured side by side in one run:

- ``--case page``: ``compare.html`` of synthetic sweeps (no model: ``GainResult``s of chosen
  gains), drawn for several sizes — one model's checkpoints under Pythia's step names, and
  several sizes × checkpoints — and timed (CPU and wall). A page linear in its rows has the same
  seconds per row at 40 rows as at 1,232.
- ``--case sweep``: the whole ``funnel-tl compare --models DIR --checkpoints all`` on N tiny local
  checkpoints (``funnel_tl.testing.toy.build_training_run``, Pythia's step names), as a user runs it (one
  process: imports, every load, measurement and write, the page); its CPU and wall seconds per
  checkpoint beside the load and measure seconds that compare.json records; then a rerun spelled
  differently (``DIR/`` for ``DIR``: must measure nothing), a one-checkpoint run into the folder
  (must keep every row) and ``funnel-tl report`` (which redraws the page).
- ``--case sizes``: ``compare --models A,B,... --checkpoints all`` over random-weight checkpoints
  of Pythia's shapes (float16 files, as on the hub), a few per size: load, measure and whole
  seconds per checkpoint for each size, the cost a multi-size sweep pays per checkpoint.

    python benchmarks/bench_sweep.py --case page                      # 10, 40, 154, 1,232 rows
    python benchmarks/bench_sweep.py --case sweep                     # 154 checkpoints, seed prompts
    python benchmarks/bench_sweep.py --case sweep --n-checkpoints 20 --threads 1
    python benchmarks/bench_sweep.py --case sizes --sizes 70m,160m,410m   # Pythia-shaped, random weights

CPU seconds are what the processes ran (children's user + system time); on a shared machine wall
clock swings with the other jobs, CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PAGE_ROWS = (10, 40, 154, 1232)


# ---- the page ----------------------------------------------------------------------------------
def synthetic_sweep(n_rows: int, n_layers: int = 16, n_prompts: int = 8, seed: int = 0):
    """A ``Comparison`` of ``n_rows`` checkpoints: Pythia's steps, over as many sizes as it takes
    (154 per size), gains that drift with the step (no model is loaded)."""
    from funnel_tl.components import COMPONENTS
    from funnel_tl.results.gains import GainResult
    from funnel_tl.sweep.comparison import Comparison
    from funnel_tl.sweep.plan import PYTHIA_STEPS, Target
    from funnel_tl.sweep.rows import row_from_results

    rng = np.random.default_rng(seed)
    rows, results = [], {}
    sizes = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    for index in range(n_rows):
        size, step = sizes[index // len(PYTHIA_STEPS) % len(sizes)], PYTHIA_STEPS[index % len(PYTHIA_STEPS)]
        depth = np.linspace(0, 1, n_layers)
        trained = np.log1p(step) / np.log1p(PYTHIA_STEPS[-1])
        profile = {
            "attn": 0.9 - 0.7 * trained + 0.2 * depth,
            "mlp": 1.2 - 0.5 * trained + trained * 3 * depth**4,
            "block": np.full(n_layers, 1.1),
        }
        gains = {c: p * rng.lognormal(0, 0.1, (n_prompts, n_layers)) for c, p in profile.items()}
        label, base = f"EleutherAI/pythia-{size}@step{step}", f"EleutherAI/pythia-{size}"
        tokens = np.full(n_prompts, 12)
        result = GainResult(
            model=label,
            definition="seed",
            n_layers=n_layers,
            d_model=64,
            parallel_blocks=True,
            prompts=tuple(f"prompt {i}" for i in range(n_prompts)),
            n_tokens=tokens,
            out_sums={c: gains[c] * 12 for c in COMPONENTS},
            in_sums={c: np.full((n_prompts, n_layers), 12.0) for c in COMPONENTS},
        )
        target = Target(label, base, base, f"step{step}", step)
        data = {
            "provenance": {
                "n_parameters": 70_000_000,
                "seconds": 1.0,
                "load_seconds": 0.8,
                "measure_seconds": 0.2,
                "peak_memory_bytes": 2**30,
                "memory_kind": "rss_peak",
            }
        }
        rows.append(row_from_results(target, data, result, resumed=False))
        results[label] = result
    return Comparison(
        rows=rows,
        results=results,
        settings={"definition": "seed", "n_prompts": n_prompts, "dtype": "float32", "device": "cpu"},
    )


def time_page(n_rows: int, folder: Path) -> dict:
    comparison = synthetic_sweep(n_rows)
    cpu, wall = time.process_time(), time.perf_counter()
    page = comparison.save_html(folder / f"rows{n_rows}")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"rows": n_rows, "cpu_seconds": cpu, "wall_seconds": wall, "bytes": page.stat().st_size}


def page_case(rows: list[int]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        time_page(4, Path(scratch))  # imports and plotly's first-use costs, untimed
        timings = [time_page(n, Path(scratch)) for n in rows]
    print(f"{'rows':>6} {'CPU s':>8} {'wall s':>8} {'CPU s/row':>10} {'page MB':>8}")
    for t in timings:
        print(
            f"{t['rows']:>6} {t['cpu_seconds']:>8.2f} {t['wall_seconds']:>8.2f} "
            f"{t['cpu_seconds'] / t['rows']:>10.4f} {t['bytes'] / 2**20:>8.2f}"
        )
    first, last = timings[0], timings[-1]
    ratio = (last["cpu_seconds"] / last["rows"]) / (first["cpu_seconds"] / first["rows"])
    print(
        f"CPU seconds per row at {last['rows']} rows ÷ at {first['rows']} rows: {ratio:.2f} "
        "(1 or less: linear in the rows)"
    )
    return {"case": "page", "timings": timings, "per_row_ratio": ratio}


# ---- the whole sweep ---------------------------------------------------------------------------
def run_timed(command: list[str], cwd: Path, threads: int | None) -> tuple[float, float, subprocess.CompletedProcess]:
    """CPU seconds (this child's user + system) and wall seconds of one command."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall, done


def sweep_case(n_checkpoints: int, threads: int | None, keep: Path | None) -> dict:
    from funnel_tl.sweep.plan import PYTHIA_STEPS
    from funnel_tl.testing.toy import build_training_run

    steps = (
        PYTHIA_STEPS[:: max(1, len(PYTHIA_STEPS) // n_checkpoints)][:n_checkpoints]
        if n_checkpoints < len(PYTHIA_STEPS)
        else PYTHIA_STEPS
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-sweep-")) if keep is None else keep
    try:
        build_training_run(scratch / "ckpts", steps, n_layers=4)
        tool = [sys.executable, "-m", "funnel_tl"]
        common = ["--checkpoints", "all", "--device", "cpu", "--out", "sweep"]
        n = len(steps)
        results = {"case": "sweep", "n_checkpoints": n, "threads": threads}
        cpu, wall, _ = run_timed(tool + ["compare", "--models", "ckpts", *common], scratch, threads)
        table = json.loads((scratch / "sweep" / "compare.json").read_text())["models"]
        load = sum(row["load_seconds"] for row in table)
        measure = sum(row["measure_seconds"] for row in table)
        results.update(compare_cpu=cpu, compare_wall=wall, load_seconds=load, measure_seconds=measure)
        print(
            f"compare, {n} checkpoints: {cpu:.1f} CPU s, {wall:.1f} wall s: {cpu / n:.3f} CPU s and "
            f"{wall / n:.3f} wall s per checkpoint; of which load {load / n:.3f} s and measure "
            f"{measure / n:.3f} s (wall, as compare.json records them)"
        )
        cpu, wall, done = run_timed(tool + ["compare", "--models", "ckpts/", *common], scratch, threads)
        table = json.loads((scratch / "sweep" / "compare.json").read_text())["models"]
        fresh = sum(not row["resumed"] for row in table)
        results.update(rerun_cpu=cpu, rerun_wall=wall, rerun_measured=fresh)
        print(f"rerun as ckpts/: {cpu:.1f} CPU s, {wall:.1f} wall s; measured again: {fresh} of {len(table)}")
        cpu, wall, _ = run_timed(
            tool
            + [
                "compare",
                "--models",
                str((scratch / "ckpts").resolve()),
                "--checkpoints",
                "0",
                "--device",
                "cpu",
                "--out",
                "sweep",
            ],
            scratch,
            threads,
        )
        rows = len(json.loads((scratch / "sweep" / "compare.json").read_text())["models"])
        results.update(one_checkpoint_cpu=cpu, one_checkpoint_wall=wall, rows_after_one_checkpoint=rows)
        print(f"one checkpoint into the folder: {cpu:.1f} CPU s, {wall:.1f} wall s; rows kept: {rows} of {n}")
        cpu, wall, _ = run_timed(tool + ["report", "sweep"], scratch, threads)
        results.update(report_cpu=cpu, report_wall=wall)
        print(f"report (every page of the folder, compare.html included): {cpu:.1f} CPU s, {wall:.1f} wall s")
        return results
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)


# Pythia's shapes (Biderman et al. 2023): layers, d_model, heads; GPT-NeoX, parallel blocks,
# rotary on a quarter of each head, d_ff = 4 d_model, vocabulary 50,304, context 2,048.
PYTHIA_SHAPES = {
    "70m": (6, 512, 8),
    "160m": (12, 768, 12),
    "410m": (24, 1024, 16),
    "1b": (16, 2048, 8),
    "1.4b": (24, 2048, 16),
    "2.8b": (32, 2560, 32),
    "6.9b": (32, 4096, 32),
    "12b": (36, 5120, 40),
}


def pythia_shaped(folder: Path, size: str, n_checkpoints: int, tokenizer) -> Path:
    """``folder/step<N>/`` checkpoints of a random-weight Pythia-``size``-shaped model in float16
    (as Pythia's hub checkpoints are stored); the steps share one weights file by hard links."""
    import torch
    from transformers import AutoModelForCausalLM

    from funnel_tl.testing.toy import make_config

    n_layers, d_model, n_heads = PYTHIA_SHAPES[size]
    config = make_config(
        "neox-parallel", n_layers=n_layers, d_model=d_model, n_heads=n_heads, vocab_size=50304, n_ctx=2048
    )
    first = folder / "step0"
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    model.save_pretrained(first)
    tokenizer.save_pretrained(first)
    del model
    for index in range(1, n_checkpoints):
        other = folder / f"step{1000 * index}"
        other.mkdir(parents=True)
        for item in first.iterdir():
            (os.link if item.suffix == ".safetensors" else shutil.copyfile)(item, other / item.name)
    return folder


def sizes_case(sizes: list[str], n_checkpoints: int, threads: int | None, keep: Path | None) -> dict:
    """``compare --models A,B,... --checkpoints all`` over Pythia-shaped sizes: seconds per checkpoint per size."""
    from funnel_tl.testing.toy import train_tokenizer

    scratch = Path(tempfile.mkdtemp(prefix="bench-sizes-")) if keep is None else keep
    try:
        tokenizer = train_tokenizer(512)
        for size in sizes:
            if not (scratch / f"pythia-{size}-shaped").is_dir():
                pythia_shaped(scratch / f"pythia-{size}-shaped", size, n_checkpoints, tokenizer)
        models = ",".join(f"pythia-{size}-shaped" for size in sizes)
        cpu, wall, _ = run_timed(
            [
                sys.executable,
                "-m",
                "funnel_tl",
                "compare",
                "--models",
                models,
                "--checkpoints",
                "all",
                "--device",
                "cpu",
                "--out",
                "sizes",
            ],
            scratch,
            threads,
        )
        table = json.loads((scratch / "sizes" / "compare.json").read_text())["models"]
        numbers = {"case": "sizes", "threads": threads, "compare_cpu": cpu, "compare_wall": wall, "sizes": {}}
        print(f"compare over {len(sizes)} sizes × {n_checkpoints} checkpoints: {cpu:.1f} CPU s, {wall:.1f} wall s")
        print(
            f"{'size':>6} {'params':>8} {'load s':>8} {'measure s':>10} {'total s':>8}  (per checkpoint, wall, "
            "as compare.json records them; the first checkpoint of the run carries the imports)"
        )
        for size in sizes:
            rows = [row for row in table if f"pythia-{size}-shaped@" in row["model"]][1:] or [
                row for row in table if f"pythia-{size}-shaped@" in row["model"]
            ]
            load = float(np.median([row["load_seconds"] for row in rows]))
            measure = float(np.median([row["measure_seconds"] for row in rows]))
            total = float(np.median([row["seconds"] for row in rows]))
            numbers["sizes"][size] = dict(
                n_parameters=rows[0]["n_parameters"], load_seconds=load, measure_seconds=measure, seconds=total
            )
            print(f"{size:>6} {rows[0]['n_parameters'] / 1e6:>7.0f}M {load:>8.2f} {measure:>10.2f} {total:>8.2f}")
        return numbers
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("page", "sweep", "sizes"), default="page")
    parser.add_argument("--sizes", default="70m,160m,410m", help="sizes case: Pythia sizes, comma-separated")
    parser.add_argument("--rows", default=",".join(map(str, PAGE_ROWS)), help="page case: row counts, comma-separated")
    parser.add_argument(
        "--n-checkpoints",
        type=int,
        default=None,
        help="sweep case: how many of Pythia's steps (154); sizes case: checkpoints per size (3)",
    )
    parser.add_argument("--threads", type=int, default=None, help="sweep case: OMP_NUM_THREADS of the commands")
    parser.add_argument("--keep", type=Path, default=None, help="sweep case: build and sweep in this folder, kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.case == "page":
        numbers = page_case([int(n) for n in args.rows.split(",")])
    elif args.case == "sweep":
        numbers = sweep_case(args.n_checkpoints or 154, args.threads, args.keep)  # Pythia: 154 per size
    else:
        numbers = sizes_case(args.sizes.split(","), args.n_checkpoints or 3, args.threads, args.keep)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
