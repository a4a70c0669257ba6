#!/usr/bin/env bash
# Section 6.1 / Appendix C.3 at the paper's scale (a GPU run): n = 512 training units with
# one world each, reset interval m = 256, M = 4, agent learning rate 1e-2, 30M steps per
# evaluation agent, 10 seeds. Resumes from its checkpoint if killed.
set -euo pipefail
RUN=${RUN:-runs/paper_sds}
python -m optim4rl meta-train --worlds small_dense_short --units 512 --envs-per-unit 1 \
  --reset-interval 256 --iterations 600 --meta-lr 1e-3 --lrs 1e-2 --out "$RUN/meta"
python -m optim4rl evaluate --world small_dense_short --seeds 10 --steps 3e7 \
  --optimizers adam@1e-2 rmsprop@3e-3 "optim4rl:$RUN/meta/meta.npz@1e-2" --out "$RUN/evaluate"
