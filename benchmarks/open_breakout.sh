#!/usr/bin/env bash
# The outside check of OPEN (issue 17): the authors' published meta-parameters, through our
# OPEN and our PPO, train Breakout-MinAtar agents for 1e7 steps (4 seeds); our Adam-PPO beside
# them at five learning rates, linearly decayed: 1e-3, 2e-3, 5e-3 (PureJaxRL's default), 1e-2
# (the best) and 2e-2. Resumable: run it again after a kill. About 20 min per OPEN spec and
# 8-10 min per Adam spec on 2 cores.
# (Runs of this sweep sometimes stalled at start on 2 cores: a deadlock of the vmapped PPO
# init, fixed since; docs/results.md, OPEN.)
#
#   bash benchmarks/open_breakout.sh [SPEC ...]     (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."
specs=("$@")
if [ ${#specs[@]} -eq 0 ]; then
  specs=(open:breakout open:multi adam@1e-3:linear adam@2e-3:linear adam@5e-3:linear
         adam@1e-2:linear adam@2e-2:linear)
fi
run=runs/open_breakout                     # checkpoints (not committed)
out=benchmarks/results/open_breakout       # what is committed
mkdir -p "$out"
python -m optim4rl evaluate --task Breakout-MinAtar --steps 1e7 --seeds 4 \
  --optimizers "${specs[@]}" --out "$run" | tee "$out/table.txt"
cp "$run/curves.csv" "$run/returns.png" "$out/"
