#!/usr/bin/env bash
# Search and retrain step benchmarks on one CUDA GPU, every preset, batch 64 and 256, within a time budget.
#
# Runs, each under `timeout` so the whole script ends within BUDGET_S seconds (default 290):
#   1. search_step.py, every preset (nni-stock + nni_darts_ext.list_strategies()), precision $PRECISION, eager,
#      at each batch in $BATCHES (width 16, 8 cells);
#   2. search_step.py, $COMPILE_PRESETS compiled (CUDA graphs: reduce-overhead) at the largest batch;
#   3. retrain_step.py (DARTS_V2, 20 cells x 36 channels, aux head, drop path, cutout) at each batch:
#      fp32 eager and $PRECISION compiled.
# JSON results go to $OUT_DIR (default runs/gpu); a summary line per run goes to stdout.
#
# Usage:
#   benchmarks/gpu.sh                                  # on the GPU machine
#   BENCH_DEVICE=cpu BENCH_TINY=1 benchmarks/gpu.sh    # rehearsal of the same path on CPU at tiny sizes
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${BENCH_DEVICE:-cuda}
OUT_DIR=${OUT_DIR:-runs/gpu}
BUDGET_S=${BUDGET_S:-290}
PRECISION=${PRECISION:-bf16-mixed}
COMPILE_PRESETS=${COMPILE_PRESETS:-nni-stock,first-order,pc-darts}
if [[ "${BENCH_TINY:-0}" == 1 ]]; then
  BATCHES=${BATCHES:-"2 4"}
  SEARCH_SIZE=(--width 4 --cells 3 --image-size 8 --steps 3 --warmup 1 --max-warmup 2 --matmul-size 128)
  RETRAIN_SIZE=(--width 4 --cells 3 --image-size 8 --steps 3 --warmup 1 --max-warmup 2 --matmul-size 128)
  PRESETS=${PRESETS:-nni-stock,first-order}
  COMPILE=${COMPILE:-0}
else
  BATCHES=${BATCHES:-"64 256"}
  SEARCH_SIZE=(--width 16 --cells 8 --image-size 32 --steps 5 --warmup 3 --matmul-size 8192)
  RETRAIN_SIZE=(--width 36 --cells 20 --image-size 32 --steps 5 --warmup 3 --matmul-size 8192)
  PRESETS=${PRESETS:-}
  COMPILE=${COMPILE:-1}
fi
THREADS=()
if [[ "$DEVICE" == cpu ]]; then THREADS=(--threads "${BENCH_THREADS:-1}"); fi
mkdir -p "$OUT_DIR"
START=$SECONDS
status=0

# run NAME CMD...: run CMD under the time left, report its outcome; never exceeds the budget.
run() {
  local name=$1; shift
  local left=$((BUDGET_S - (SECONDS - START)))
  if ((left < 10)); then echo "$name: skipped (budget of ${BUDGET_S}s spent)"; status=1; return; fi
  if timeout "$left" "$@" >"$OUT_DIR/$name.log" 2>&1; then
    echo "$name: ok ($((SECONDS - START))s elapsed)"
  else
    echo "$name: FAILED or timed out, see $OUT_DIR/$name.log"; status=1
  fi
}

preset_flag=()
if [[ -n "$PRESETS" ]]; then preset_flag=(--presets "$PRESETS"); fi
for batch in $BATCHES; do
  run "search_b${batch}_${PRECISION}" "$PY" benchmarks/search_step.py --device "$DEVICE" "${THREADS[@]}" \
    "${SEARCH_SIZE[@]}" --batch "$batch" --precision "$PRECISION" "${preset_flag[@]}" \
    --json "$OUT_DIR/search_b${batch}_${PRECISION}.json"
done
last_batch=${BATCHES##* }
if [[ "$COMPILE" == 1 ]]; then
  run "search_b${last_batch}_${PRECISION}_compiled" "$PY" benchmarks/search_step.py --device "$DEVICE" \
    "${THREADS[@]}" "${SEARCH_SIZE[@]}" --batch "$last_batch" --precision "$PRECISION" --compile \
    --presets "$COMPILE_PRESETS" --json "$OUT_DIR/search_b${last_batch}_${PRECISION}_compiled.json"
fi
for batch in $BATCHES; do
  run "retrain_b${batch}_fp32" "$PY" benchmarks/retrain_step.py --device "$DEVICE" "${THREADS[@]}" \
    "${RETRAIN_SIZE[@]}" --batch "$batch" --json "$OUT_DIR/retrain_b${batch}_fp32.json"
  compile_flag=()
  if [[ "$COMPILE" == 1 ]]; then compile_flag=(--compile); fi
  run "retrain_b${batch}_${PRECISION}" "$PY" benchmarks/retrain_step.py --device "$DEVICE" "${THREADS[@]}" \
    "${RETRAIN_SIZE[@]}" --batch "$batch" --precision "$PRECISION" "${compile_flag[@]}" \
    --json "$OUT_DIR/retrain_b${batch}_${PRECISION}.json"
done
echo "total $((SECONDS - START))s of ${BUDGET_S}s; results in $OUT_DIR"
exit $status
