"""Comparing optimizers: fresh agents per optimizer over several seeds."""
from __future__ import annotations

from typing import Callable

import optax

from optim4rl.evaluation.metrics import Result
from optim4rl.training.checkpoint import RunCheckpoint
from optim4rl.training.curve import Curve, final_returns


def evaluate(run: Callable[..., Curve], optimizers: dict[str, optax.GradientTransformation], *,
             seeds: int, progress: Callable[[str], Callable[[int, int, float], None]] | None = None,
             checkpoint: Callable[[str], RunCheckpoint] | None = None) -> list[Result]:
  """Train `seeds` fresh agents per optimizer (label -> optax optimizer).

  `run(tx, seeds=..., progress=..., checkpoint=...) -> Curve` trains them, e.g. `train.train`
  on a gridworld or `train_ppo.train` on a Brax task with everything but those arguments
  bound. `checkpoint(label)`, if given, makes each optimizer's run resumable."""
  results = []
  for label, tx in optimizers.items():
    ckpt = checkpoint(label) if checkpoint else None
    try:
      curve = run(tx, seeds=range(seeds), progress=progress(label) if progress else None,
                  checkpoint=ckpt)
    finally:
      if ckpt is not None:
        ckpt.close()
    results.append(Result(label, curve, final_returns(curve)))
  return results
