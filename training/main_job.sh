#!/usr/bin/env bash
# The main job at CPU size (about 4.5 minutes on 2 cores): meta-train Optim4RL with A2C on
# small_dense_short (agent learning rate 2e-2), scoring the meta-parameters every 25 iterations
# on held-out seeds and keeping the best; then train 10 fresh agents with it and with Adam,
# each at a constant learning rate and with steps decayed linearly to 0 (the learned rules do
# not anneal by themselves: benchmarks/layer_study.py), and compare each one's best setting.
# RULE=optim4rl_odd runs the odd-symmetric variant.
# Scale up with the paper's settings in training/paper_small_dense_short.sh.
set -euo pipefail
RUN=${RUN:-runs/main}
SEED=${SEED:-0}
RULE=${RULE:-optim4rl}
python -m optim4rl meta-train --rule "$RULE" --worlds small_dense_short --units 32 --envs-per-unit 16 \
  --reset-interval 64 --iterations 200 --meta-lr 3e-4 --lrs 2e-2 --validate-every 25 \
  --seed "$SEED" --out "$RUN/meta"
META="$RULE:$RUN/meta/meta_best.npz"
python -m optim4rl evaluate --world small_dense_short --seeds 10 --steps 3e6 \
  --optimizers adam@2e-2 adam@3e-2 adam@5e-2:linear adam@7e-2:linear \
  "$META@2.5e-2" "$META@4e-2:linear" "$META@5e-2:linear" \
  --out "$RUN/evaluate"
