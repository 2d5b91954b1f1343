"""What do the effects cost? measure_effects against measure_gains, and its schemes against each other.

One process times, side by side and interleaved (rounds in rotating order, medians of each
round's ratio to ``measure_gains``), on one model and prompt set:

- ``gains``: ``measure_gains`` (one early-stopped pass per batch): the unit of cost;
- ``effects``: ``measure_effects`` as a user runs it (``stack="auto"``, ``executor="auto"``),
  every layer, the four default interventions: the gains' pass, the means' pass, and per batch
  one clean forward plus one per (layer, component, intervention);
- ``stack-N``: the same with N interventions stacked along the batch dimension per forward
  (N copies of the batch in one forward), the cheaper exact scheme the issue asks to measure;
- ``no-replay``: the fast HF runner without its replay of the clean forward's layer outputs (every
  intervened forward from layer 0);
- ``tl``: the interventions through the TransformerLens hooks only (``executor="transformer_lens"``),
  against the HF modules the fast runner changes;
- ``reference`` (opt in): the seed's method, ``reference.reference_effects``: HF forward hooks
  that change a module's output, one prompt and one intervention per forward.

    python benchmarks/bench_effects.py --model /tmp/smollm2-hf            # SmolLM2-135M on the CPU
    python benchmarks/bench_effects.py --case launch                       # a launch-bound shape

Every method runs the same prompts; ``--threads`` as in bench_gains.py (one torch thread by
default: on a shared small machine two threads wait at every operator's barrier).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from bench_gains import bench_prompts, build, machine  # noqa: E402

from funnel_tl import load_model, measure_gains  # noqa: E402
from funnel_tl.measure.effects import measure_effects  # noqa: E402
from funnel_tl.measure.interventions import DEFAULT_INTERVENTIONS  # noqa: E402

CASES = {
    # A model whose matrix products dominate (SmolLM2-135M's shape when no --model is given).
    "compute": dict(shape="pythia-160m", n_prompts=16, batch_size=8, words=(4, 24)),
    # Kernels so small that Python overhead per forward is the cost, as on a GPU.
    "launch": dict(shape="tiny-4l", n_prompts=32, batch_size=8, words=(12, 40)),
}
STACKS = (2, 4, 8)
LABELS = {
    "gains": "measure_gains",
    "effects": "measure_effects, defaults",
    "no-replay": "no replay (every forward from layer 0)",
    "tl": "TransformerLens hooks only",
    "reference": "seed-style reference (1 prompt, 1 intervention per forward)",
    **{f"stack-{n}": f"{n} interventions stacked per forward" for n in range(2, 65)},
}


def methods_for(args) -> list[str]:
    methods = ["gains", "effects", "no-replay"] + [f"stack-{n}" for n in args.stacks] + ["tl"]
    return methods + (["reference"] if args.reference else [])


def run(method: str, model, prompts, batch_size, hf=None, tokenizer=None):
    if method == "gains":
        return measure_gains(model, prompts, batch_size=batch_size, progress=False)
    if method == "reference":
        from funnel_tl.measure.interventions import parse_interventions
        from funnel_tl.testing.reference import reference_effects

        specs = [(spec.name, spec.kind, spec.factor) for spec in parse_interventions(DEFAULT_INTERVENTIONS)]
        return reference_effects(hf, tokenizer, prompts, specs)
    if method == "no-replay":
        from funnel_tl.measure import intervene

        saved, intervene.REPLAY_BYTES = intervene.REPLAY_BYTES, 0
        try:
            return measure_effects(model, prompts, batch_size=batch_size, progress=False)
        finally:
            intervene.REPLAY_BYTES = saved
    options = {"effects": {}, "tl": {"executor": "transformer_lens"}}.get(method)
    if options is None:
        options = {"stack": int(method.split("-")[1])}
    return measure_effects(model, prompts, batch_size=batch_size, progress=False, **options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="compute")
    parser.add_argument("--model", default=None, help="a model folder (default: the case's random-weight shape)")
    parser.add_argument("--n-prompts", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stacks", type=int, nargs="*", default=list(STACKS))
    parser.add_argument("--reference", action="store_true", help="also time the seed-style reference")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="where the case's random checkpoint is built")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    case = CASES[args.case]
    n_prompts = args.n_prompts or case["n_prompts"]
    batch_size = args.batch_size or case["batch_size"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        folder = Path(args.checkpoint or Path("/tmp") / f"funnel-bench-{case['shape']}")
        args.model = str(build(folder, case["shape"]))
    model = load_model(args.model, device="cpu", dtype="float32")
    prompts = bench_prompts(n_prompts, case["words"])
    hf = None
    if args.reference:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager").eval()
    methods = methods_for(args)
    tokenizer = model.funnel_tokenizer
    # Warm-up, light: lazy state built, the first forwards' allocations made (the CPU compiles nothing).
    measure_gains(model, prompts[:2], batch_size=1, progress=False)
    measure_effects(model, prompts[:2], interventions="zero", layers=[0], batch_size=1, progress=False)
    # CPU seconds (time.process_time, one torch thread) are what a method costs; wall seconds what a
    # user waits, which on a machine shared with other work also counts the others.
    times = {kind: {method: [] for method in methods} for kind in ("cpu", "wall")}
    for number in range(args.rounds):
        order = methods[number % len(methods) :] + methods[: number % len(methods)]
        for method in order:
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            result = run(method, model, prompts, batch_size, hf, tokenizer)
            times["cpu"][method].append(time.process_time() - cpu)
            times["wall"][method].append(time.perf_counter() - wall)
            if method == "effects":
                chosen = result.provenance
        print(
            f"  round {number + 1}/{args.rounds}: "
            + ", ".join(f"{m} {times['cpu'][m][-1]:.1f} CPU-s ({times['wall'][m][-1]:.1f}s)" for m in methods),
            file=sys.stderr,
            flush=True,
        )
    cpu = times["cpu"]
    ratio = {m: statistics.median(t / g for t, g in zip(cpu[m], cpu["gains"], strict=True)) for m in methods}
    vs_unstacked = {m: statistics.median(t / e for t, e in zip(cpu[m], cpu["effects"], strict=True)) for m in methods}
    n_layers = model.cfg.n_layers
    jobs = 2 * n_layers * len(DEFAULT_INTERVENTIONS)
    lines = [
        f"{Path(args.model).name} ({n_layers} layers, d_model {model.cfg.d_model}, vocab {model.cfg.d_vocab}), "
        f"float32 on the CPU: {machine()}, {torch.get_num_threads()} torch thread(s)",
        f"{n_prompts} prompts, batch size {batch_size}; {len(DEFAULT_INTERVENTIONS)} interventions x 2 components x "
        f"{n_layers} layers = {jobs} intervened forwards per batch; default run: executor {chosen['executor']}, "
        f"stack {chosen['stack']}; {args.rounds} interleaved round(s), ratios the median of each round's",
        "",
        "| method | median CPU seconds | CPU time ÷ measure_gains' | CPU time ÷ measure_effects' (default) | "
        "median wall seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for method in methods:
        lines.append(
            f"| {LABELS.get(method, method)} | {statistics.median(cpu[method]):.1f} | {ratio[method]:.1f} | "
            f"{vs_unstacked[method]:.2f} | {statistics.median(times['wall'][method]):.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "seconds": times,
                    "ratio_to_gains": ratio,
                    "table": table,
                    "n_prompts": n_prompts,
                    "model": args.model,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
