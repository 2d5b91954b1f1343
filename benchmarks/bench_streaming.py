"""Is memory flat in corpus size? Peak RSS of ``funnel-tl run`` on two corpus sizes, streamed and whole.

Each run is a fresh process (``python -m funnel_tl run ... --no-prompt-texts``) that reports its
own peak resident set size (``ru_maxrss``) when done. "streamed" is the default
(``streaming.CHUNK_PROMPTS`` prompts at a time); "whole" sets the chunk to the corpus size, which
is how every prompt was held before streaming (all token ids and batches at once). The corpus is
pydoc passages (``funnel_tl.prompts.corpus``) repeated to the size asked, truncated to the context.

    python benchmarks/bench_streaming.py                         # nano-2l, 2,000 and 8,000 passages
    python benchmarks/bench_streaming.py --sizes 10000 40000 --chunk 4096

What grows with the corpus when streamed is the per-prompt sums (6 float64 per prompt and layer)
and the results file being written; peak RSS also carries the interpreter, torch and the model
(~400 MB), the same in every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys
from funnel_tl.measure import streaming
from funnel_tl.cli import main
chunk = int(sys.argv[1])
if chunk:
    streaming.CHUNK_PROMPTS = chunk
code = main(sys.argv[2:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def corpus(path: Path, n_prompts: int) -> Path:
    from funnel_tl.prompts.corpus import documents

    passages = []
    for _, text in documents("all"):
        passages += [" ".join(p.split()) for p in text.split("\n\n") if len(p) > 200]
        if len(passages) >= 500:
            break
    with open(path, "w", encoding="utf-8") as handle:
        for number in range(n_prompts):
            handle.write(json.dumps({"text": passages[number % len(passages)]}) + "\n")
    return path


def peak_rss_mb(model: str, prompts: Path, out: Path, chunk: int) -> float:
    command = [
        sys.executable,
        "-c",
        CHILD,
        str(chunk),
        "run",
        "--model",
        model,
        "--prompts",
        str(prompts),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--batch-size",
        "8",
        "--bootstrap",
        "0",
        "--max-tokens-per-prompt",
        "context",
        "--no-prompt-texts",
        "--out",
        str(out),
    ]
    # glibc's dynamic mmap threshold lets freed tensors' memory stay in the heap, a high-water mark
    # that grows with the run's length whatever it holds alive (docs/performance.md, head_gains RSS); pinned, RSS
    # follows what is held.
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"run failed:\n{done.stderr[-2000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("MAXRSS_KB"))
    return int(line.split()[1]) / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano-2l")
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 8000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--chunk", type=int, default=0, help="prompts per chunk when streamed (0: the default)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    numbers = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for size in args.sizes:
            prompts = corpus(folder / f"corpus-{size}.jsonl", size)
            for mode, chunk in (("streamed", args.chunk), ("whole", size)):
                numbers[f"{mode} {size}"] = peak_rss_mb(args.model, prompts, folder / f"{mode}-{size}", chunk)
    small, large = args.sizes
    print(f"peak RSS, {args.model}, --no-prompt-texts ({large / small:g}x the prompts):")
    for mode in ("streamed", "whole"):
        a, b = numbers[f"{mode} {small}"], numbers[f"{mode} {large}"]
        print(
            f"  {mode:9s} {small:>7,} prompts {a:7.1f} MB   {large:>7,} prompts {b:7.1f} MB   growth {b - a:+7.1f} MB"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "sizes": args.sizes, "peak_rss_mb": numbers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
