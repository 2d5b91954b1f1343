"""What does data parallel buy? ``funnel-tl run`` in one process against ``torchrun`` with N.

Times, side by side and interleaved (rounds alternate which goes first; medians), the whole
command as a user runs it — process start, imports, model load, measurement, writing — on the
same corpus (pydoc passages from ``funnel_tl.prompts.corpus``, truncated to the context), and checks
that both wrote the same per-prompt sums. Start-up is paid once per process, so the ratio
depends on how long the measurement itself is: raise ``--n-prompts`` or take a larger
``--model`` to see where data parallel starts to pay.

    python benchmarks/bench_distributed.py                          # nano-4l, 300 passages, 2 CPU processes
    python benchmarks/bench_distributed.py --device cuda --nproc 8 --model EleutherAI/pythia-1.4b

On the CPU each process runs one torch thread, so N processes use N cores; on a machine with
fewer free cores than processes the ranks share them and data parallel cannot win.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def corpus(path: Path, n_prompts: int) -> Path:
    from funnel_tl.prompts.corpus import documents

    passages = []
    for _, text in documents("all"):
        passages += [" ".join(p.split()) for p in text.split("\n\n") if len(p) > 200]
        if len(passages) >= n_prompts:
            break
    path.write_text("\n".join(passages[:n_prompts]) + "\n", encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(command: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano-4l")
    parser.add_argument("--n-prompts", type=int, default=300)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    prompts = corpus(folder / "corpus.txt", args.n_prompts)
    common = [
        "run",
        "--model",
        args.model,
        "--prompts",
        str(prompts),
        "--device",
        args.device,
        "--bootstrap",
        "0",
        "--batch-size",
        str(args.batch_size),
        "--max-tokens-per-prompt",
        "context",
    ]
    one = [sys.executable, "-m", "funnel_tl", *common, "--out", str(folder / "one")]

    def many() -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(args.nproc),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            "-m",
            "funnel_tl",
            *common,
            "--out",
            str(folder / "many"),
        ]

    times: dict[str, list[float]] = {"one": [], "many": []}
    for round_number in range(args.rounds):
        order = ["one", "many"] if round_number % 2 == 0 else ["many", "one"]
        for name in order:
            times[name].append(timed(one if name == "one" else many()))

    a = json.loads((folder / "one" / "results.json").read_text())
    b = json.loads((folder / "many" / "results.json").read_text())
    worst = max(
        float(np.max(np.abs(np.asarray(b["per_prompt"][c][k]) / np.asarray(a["per_prompt"][c][k]) - 1)))
        for c in ("attn", "mlp", "block")
        for k in ("out_sum", "in_sum")
    )
    n_tokens = a["provenance"]["n_tokens_total"]
    print(
        f"{args.model}, {args.n_prompts} prompts, {n_tokens} tokens, batch size {args.batch_size}, "
        f"device {args.device}, {args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    for name, label in (("one", "1 process"), ("many", f"torchrun, {args.nproc} processes")):
        median = statistics.median(times[name])
        print(f"  {label:<26} {median:7.2f} s   {n_tokens / median:9.0f} tokens/s")
    print(
        f"  speed-up (1 process time / {args.nproc} processes time): "
        f"{statistics.median(times['one']) / statistics.median(times['many']):.2f}"
    )
    print(f"  largest relative difference of the per-prompt sums: {worst:.1e}")


if __name__ == "__main__":
    main()
