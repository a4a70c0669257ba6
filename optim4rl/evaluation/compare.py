"""Comparing optimizers: fresh agents per optimizer over several seeds, optionally resumable."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

import optax

from optim4rl.evaluation.metrics import Result
from optim4rl.evaluation.specs import meta_file_hash, optimizer_for
from optim4rl.evaluation.trainers import Trainer
from optim4rl.training.checkpoint import RunCheckpoint
from optim4rl.training.files import RunLock
from optim4rl.training.curve import Curve, final_returns

Progress = Callable[[str], Callable[[int, int, float], None]]  # label -> progress(chunk, ...)


def evaluate(run: Callable[..., Curve], optimizers: dict[str, optax.GradientTransformation], *,
             seeds: int, progress: Progress | None = None,
             checkpoint: Callable[[str], RunCheckpoint] | None = None) -> list[Result]:
  """Train `seeds` fresh agents per optimizer (label -> optax optimizer).

  `run(tx, seeds=..., progress=..., checkpoint=...) -> Curve` trains them, e.g. `Trainer.run`
  of `trainers.make_trainer`, or `training.a2c.train` with everything but those arguments
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


def checkpoint_directory(root: str | Path, spec: str) -> Path:
  """The directory under `root` of the run of an optimizer spec: readable, short, and apart
  from every other spec's (the hash), whatever characters a path in the spec holds."""
  slug = re.sub(r"[^A-Za-z0-9.@-]+", "_", spec)[-60:]
  return Path(root) / f"{slug}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def evaluate_specs(trainer: Trainer, specs: list[str], *, seeds: int, directory: str | Path,
                   backend: str | None = None, progress: Progress | None = None
                   ) -> tuple[list[Result], dict[str, RunCheckpoint]]:
  """Evaluate optimizer specs (see `specs`) with `trainer` over `seeds` seeds, each spec's run
  resumable from `directory`/checkpoints/ (which one process at a time may use). Returns the
  results and each spec's (closed) checkpoint, whose `resumed_after` says how many chunks an
  earlier run had done."""
  # All built (and their meta files read) before any training, so a bad spec fails at once.
  optimizers = {spec: optimizer_for(spec, trainer.environment, updates=trainer.updates,
                                    open_plan=trainer.open_plan,
                                    backend=backend) for spec in specs}
  meta_hashes = {spec: meta_file_hash(spec) for spec in specs}
  checkpoints = {}

  def checkpoint(spec):  # one run per spec, named by everything its curve depends on
    identity = dict(environment=trainer.environment, steps=trainer.steps, seeds=seeds,
                    optimizer=spec, backend=backend, meta_sha256=meta_hashes[spec],
                    **trainer.settings)
    checkpoints[spec] = RunCheckpoint(checkpoint_directory(Path(directory) / "checkpoints", spec),
                                      identity)
    return checkpoints[spec]

  with RunLock(directory):  # one evaluation per directory at a time
    results = evaluate(trainer.run, optimizers, seeds=seeds, checkpoint=checkpoint,
                       progress=progress)
  return results, checkpoints
