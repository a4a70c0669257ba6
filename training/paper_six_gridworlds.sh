#!/usr/bin/env bash
# Section 6.2 / Appendix C.4: meta-train one Optim4RL on the six gridworlds at once with the
# tables' reward scales and per-world agent learning rates, then test it on big_dense_long.
set -euo pipefail
RUN=${RUN:-runs/paper_six}
python -m optim4rl meta-train \
  --worlds small_dense_long small_dense_short big_sparse_short big_dense_short big_sparse_long big_dense_long \
  --lrs 1e-3 3e-3 3e-3 3e-3 1e-3 3e-3 --reward-scale paper \
  --units 512 --reset-interval 288 --iterations 600 --meta-lr 3e-4 --max-norm 0.5 --out "$RUN/meta"
python -m optim4rl evaluate --world big_dense_long --seeds 10 --steps 3e7 \
  --optimizers adam@3e-3 "optim4rl:$RUN/meta/meta.npz@3e-3" --out "$RUN/evaluate"
