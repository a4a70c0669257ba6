#!/usr/bin/env bash
# Table 1 / Appendix C.3, a GPU run: meta-train Optim4RL with PPO directly on Ant, n = 2048
# training units (one agent and env each, minibatches of 8 trajectories, the smaller
# [64]*5 value net), reset interval m = 512, M = 4; units split over every visible device.
# Then train 10 fresh PPO agents on Ant with it and with Adam. Resumes if killed.
set -euo pipefail
RUN=${RUN:-runs/paper_ant}
DEVICES=${DEVICES:-$(python -c "import jax; print(len(jax.devices()))")}
python -m optim4rl meta-train --task ant --units 2048 --reset-interval 512 --batch-size 8 \
  --iterations 2000 --meta-lr 3e-4 --devices "$DEVICES" --out "$RUN/meta"
python -m optim4rl evaluate --task ant --seeds 10 \
  --optimizers adam@3e-4 "optim4rl:$RUN/meta/meta.npz@3e-4" --out "$RUN/evaluate"
