#!/usr/bin/env bash
# The GPU checks of issues 7 and 13, for a lent machine, in one command of at most ~6 minutes:
#   1. benchmarks/check_gpu_numbers.py: on a random-weight Pythia-1.4B-shaped checkpoint (built
#      there with funnel_tl.testing.toy, no hub), measure_gains equals the seed's HF-hook loop in float32
#      and in float16, and float16 gains equal float32 gains, each within a stated tolerance;
#   2. benchmarks/bench_gains.py --device cuda --dtype float16 on the same checkpoint, batch size 32:
#      bare HF forward, seed loop, measure_gains (fast executor), no-early-stop ablation,
#      head_gains over every layer, load_model vs from_pretrained, peak memory
#      (issue 13's goals: measure_gains >= 0.9x a bare forward, peak memory <= 1.1x);
#   3. the same with --batch-size auto (measure_gains' own choice from the free GPU memory).
# Everything lands in $OUT: env.txt, check.log, check.json, bench.log, bench.json, auto.log, auto.json.
# Each run's provenance names the executor that ran (hf-sdpa, hf or transformer_lens).
#
# On the device (torch and transformers there, transformer-lens not): from the repo root, with
# the wheels in .whl (transformer-lens 4.3.0, datasets, dill, multiprocess, plotly) carried:
#     bash benchmarks/gpu_check.sh
# i.e. the device tool's run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=360).
# The wheels, fetched here into the ignored .whl (Python 3.12, pure Python; see the device notes):
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#         transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 plotly==7.1.0
# (the image lacks these of what the run imports: transformer-lens needs datasets at import time,
# datasets needs dill and multiprocess; plotly is funnel_tl's figure library.)
# Here, to test this script's logic on the CPU (no install, a tiny shape, float16 on the CPU):
#     PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --cpu
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d -t gpu_check_XXXX)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--cpu" ]]; then
    device=cpu shape=tiny check_limit=120 bench_limit=120 auto_limit=60
    bench_options=(--n-prompts 16 --rounds 2 --no-memory --no-load)
    auto_options=(--n-prompts 16 --rounds 1 --no-memory --no-load --methods bare,funnel,heads)
else
    device=cuda shape=pythia-1.4b check_limit=120 bench_limit=150 auto_limit=80  # with install: about 6 minutes
    bench_options=(--rounds 3)
    auto_options=(--rounds 3 --no-memory --no-load --methods bare,funnel,heads)
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl: carry .whl (see benchmarks/gpu_check.sh)"; exit 2; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
checkpoint=/tmp/funnel_tl_bench_$shape  # built by the first step, reused by the second

{
    date -u
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PYTHON" -c "import sys, torch, transformers, transformer_lens; from importlib.metadata import version
print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__,
      '| transformer-lens', version('transformer-lens'), '| cuda', torch.cuda.is_available())"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== 1. numbers: measure_gains vs the seed loop, float16 vs float32 ($device, $shape)"
timeout "$check_limit" "$PYTHON" benchmarks/check_gpu_numbers.py --device "$device" --shape "$shape" \
    --checkpoint "$checkpoint" --json "$OUT/check.json" 2>&1 | grep -v "Warning\|warn(" | tee "$OUT/check.log"
check_status=${PIPESTATUS[0]}

echo "== 2. benchmark: bare forward, seed loop, measure_gains ($device float16, $shape)"
timeout "$bench_limit" "$PYTHON" benchmarks/bench_gains.py --device "$device" --dtype float16 --shape "$shape" \
    --checkpoint "$checkpoint" --json "$OUT/bench.json" "${bench_options[@]}" 2>&1 | grep -v "Warning\|warn(" \
    | tee "$OUT/bench.log"
bench_status=${PIPESTATUS[0]}

echo "== 3. benchmark with --batch-size auto ($device float16, $shape)"
timeout "$auto_limit" "$PYTHON" benchmarks/bench_gains.py --device "$device" --dtype float16 --shape "$shape" \
    --checkpoint "$checkpoint" --batch-size auto --json "$OUT/auto.json" "${auto_options[@]}" 2>&1 \
    | grep -v "Warning\|warn(" | tee "$OUT/auto.log"
auto_status=${PIPESTATUS[0]}

echo "== check exit $check_status (124: timed out), benchmark exit $bench_status, auto exit $auto_status; files in $OUT"
exit $(( check_status != 0 || bench_status != 0 || auto_status != 0 ))
