"""What do the gains cost? measure_gains against a bare HF forward and the seed notebook's loop.

One process times, side by side and interleaved (rounds in rotating order, medians), on a
random-weight checkpoint of a Pythia shape built locally with ``funnel_tl.testing.toy``:

- ``bare``: a batched HuggingFace forward (its default attention, logits and all, no KV cache)
  over exactly the batches ``measure_gains`` makes (length-bucketed, right-padded);
- ``seed``: the seed notebook's loop (``funnel_tl.testing.reference.seed_reference``: forward hooks on
  the HF modules, one prompt at a time) on the same HF model;
- ``funnel``: ``measure_gains`` through the TransformerBridge;
- ``funnel-full`` (ablation): ``measure_gains`` with its early stop switched off, so the final
  LayerNorm and the unembedding run too — the difference proves the early stop.

Peak memory of each: on the CPU, the peak RSS of a separate process that loads only what the
method needs (every process imports the same libraries), reset after loading and one warm-up
batch, with malloc set to return freed memory at once (``RETURNING_MALLOC``; glibc's default
figure is printed beside it); on CUDA, ``torch.cuda.max_memory_allocated`` over one run, plus
the weights.

    python benchmarks/bench_gains.py                                  # Pythia-160m shape, CPU, float32
    python benchmarks/bench_gains.py --device cuda --dtype float16    # Pythia-1.4B shape on a GPU

Timings are wall clock on whatever else the machine runs; the rounds are interleaved so that
load spikes hit every method alike, and the median drops the worst of them. On the CPU torch runs
one thread by default (``--threads``): on a small machine shared with other work, two OpenMP
threads wait at every operator's barrier for whichever of them was descheduled — measured here,
a forward ran 3× slower with 2 threads than with 1, and small operators 100× slower.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# Imported by every process, timing and memory workers alike, so that library code weighs the same
# in every RSS (the bridge's process needs transformer_lens; the others get it too).
import transformer_lens.model_bridge  # noqa: E402,F401
import transformers  # noqa: E402

from funnel_tl import head_gains, load_model, measure_gains  # noqa: E402
from funnel_tl.measure import engine as engine_module  # noqa: E402
from funnel_tl.measure.engine import resolve_batch_size  # noqa: E402
from funnel_tl.prompts.tokens import make_batches, padding_fraction, tokenize  # noqa: E402
from funnel_tl.testing.reference import seed_reference  # noqa: E402
from funnel_tl.testing.toy import build_checkpoint, corpus_texts, train_tokenizer  # noqa: E402

PYTHIA_VOCAB = 50304  # Pythia's padded vocabulary: the unembedding is d_model × 50304
# Pythia's own shapes (GPT-NeoX, parallel blocks, rotary on 25% of each head, d_ff = 4·d_model).
SHAPES = {
    "pythia-160m": dict(n_layers=12, d_model=768, n_heads=12, vocab_size=PYTHIA_VOCAB),
    "pythia-1.4b": dict(n_layers=24, d_model=2048, n_heads=16, vocab_size=PYTHIA_VOCAB),
    # Launch-bound: kernels so small that per-call Python overhead is the cost, as on a GPU.
    "tiny-4l": dict(n_layers=4, d_model=64, n_heads=4, vocab_size=512),
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, vocab_size=PYTHIA_VOCAB),  # a smoke test of this script
}
# The two regimes of `make bench`: a model whose matrix products dominate, and one whose kernels
# are so fast that Python overhead per call dominates (what a GPU at research batch sizes sees).
CASES = {
    "compute": dict(shape="pythia-160m", n_prompts=64, batch_size=8, words=(1, 24)),
    "launch": dict(shape="tiny-4l", n_prompts=256, batch_size=32, words=(12, 40)),
}
METHODS = ("bare", "seed", "funnel", "funnel-full", "heads")
LABELS = {
    "bare": "bare HF forward (batched)",
    "seed": "seed loop (HF hooks, 1 prompt at a time)",
    "funnel": "measure_gains",
    "funnel-full": "measure_gains, no early stop (ablation)",
    "heads": "head_gains, every layer",
}
# What the issues ask (never asserted in tests: timings are machine-dependent): measure_gains ≥ 1.2×
# a bare forward when compute-bound, ≥ 0.85× when launch-bound; head_gains ≥ 0.70×; load_model
# ≤ 1.30× from_pretrained's time.
TARGET_VS_BARE, TARGET_VS_SEED, TARGET_MEMORY = 1.2, 1.5, 1.2
TARGET_VS_BARE_LAUNCH, TARGET_HEADS_VS_BARE, TARGET_LOAD = 0.85, 0.70, 1.30
TARGET_VS_BARE_GPU, TARGET_MEMORY_GPU = 0.9, 1.1  # on CUDA (benchmarks/gpu_check.sh)


def bench_prompts(n: int, words_range: tuple[int, int] = (1, 24)) -> list[str]:
    """``n`` prompts of mixed length (1 to 24 words by default: ~3 to ~70 tokens), from text every Python has."""
    words = " ".join(corpus_texts()).split()
    low, high = words_range
    span = high - low + 1
    step = next(prime for prime in (29, 31, 37, 41, 43) if span % prime)  # prime to span: every length, shuffled
    prompts, start = [], 0
    for i in range(n):
        count = low + (i * step) % span
        prompts.append(" ".join(words[start : start + count]))
        start += count
    return prompts


def build(folder: Path, shape: str) -> Path:
    """The random-weight checkpoint of ``shape``, built once into ``folder``."""
    if not (folder / "config.json").is_file():
        build_checkpoint(folder, "neox-parallel", tokenizer=train_tokenizer(512), n_ctx=2048, **SHAPES[shape])
    return folder


class Workloads:
    """Loads what the methods need and runs each over all prompts."""

    def __init__(
        self,
        checkpoint: Path,
        device: str,
        dtype: torch.dtype,
        prompts: list[str],
        batch_size: int | str,
        methods=METHODS,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device, self.dtype, self.prompts, self.batch_size = device, dtype, prompts, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.token_ids = tokenize(self.tokenizer, prompts)
        self.n_tokens = sum(len(ids) for ids in self.token_ids)
        self.hf = self.bridge = None
        if {"bare", "seed"} & set(methods):
            # HF's default attention (SDPA), as the seed notebook loaded it.
            self.hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
        if {"funnel", "funnel-full", "heads"} & set(methods) or batch_size == "auto":
            self.bridge = load_model(str(checkpoint), device=device, dtype=dtype)
        if batch_size == "auto":  # what measure_gains would choose, after every model is loaded
            self.batch_size = resolve_batch_size("auto", self.bridge, self.token_ids, device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.batches = list(make_batches(self.token_ids, self.batch_size, pad_token_id=pad))

    def model_of(self, method: str):
        return self.hf if method in ("bare", "seed") else self.bridge

    @torch.inference_mode()
    def bare(self, batches=None):
        for batch in batches if batches is not None else self.batches:
            self.hf(
                input_ids=batch.tokens.to(self.device),
                attention_mask=batch.attention_mask.to(self.device),
                use_cache=False,
            )

    def seed(self, prompts=None):
        seed_reference(self.hf, self.tokenizer, prompts if prompts is not None else self.prompts)

    def funnel(self, prompts=None):
        measure_gains(
            self.bridge, prompts if prompts is not None else self.prompts, batch_size=self.batch_size, progress=False
        )

    def funnel_full(self, prompts=None):
        with full_forward():
            self.funnel(prompts)

    def heads(self, prompts=None):
        head_gains(
            self.bridge, prompts if prompts is not None else self.prompts, batch_size=self.batch_size, progress=False
        )

    def run(self, method: str):
        getattr(self, method.replace("-", "_"))()

    def warm_up(self, method: str):
        """One batch's worth (kernels chosen, lazy state built), not timed."""
        first = self.batches[0]
        prompts = [self.prompts[i] for i in first.indices]
        if method == "bare":
            self.bare([first])
        else:
            getattr(self, method.replace("-", "_"))(prompts)
        self.synchronize()

    def synchronize(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


@contextlib.contextmanager
def full_forward():
    saved = engine_module.STOP_EARLY
    engine_module.STOP_EARLY = False
    try:
        yield
    finally:
        engine_module.STOP_EARLY = saved


def time_methods(work: Workloads, methods, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Wall-clock and CPU seconds per full run of each method: interleaved rounds, the order rotating.

    CPU time (``time.process_time``) counts only the time this process ran: on a shared machine it
    is the steadier measure of what a method costs; wall-clock time is what a user waits.
    """
    for method in methods:
        work.warm_up(method)
    times = {"wall": {method: [] for method in methods}, "cpu": {method: [] for method in methods}}
    for round_number in range(rounds):
        order = methods[round_number % len(methods) :] + methods[: round_number % len(methods)]
        for method in order:
            gc.collect()
            work.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            work.run(method)
            work.synchronize()
            times["wall"][method].append(time.perf_counter() - wall)
            times["cpu"][method].append(time.process_time() - cpu)
        print(
            f"  round {round_number + 1}/{rounds}: "
            + ", ".join(f"{m} {times['wall'][m][-1]:.2f}s (CPU {times['cpu'][m][-1]:.2f}s)" for m in methods),
            file=sys.stderr,
            flush=True,
        )
    return times


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_worker(args) -> None:
    """In a fresh process: load one method's model, warm up, reset the RSS peak, run, print JSON."""
    dtype = getattr(torch, args.dtype)
    work = Workloads(
        Path(args.checkpoint),
        "cpu",
        dtype,
        bench_prompts(args.n_prompts, args.words),
        args.batch_size,
        methods=(args.memory_worker,),
    )
    work.warm_up(args.memory_worker)
    gc.collect()
    loaded = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS, to the current RSS
    work.run(args.memory_worker)
    peak = _status_kib("VmHWM")
    print(json.dumps({"loaded_mib": loaded / 1024, "peak_mib": peak / 1024}))


# glibc's default malloc keeps memory a method has freed: after the first free of a large (mmap'ed)
# block it raises its mmap threshold to that size, later blocks of that size come from the heap, and a
# freed block in the middle of the heap is not returned. Peak RSS then depends on the order of
# allocations more than on what a method holds (measured on the launch-bound case: a bare HF forward
# peaks 47 MiB above its model under the default and 22 MiB with this setting; measure_gains 24–31
# and 24, from one run to the next). The memory targets are judged with a fixed threshold and
# immediate trimming, so that freed memory goes back at once; the default's figure is printed beside.
RETURNING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}


def cpu_memory(args, checkpoint: Path, methods) -> dict[str, dict]:
    """Per method: RSS after loading and its peak over one run (MiB), with ``RETURNING_MALLOC`` and,
    as ``default_*``, with glibc's default malloc; each in a fresh process."""
    result = {}
    for method in methods:
        command = [
            sys.executable,
            __file__,
            "--memory-worker",
            method,
            "--checkpoint",
            str(checkpoint),
            "--dtype",
            args.dtype,
            "--n-prompts",
            str(args.n_prompts),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
            "--words",
            f"{args.words[0]}-{args.words[1]}",
        ]
        default_env = {name: value for name, value in os.environ.items() if name not in RETURNING_MALLOC}
        runs = {}
        for kind, env in (("returning", {**default_env, **RETURNING_MALLOC}), ("default", default_env)):
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            runs[kind] = json.loads(output.strip().splitlines()[-1])
        result[method] = {**runs["returning"], **{f"default_{key}": value for key, value in runs["default"].items()}}
        print(
            f"  memory {method}: {result[method]['peak_mib']:.0f} MiB peak RSS "
            f"({result[method]['default_peak_mib']:.0f} with glibc's default malloc)",
            file=sys.stderr,
            flush=True,
        )
    return result


def cuda_memory(work: Workloads, methods) -> dict[str, dict]:
    """Peak allocated over one run; the other models' weights are left out (each counts its own)."""
    result = {}
    for method in methods:
        model = work.model_of(method)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        work.run(method)
        torch.cuda.synchronize()
        above = torch.cuda.max_memory_allocated() - before
        result[method] = {"loaded_mib": weights / 2**20, "peak_mib": (weights + above) / 2**20}
    return result


def machine() -> str:
    if torch.cuda.is_available() and torch.cuda.device_count():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores"


def report(args, work: Workloads, times, memory, load_times=None) -> dict:
    shape = SHAPES[args.shape]
    cuda = args.device.startswith("cuda")
    methods = list(times["wall"])
    median = {kind: {m: statistics.median(t) for m, t in per_method.items()} for kind, per_method in times.items()}
    rate = {
        kind: {m: work.n_tokens / seconds for m, seconds in per_method.items()} for kind, per_method in median.items()
    }

    def speedup(method, kind):
        """Median over rounds of this method's time ÷ measure_gains' in the same round.

        Paired by round, so that a round slowed by other work on the machine slows both alike.
        """
        return statistics.median(t / f for t, f in zip(times[kind][method], times[kind]["funnel"], strict=True))

    lengths = [len(ids) for ids in work.token_ids]
    memory_kind = "peak RSS (MiB), freed memory returned" if not cuda else "peak allocated (MiB)"
    lines = [
        f"{args.shape} shape ({shape['n_layers']} layers, d_model {shape['d_model']}, {shape['n_heads']} heads, "
        f"vocab {shape['vocab_size']}), random weights, {args.dtype} on {args.device}: {machine()}"
        + (f", {args.threads} torch thread(s) used" if args.threads else ""),
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"transformer_lens {version('transformer-lens')}",
        f"{len(work.prompts)} prompts, {work.n_tokens} tokens ({min(lengths)} to {max(lengths)} per prompt), "
        f"batch size {args.batch_size}{' (auto)' if getattr(args, 'batch_size_requested', None) == 'auto' else ''}, "
        f"padding {padding_fraction(make_batches(work.token_ids, args.batch_size)):.1%}; "
        f"{args.rounds} interleaved rounds: tokens/s from the median time, ratios the median of each round's ratio",
        "",
    ]
    header = ["method", "tokens/s", "time ÷ measure_gains'"]
    if not cuda:
        header += ["tokens per CPU-second", "CPU time ÷ measure_gains'"]
    header += [memory_kind, "of which above the loaded model"] + ([] if cuda else ["above it, glibc's default malloc"])
    lines += ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for method in methods:
        row = [LABELS[method], f"{rate['wall'][method]:.0f}", f"{speedup(method, 'wall'):.2f}"]
        if not cuda:
            row += [f"{rate['cpu'][method]:.0f}", f"{speedup(method, 'cpu'):.2f}"]
        if method in memory:
            row += [
                f"{memory[method]['peak_mib']:.0f}",
                f"{memory[method]['peak_mib'] - memory[method]['loaded_mib']:.0f}",
            ]
            if not cuda:
                row.append(f"{memory[method]['default_peak_mib'] - memory[method]['default_loaded_mib']:.0f}")
        else:
            row += ["—"] * (len(header) - len(row))
        lines.append("| " + " | ".join(row) + " |")

    checks = []  # (label, wall-clock value, CPU-time value or None, relation, target)
    launch = args.case == "launch"
    if "bare" in methods:
        checks.append(
            (
                "measure_gains tokens/s ÷ bare forward's",
                speedup("bare", "wall"),
                None if cuda else speedup("bare", "cpu"),
                "≥",
                TARGET_VS_BARE_GPU if cuda else TARGET_VS_BARE_LAUNCH if launch else TARGET_VS_BARE,
            )
        )
    if "bare" in methods and "heads" in methods:
        heads_ratio = lambda kind: statistics.median(  # noqa: E731
            b / h for b, h in zip(times[kind]["bare"], times[kind]["heads"], strict=True)
        )
        checks.append(
            (
                "head_gains (every layer) tokens/s ÷ bare forward's",
                heads_ratio("wall"),
                None if cuda else heads_ratio("cpu"),
                "≥",
                TARGET_HEADS_VS_BARE,
            )
        )
    if load_times:
        load_ratio = lambda kind: statistics.median(  # noqa: E731
            f / h for f, h in zip(load_times[kind]["funnel"], load_times[kind]["hf"], strict=True)
        )
        checks.append(
            (
                "load_model time ÷ AutoModelForCausalLM.from_pretrained's",
                load_ratio("wall"),
                None if cuda else load_ratio("cpu"),
                "≤",
                TARGET_LOAD,
            )
        )
        if "bridge" in load_times["wall"]:
            share = lambda kind: statistics.median(  # noqa: E731
                b / f for b, f in zip(load_times[kind]["bridge"], load_times[kind]["funnel"], strict=True)
            )
            checks.append(
                (
                    "of load_model's time, building TransformerLens' bridge (TransformerBridge.__init__, "
                    "compatibility mode)",
                    share("wall"),
                    None if cuda else share("cpu"),
                    "",
                    None,
                )
            )
    if "seed" in methods:
        checks.append(
            (
                "measure_gains tokens/s ÷ seed loop's",
                speedup("seed", "wall"),
                None if cuda else speedup("seed", "cpu"),
                "≥",
                TARGET_VS_SEED if not cuda else None,
            )
        )
    if "funnel-full" in methods:
        checks.append(
            (
                "early stop: full-forward time ÷ measure_gains'",
                speedup("funnel-full", "wall"),
                None if cuda else speedup("funnel-full", "cpu"),
                "",
                None,
            )
        )
    if "bare" in memory and "funnel" in memory:
        checks.append(
            (
                "measure_gains peak memory ÷ bare forward's",
                memory["funnel"]["peak_mib"] / memory["bare"]["peak_mib"],
                None,
                "≤",
                TARGET_MEMORY_GPU if cuda else TARGET_MEMORY,
            )
        )
        checks.append(
            (
                "load_model memory after loading ÷ from_pretrained's (RSS after load and one warm-up batch)",
                memory["funnel"]["loaded_mib"] / memory["bare"]["loaded_mib"],
                None,
                "",
                None,
            )
        )
    if "heads" in memory and "funnel" in memory:
        shape = SHAPES[args.shape]
        # What head_gains holds beyond measure_gains: its float64 sums [prompt, layer, head] × 2, and one
        # layer's per-head outputs at the largest batch: z and z·G in float64, z·W_O pulled back in
        # float32, each [batch, pos, head, d_head] (head · d_head = d_model).
        largest = max(batch.tokens.numel() for batch in work.batches)
        outputs_mib = (
            2 * 8 * len(work.prompts) * shape["n_layers"] * shape["n_heads"] + largest * shape["d_model"] * (8 + 8 + 4)
        ) / 2**20
        above = lambda method: memory[method]["peak_mib"] - memory[method]["loaded_mib"]  # noqa: E731
        checks.append(
            (
                f"head_gains peak above the model − measure_gains' (MiB; its per-head outputs: {outputs_mib:.1f})",
                above("heads") - above("funnel"),
                None,
                "≤",
                round(outputs_mib, 1),
            )
        )
    lines.append("")
    for label, value, cpu_value, relation, target in checks:
        text = f"{label}: {value:.2f}" + ("" if cpu_value is None else f" (CPU time: {cpu_value:.2f})")
        if target is not None:
            judged = value if cpu_value is None else cpu_value  # CPU time on the CPU: steadier on a shared machine
            met = judged >= target if relation == "≥" else judged <= target
            text += f" — target {relation} {target}: {'met' if met else 'NOT met'}"
        lines.append(text)
    print("\n".join(lines))
    return {
        "case": args.case,
        "shape": args.shape,
        **shape,
        "words": list(args.words),
        "device": args.device,
        "dtype": args.dtype,
        "machine": machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": version("transformer-lens"),
        "n_prompts": len(work.prompts),
        "n_tokens": work.n_tokens,
        "batch_size": args.batch_size,
        "batch_size_requested": str(getattr(args, "batch_size_requested", args.batch_size)),
        "rounds": args.rounds,
        "seconds": times,
        "median_seconds": median,
        "tokens_per_second": rate,
        "load_seconds": load_times or {},
        "memory_mib": memory,
        "ratios": {label: value for label, value, *_ in checks},
        "table": "\n".join(lines),
    }


def time_loading(checkpoint: Path, device: str, dtype: torch.dtype, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds to load the checkpoint with ``load_model`` and with HF's ``from_pretrained``, interleaved.

    Also ``bridge``: the part of each ``load_model`` spent building TransformerLens' bridge around
    the loaded HF model (``TransformerBridge.__init__`` and ``enable_compatibility_mode``, timed
    from inside the same calls).
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    loaders = {
        "hf": lambda: AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device),
        "funnel": lambda: load_model(str(checkpoint), device=device, dtype=dtype),
    }
    for load in loaders.values():  # warm-up: file cache, lazy imports
        load()
    times = {"wall": {name: [] for name in (*loaders, "bridge")}, "cpu": {name: [] for name in (*loaders, "bridge")}}
    inside = {"wall": 0.0, "cpu": 0.0}

    def timed(method):
        def run(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                inside["wall"] += time.perf_counter() - wall
                inside["cpu"] += time.process_time() - cpu

        return run

    bridge_methods = {name: TransformerBridge.__dict__[name] for name in ("__init__", "enable_compatibility_mode")}
    try:
        for name, method in bridge_methods.items():
            setattr(TransformerBridge, name, timed(method))
        for round_number in range(rounds):
            for name in list(loaders) if round_number % 2 == 0 else list(loaders)[::-1]:
                gc.collect()
                inside.update(wall=0.0, cpu=0.0)
                wall, cpu = time.perf_counter(), time.process_time()
                model = loaders[name]()
                times["wall"][name].append(time.perf_counter() - wall)
                times["cpu"][name].append(time.process_time() - cpu)
                if name == "funnel":
                    times["wall"]["bridge"].append(inside["wall"])
                    times["cpu"]["bridge"].append(inside["cpu"])
                del model
    finally:
        for name, method in bridge_methods.items():
            setattr(TransformerBridge, name, method)
    print(
        "  load: " + ", ".join(f"{n} {statistics.median(t):.2f}s" for n, t in times["wall"].items()),
        file=sys.stderr,
        flush=True,
    )
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case",
        default="compute",
        choices=sorted(CASES),
        help="compute: Pythia-160m shape, 64 prompts, batch 8 (the default); launch: a 4-layer "
        "d_model-64 model, 256 prompts of 12-40 words, batch 32 (per-call overhead dominates)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="default float32 on the CPU, float16 on CUDA",
    )
    parser.add_argument(
        "--shape", default=None, choices=sorted(SHAPES), help="default the case's on the CPU, pythia-1.4b on CUDA"
    )
    parser.add_argument("--n-prompts", type=int, default=None, help="default the case's on the CPU, 256 on CUDA")
    parser.add_argument("--words", default=None, help="prompt lengths in words, e.g. 12-40 (default the case's)")
    parser.add_argument(
        "--batch-size",
        type=lambda text: text if text == "auto" else int(text),
        default=None,
        help="a number or auto (measure_gains' choice); default the case's on the CPU (8 or 32), 32 on CUDA",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on the CPU, see the module docstring; torch's own on CUDA)",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="folder to build the checkpoint in, or reuse (default: a temp dir)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--no-load", action="store_true", help="skip timing load_model against from_pretrained")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    case = CASES[args.case]
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    args.shape = args.shape or ("pythia-1.4b" if cuda and args.case == "compute" else case["shape"])
    args.n_prompts = args.n_prompts or (256 if cuda else case["n_prompts"])
    args.batch_size = args.batch_size or (32 if cuda else case["batch_size"])
    args.words = tuple(int(w) for w in args.words.split("-")) if args.words else case["words"]
    args.threads = args.threads or (None if cuda else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args)
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown or "funnel" not in methods:
        parser.error(f"--methods must include funnel and name only {', '.join(METHODS)}")

    with tempfile.TemporaryDirectory(prefix="bench_gains_") as scratch:
        checkpoint = build(Path(args.checkpoint or Path(scratch) / args.shape), args.shape)
        print(f"checkpoint {checkpoint}", file=sys.stderr, flush=True)
        work = Workloads(
            checkpoint,
            args.device,
            getattr(torch, args.dtype),
            bench_prompts(args.n_prompts, args.words),
            args.batch_size,
            methods=methods,
        )
        args.batch_size_requested, args.batch_size = args.batch_size, work.batch_size
        print(
            f"batch size {work.batch_size}" + (" (auto)" if args.batch_size_requested == "auto" else ""),
            file=sys.stderr,
            flush=True,
        )
        times = time_methods(work, methods, args.rounds)
        load_times = (
            None if args.no_load else time_loading(checkpoint, args.device, getattr(torch, args.dtype), args.rounds)
        )
        memory = {}
        if not args.no_memory:
            memory = cuda_memory(work, methods) if cuda else cpu_memory(args, checkpoint, methods)
        numbers = report(args, work, times, memory, load_times)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
