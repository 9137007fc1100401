#!/usr/bin/env bash
# GPU check: train gpt2-124m for a few hundred iterations in each configuration that matters on this machine and
# print one JSON line per configuration with MFU, tokens/s and peak memory (from RUN/metrics.jsonl). About 6-8
# minutes on one H100; offline (the corpus is word salad from Python's help topics, tokenized with gpt2).
#
#   bash benchmarks/gpu_check.sh            configurations: default (bf16 where supported, else fp16; torch.compile
#                                           on), --no-compile, --dtype float16 (autocast + GradScaler), and DDP over
#                                           every GPU (--gpus N) when there are several
#   bash benchmarks/gpu_check.sh --smoke    the same plumbing at tiny scale on CPU (preset tiny, 5 iterations; the
#                                           CUDA-only configurations skipped): what tests/test_gpu_check.py runs
#
# Stdout is JSON lines only: the machine first, then a line per configuration ({"config", "mfu", "tokens_per_s",
# "ms_per_iter", "peak_mem_mb", ...}; "error" if it failed). Logs of each step go to stderr only when it fails.
# GPU_CHECK_ITERS overrides the iterations per configuration; PYTHON the interpreter (default .venv/bin/python).
# Record the figures in benchmarks/RESULTS.md ("GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export COOK_DATA_DIR="$WORK/data"
export PREFECT_HOME="${PREFECT_HOME:-$WORK/prefect}"  # cook's temporary Prefect API keeps its database here
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor}" TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$WORK/triton}"
export PYTHONUNBUFFERED=1

if (( SMOKE )); then
  PRESET=tiny ITERS=${GPU_CHECK_ITERS:-5} DOCS=200 WORDS=200 NGPU=0
  COMMON=(--device cpu --warmup 2 --eval-interval "$ITERS" --eval-iters 2)
else
  command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi here; use --smoke on a machine without a GPU" >&2; exit 2; }
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader >&2
  NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  (( NGPU > 0 )) || { echo "gpu_check: torch sees no CUDA device (a CPU build of torch?)" >&2; exit 2; }
  # batch 12 x 1024 tokens x 4 micro-steps per GPU: nanoGPT's per-GPU shape, with accumulation kept short
  PRESET=gpt2-124m ITERS=${GPU_CHECK_ITERS:-300} DOCS=3000 WORDS=800
  COMMON=(--device cuda --batch-size 12 --warmup 30 --eval-interval "$ITERS" --eval-iters 5)
fi
"$PY" benchmarks/gpu_check.py device

# failed STEP LOG: the log's tail to stderr
failed() { echo "gpu_check: $1 failed; the end of its log:" >&2; tail -n 30 "$2" >&2; }

"$PY" benchmarks/gpu_check.py text "$WORK/corpus.txt" --docs "$DOCS" --words "$WORDS"
if ! "$PY" -m flows.cli tokenize "$WORK/corpus.txt" --encoding gpt2 --val-fraction 0.05 --out "$WORK/tokens" \
    >"$WORK/tokenize.log" 2>&1; then
  failed tokenize "$WORK/tokenize.log"
  exit 1
fi

STATUS=0
# bench NAME FLAGS...: one fresh run of ITERS iterations with COMMON plus FLAGS, then its JSON line
bench() {
  local name=$1 run="$WORK/runs/$1" log="$WORK/$1.log" start=$SECONDS
  shift
  if "$PY" -m flows.cli train --data "$WORK/tokens" --run "$run" --preset "$PRESET" --chunks 1 \
      --iters-per-chunk "$ITERS" "${COMMON[@]}" "$@" >"$log" 2>&1; then
    "$PY" benchmarks/gpu_check.py summary "$run" --config "$name" --flags="$*" --wall $((SECONDS - start)) \
      --log "$log"
  else
    failed "configuration $name" "$log"
    "$PY" -c 'import json, sys; print(json.dumps({"config": sys.argv[1], "flags": " ".join(sys.argv[2:]), "error": "cook train failed (its log is above, on stderr)"}))' "$name" "$@"
    STATUS=1
  fi
}

bench default --grad-accum 4
bench no-compile --grad-accum 4 --no-compile
if (( ! SMOKE )); then
  bench float16 --grad-accum 4 --dtype float16
  if (( NGPU > 1 )); then
    bench "ddp-$NGPU" --grad-accum $((4 * NGPU)) --gpus "$NGPU"  # --grad-accum counts every GPU's micro-batches
  fi
fi
exit "$STATUS"
