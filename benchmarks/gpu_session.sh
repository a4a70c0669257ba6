#!/usr/bin/env bash
# On the GPU machine (the device tool's `run`, carrying .whl from benchmarks/gpu_wheels.sh), in
# the repository root: install the carried wheels, build optim4rl with its CUDA library for
# sm_90a (H100/H200), then run one stage, writing logs and JSON to $OUT:
#   tests  tests/backends/test_gpu.py, both GPU backends against the reference (-m "not slow" unless
#          SLOW=1: the slow test holds more than 2^31 hidden-state elements)
#   bench  benchmarks/bench_gpu.py at P = 1e6, 1e7, 1e8 (SIZES to change)
#   ppo    Adam-PPO on Ant for STEPS environment steps (default 5e6), one seed
#   open   OPEN's update and flat step, reference, cuda and triton (benchmarks/bench_open.py)
#          at P = 1e5, 1e6, 1e7
# Each stage fits in one 10-minute call; the install is skipped when the machine is still warm.
#   bash benchmarks/gpu_session.sh tests
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:?usage: gpu_session.sh tests|bench|ppo|open}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

if [ ! -f /tmp/site/.optim4rl_installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  OPTIM4RL_CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES=90a \
    python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tee "$OUT/build.log"
  touch /tmp/site/.optim4rl_installed
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import optim4rl.backends as b; print('backends:', b.available_backends())"

case "$STAGE" in
  tests)
    marks=(-m "not slow"); [ "${SLOW:-0}" = 1 ] && marks=()
    python3 -m pytest -q tests/backends/test_gpu.py "${marks[@]}" 2>&1 | tee "$OUT/test_gpu.log" ;;
  bench)
    # shellcheck disable=SC2086
    python3 benchmarks/bench_gpu.py --sizes ${SIZES:-1e6 1e7 1e8} --out "$OUT/bench_gpu.json" \
      2>&1 | tee "$OUT/bench_gpu.log" ;;
  ppo)
    python3 -m optim4rl train --task ant --optimizer adam@3e-4 --steps "${STEPS:-5e6}" \
      2>&1 | tr '\r' '\n' | grep -v -E "it/s|s/it|step/s" | tee "$OUT/ppo_ant.log" ;;
  open)
    python3 benchmarks/bench_open.py --sizes 1e5 1e6 1e7 --repeats 20 \
      --out "$OUT/open_forward_gpu.json" 2>&1 | tee "$OUT/bench_open.log" ;;
  *)
    echo "unknown stage $STAGE: expected tests, bench, ppo or open" >&2; exit 2 ;;
esac
