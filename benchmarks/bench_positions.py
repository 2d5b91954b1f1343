"""What does ``by_position=True`` cost? measure_gains with and without position sums, side by side.

One process, one model, the same mixed-length prompts (``bench_gains.bench_prompts``), rounds
interleaved in alternating order so that load spikes on a shared machine hit both alike; the
ratio reported is the median over rounds of each round's time ratio. The position sums are one
extra one-hot matmul per hooked norm ([layer, batch, pos] × [pos, bucket]) and a copy of
[batch, layer, bucket] sums to the host per batch: the forward pass should dominate.

    python benchmarks/bench_positions.py                       # nano-8l (bundled), CPU, 64 prompts
    python benchmarks/bench_positions.py --model DIR --device cuda --n-prompts 512 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gains import bench_prompts  # noqa: E402

from funnel_tl import load_model, measure_gains  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano-8l", help="bundled name or checkpoint folder (default nano-8l)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see bench_gains)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype="float32" if args.device == "cpu" else "auto")
    prompts = bench_prompts(args.n_prompts)

    def run(by_position: bool) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        measure_gains(model, prompts, batch_size=args.batch_size, by_position=by_position, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(False), run(True)  # warm-up, not timed
    times = {False: [], True: []}
    for round_number in range(args.rounds):
        for by_position in (False, True) if round_number % 2 == 0 else (True, False):
            times[by_position].append(run(by_position))
    ratio = statistics.median(on / off for on, off in zip(times[True], times[False], strict=True))
    n_tokens = sum(r for r in measure_gains(model, prompts, batch_size=args.batch_size, progress=False).n_tokens)
    numbers = {
        "model": args.model,
        "device": args.device,
        "n_prompts": args.n_prompts,
        "n_tokens": int(n_tokens),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "threads": args.threads,
        "median_seconds": {"plain": statistics.median(times[False]), "by_position": statistics.median(times[True])},
        "time_ratio_by_position_over_plain": ratio,
    }
    print(
        f"{args.model}, {args.n_prompts} prompts ({n_tokens} tokens), batch size {args.batch_size}, "
        f"{args.device}, {args.rounds} rounds"
    )
    print(f"measure_gains:                    {numbers['median_seconds']['plain']:.3f} s (median)")
    print(f"measure_gains, by_position=True:  {numbers['median_seconds']['by_position']:.3f} s (median)")
    print(f"time ratio, by_position / plain:  {ratio:.3f} (median of per-round ratios)")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
