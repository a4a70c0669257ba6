#!/usr/bin/env bash
# Section 6.2 (Figures 5-7) at the paper's scale, a GPU run: the six-gridworld Optim4RL of
# paper_six_gridworlds.sh (run it first, or set META) trains PPO agents on Brax tasks it never
# saw, 10 seeds, against Adam and RMSProp over the paper's learning-rate grid; then the
# agent-gradient distributions of the gridworlds and the Brax tasks, and their overlap.
# ur5e and grasp, used by the paper, are no longer part of Brax.
set -euo pipefail
RUN=${RUN:-runs/paper_generalization}
META=${META:-runs/paper_six/meta/meta.npz}
TASKS=${TASKS:-"ant humanoid halfcheetah hopper walker2d inverted_double_pendulum reacher pusher"}
LRS="3e-2 1e-2 3e-3 1e-3 3e-4 1e-4"
for task in $TASKS; do
  optimizers=()
  for lr in $LRS; do optimizers+=("adam@$lr" "rmsprop@$lr"); done
  for lr in 1e-3 3e-4 1e-4; do optimizers+=("optim4rl:$META@$lr"); done
  python -m optim4rl evaluate --task "$task" --seeds 10 --optimizers "${optimizers[@]}" \
    --out "$RUN/$task"
done
python -m optim4rl gradients \
  --worlds small_dense_long small_dense_short big_sparse_short big_dense_short big_sparse_long big_dense_long \
  --tasks $TASKS --world-steps 3e7 --task-steps 5e7 --out "$RUN/gradients"
