"""Do the gains hold on a GPU in half precision? measure_gains against the seed's method, and fp16 against fp32.

On a random-weight Pythia-1.4B-shaped checkpoint built locally (``funnel_tl.testing.toy``, no hub):

1. float32 on the device: measure_gains equals the seed's HF-hook loop (eager attention, as the
   bridge runs) to ``FLOAT32_TOLERANCE``, both definitions — the CPU tests' check, on the GPU.
2. float16: measure_gains equals the seed's loop run in float16 to ``FLOAT16_TOLERANCE``.
3. float16 gains equal float32 gains to ``HALF_VS_FLOAT32_TOLERANCE``.

Prints every worst relative deviation next to its tolerance, writes them as JSON, and exits 1 if
any check fails. For a lent GPU: ``python benchmarks/check_gpu_numbers.py --device cuda``;
``--device cpu --shape tiny`` tests this script's logic on any machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_gains import SHAPES, bench_prompts, build  # noqa: E402

from funnel_tl import load_model, measure_gains  # noqa: E402
from funnel_tl.testing.reference import reference_gains, seed_reference  # noqa: E402

# Same modules, same float32 norms; only op order differs (~1e-6 on the CPU in tests; TF32 is off).
FLOAT32_TOLERANCE = 1e-4
# Both paths round every activation to float16 (unit roundoff 4.9e-4), in different op orders
# (the bridge splits QKV and computes attention itself), over 24 layers; averaging over tokens and
# prompts shrinks the noise. 1e-2 leaves room for that and still catches a wrong hook (O(1)).
FLOAT16_TOLERANCE = 1e-2
# float16 against float32 compounds the same rounding once more.
HALF_VS_FLOAT32_TOLERANCE = 2e-2
COMPONENTS = ("attn", "mlp", "block")


def worst_relative(gains: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(gains[c] / expected[c] - 1))) for c in COMPONENTS)


def free(*objects):
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def hf_eager(checkpoint: Path, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype, attn_implementation="eager").to(device).eval()


def run_checks(checkpoint: Path, device: str, prompts: list[str], batch_size: int) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    checks, gains = [], {}
    for dtype in (torch.float32, torch.float16):
        name = str(dtype).removeprefix("torch.")
        start = time.perf_counter()
        hf = hf_eager(checkpoint, device, dtype)
        means = seed_reference(hf, tokenizer, prompts)
        free(hf)
        bridge = load_model(str(checkpoint), device=device, dtype=dtype)
        for definition in ("seed", "residual"):
            result = measure_gains(bridge, prompts, definition=definition, batch_size=batch_size, progress=False)
            gains[name, definition] = {c: result.gains(c) for c in COMPONENTS}
            finite = all(np.isfinite(result.gains(c)).all() for c in COMPONENTS)
            tolerance = FLOAT32_TOLERANCE if dtype == torch.float32 else FLOAT16_TOLERANCE
            deviation = worst_relative(gains[name, definition], reference_gains(means, definition))
            checks.append(
                {
                    "check": f"{name} measure_gains vs seed loop ({definition})",
                    "worst_relative": deviation,
                    "tolerance": tolerance,
                    "passed": finite and deviation <= tolerance,
                }
            )
        free(bridge)
        print(f"  {name}: {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    for definition in ("seed", "residual"):
        deviation = worst_relative(gains["float16", definition], gains["float32", definition])
        checks.append(
            {
                "check": f"float16 vs float32 measure_gains ({definition})",
                "worst_relative": deviation,
                "tolerance": HALF_VS_FLOAT32_TOLERANCE,
                "passed": deviation <= HALF_VS_FLOAT32_TOLERANCE,
            }
        )
    return checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="pythia-1.4b", choices=sorted(SHAPES))
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint", default=None, help="folder to build the checkpoint in, or reuse")
    parser.add_argument("--json", default=None, help="also write the checks to this JSON file")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="check_gpu_") as scratch:
        checkpoint = build(Path(args.checkpoint or Path(scratch) / args.shape), args.shape)
        checks = run_checks(checkpoint, args.device, bench_prompts(args.n_prompts), args.batch_size)
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"{args.shape} shape, random weights, {args.n_prompts} prompts, on {device_name}")
    for check in checks:
        print(
            f"{'ok  ' if check['passed'] else 'FAIL'} {check['check']}: worst relative deviation "
            f"{check['worst_relative']:.2e} (tolerance {check['tolerance']:g})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "device": device_name, "checks": checks}, indent=2))
    return 0 if all(check["passed"] for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
