#!/usr/bin/env bash
# Everything a short lease of a GPU machine is for, in one run of bounded length: build
# the extension there (against that machine's torch), check it, run the GPU tests,
# measure every kernel case by case, profile them under Nsight Compute at BN-Inception
# 3a (32 clips x 8 frames), and run the benchmark. Each step's time is capped so the
# whole run ends inside BUDGET seconds; a step that runs out is cut off and reported.
#
#   OUT=results-dir BUDGET=560 [BASELINE=dir] bash tools/gpu_session.sh
#
# BASELINE: another checkout of the package (an earlier commit, say), built beside this
# one and profiled in the same run, so that before/after figures come from one card.
#
# Prints a compact summary (the device tool returns only the end of the output); full
# logs and JSON go to $OUT/logs.tar.gz (re-packed after every step, so a run cut off
# still returns what it did) and the main JSON files to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-session}"
BUDGET="${BUDGET:-560}"
LOGS="$(mktemp -d)"
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONUNBUFFERED=1 GATESHIFT_FORCE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
PY="${PYTHON:-python3}"

# step NAME LIMIT CMD...: runs CMD with its output in $LOGS/NAME.log, for at most LIMIT
# seconds and never past the budget; prints its status and the log's last TAIL lines.
step() {
  local name=$1 limit=$2 left
  shift 2
  left=$((BUDGET - ($(date +%s) - START)))
  if ((left < 15)); then
    echo "== $name: skipped, ${left}s of the budget left"
    return 1
  fi
  ((limit > left)) && limit=$left
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $(($(date +%s) - t0))s (limit ${limit}s)"
  tail -n "${TAIL:-6}" "$LOGS/$name.log" | cut -c1-220
  tar czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv,noheader
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print("torch", torch.__version__, "cuda", torch.version.cuda, p.name, p.multi_processor_count, "SMs", getattr(p, "L2_cache_size", 0) >> 20, "MB L2")'

# CUDA_HOME: the toolkit of the nvcc on PATH, as .ci/run finds it.
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME="$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  export CUDA_HOME="$(realpath "$CUDA_HOME")"
fi
if [ -n "${BASELINE:-}" ]; then  # both builds at once: each is bound by its slowest file
  (cd "$BASELINE" && MAX_JOBS=$((MAX_JOBS / 2)) timeout 300 "$PY" setup.py build_ext --inplace >"$LOGS/build-baseline.log" 2>&1) &
  MAX_JOBS=$((MAX_JOBS / 2)) TAIL=3 step build 300 "$PY" setup.py build_ext --inplace || { tail -n 40 "$LOGS/build.log"; exit 1; }
  wait || BASELINE=""
else
  TAIL=3 step build 300 "$PY" setup.py build_ext --inplace || { tail -n 40 "$LOGS/build.log"; exit 1; }
fi

# A wrong argument must raise, on the CPU and on the GPU; a crash here is examined in
# cuda-gdb (the image has no gdb), whose backtrace goes to the log.
RAISE='import sys, torch, gateshift
x = torch.randn(2, 3, 4, device=sys.argv[1])
try:
    torch.ops.gateshift.gate_shift_forward(x, torch.randn(2, 4, 3, 3, 3, device=sys.argv[1]), None, None, None, 8, True)
except ValueError as e:
    print(sys.argv[1], "raised:", str(e).splitlines()[0])'
# On 2026-11-30 the extension that the image's default compiler (/opt/gcc) built there
# crashed formatting error messages (in std::ostream, inside the extension): when it
# does, build it again with the system's compiler.
echo "compilers: CC=${CC:-} CXX=${CXX:-}; $(command -v gcc) $(gcc -dumpfullversion 2>/dev/null);" \
  "/usr/bin/g++ $(/usr/bin/g++ -dumpfullversion 2>/dev/null || echo absent)"
if ! "$PY" -c "$RAISE" cpu >/dev/null 2>&1 && [ -x /usr/bin/g++ ]; then
  CC=/usr/bin/gcc CXX=/usr/bin/g++ TAIL=3 step build-system-compiler 300 "$PY" setup.py build_ext --inplace --force
fi
for d in cpu cuda; do
  TAIL=2 step "raise-$d" 30 "$PY" -c "$RAISE" "$d" || TAIL=40 step "raise-$d-gdb" 75 cuda-gdb -q -batch \
    -ex "set pagination off" -ex run -ex bt --args "$PY" -c "$RAISE" "$d"
done

TAIL=4 step check 60 "$PY" -m gateshift.check --device cuda
grep -E "FAIL" "$LOGS/check.log" | head -n 20

TAIL=12 step pytest 110 "$PY" -m pytest -q -m cuda -p no:cacheprovider -n 8 --max-worker-restart 1000 --timeout 120 tests

KERNELS='regex:gate_shift|fuse_|batch_stats|sum_partials|temporal_shift'
METRICS=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,\
dram__bytes_write.sum,lts__t_bytes.sum,sm__warps_active.avg.pct_of_peak_sustained_active,\
l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum
for dtype in float32 bfloat16; do
  TAIL=0 step "ncu-$dtype" 75 ncu --clock-control none --nvtx --kernel-name "$KERNELS" --metrics "$METRICS" \
    --csv --page raw "$PY" -m gateshift.testing.gpu_profile --once --preset bn-inception --only 3a \
    --clips 32 --frames 8 --dtype "$dtype"
  "$PY" tools/ncu_summary.py "$LOGS/ncu-$dtype.log" --json "$OUT/ncu-3a-$dtype.json" 2>&1 | cut -c1-160
done

# Where the gate-shift kernels' warps wait (stall reasons, issue slots): one launch each of
# the forward and the backward at 3a, float32.
TAIL=0 step ncu-stalls 60 ncu --clock-control none --kernel-name regex:'gate_shift_(forward|backward)_kernel' \
  --launch-count 2 --section WarpStateStats --section SchedulerStats --section Occupancy \
  "$PY" -m gateshift.testing.gpu_profile --once --preset bn-inception --only 3a --clips 32 --frames 8 --ops gsm
grep -E "gate_shift|Stall|Warp Cycles|Issued|Eligible|No Eligible" "$LOGS/ncu-stalls.log" | head -n 24 | cut -c1-160

for dtype in float32 bfloat16; do
  TAIL=0 step "profile-$dtype" 60 "$PY" -m gateshift.testing.gpu_profile --preset bn-inception --clips 32 \
    --frames 8 --dtype "$dtype" --json "$OUT/profile-bn-inception-$dtype.json"
  if [ -n "${BASELINE:-}" ]; then
    (cd "$BASELINE" && TAIL=0 step "baseline-profile-$dtype" 60 "$PY" -m gateshift.testing.gpu_profile \
      --preset bn-inception --clips 32 --frames 8 --dtype "$dtype" --json "$LOGS/baseline-profile-$dtype.json")
    "$PY" -m gateshift.testing.gpu_profile --only 3a,4a,5a --compare "$LOGS/baseline-profile-$dtype.json" \
      "$OUT/profile-bn-inception-$dtype.json"
  else
    grep -E "^(gsm|gsf|tsm) .* 3a " "$LOGS/profile-$dtype.log" | sed 's/ on NVIDIA[^:]*//' | cut -c1-140
  fi
done

TAIL=8 step bench 90 "$PY" -m gateshift.bench --preset bn-inception --frames 8 --impls eager,fused \
  --network bninception-gsm --no-progress --json "$OUT/bench-bn-inception.json"
echo "== done in $(($(date +%s) - START))s"
