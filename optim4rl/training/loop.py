"""The chunked training loop shared by every agent: jitted scans of updates over a seed axis,
with progress reports and resumable checkpoints."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from optim4rl.training.checkpoint import RunCheckpoint
from optim4rl.training.curve import Curve, episode_means


def run_chunks(step: Callable, state, *, steps: int, steps_per_update: int, chunks: int,
               progress: Callable[[int, int, float], None] | None = None,
               evaluate: Callable | None = None,
               checkpoint: RunCheckpoint | None = None) -> Curve:
  """Run `step(state) -> (state, (return sum, episodes, loss, *stat))` over a leading seed
  axis of `state` for at least `steps` environment steps, in `chunks` jitted scans.

  A fourth output of `step`, if any, is summed per chunk into `Curve.stats`. If
  `evaluate(state) -> (seeds,)` is given, it scores the agents after each chunk and its
  returns replace those of the training episodes. With a `checkpoint`, the run resumes from
  its newest save and saves as it goes.
  """
  per_chunk, chunks = chunk_plan(steps, steps_per_update, chunks)
  returns, losses, stats, done = [], [], [], 0
  if checkpoint is not None:
    state, done, returns, losses, stats = checkpoint.restore(state, per_chunk, chunks)
    if done and progress is not None:
      _report(progress, done - 1, done * per_chunk * steps_per_update, returns[-1])

  @jax.jit
  def run_chunk(state):
    state, out = jax.lax.scan(lambda s, _: jax.vmap(step)(s), state, length=per_chunk)
    ret, eps, loss = out[:3]
    stat = out[3].sum(0) if len(out) > 3 else None
    return state, ret.sum(0), eps.sum(0), loss.mean(0), stat

  for c in range(done, chunks):
    state, ret, eps, loss, stat = run_chunk(state)
    ret, eps = np.asarray(ret), np.asarray(eps)
    returns.append(episode_means(ret, eps) if evaluate is None else np.asarray(evaluate(state)))
    losses.append(np.asarray(loss))
    stats.append(None if stat is None else np.asarray(stat))
    if checkpoint is not None:
      checkpoint.save(c + 1, state, returns, losses, stats, per_chunk=per_chunk, chunks=chunks)
    if progress is not None:
      _report(progress, c, (c + 1) * per_chunk * steps_per_update, returns[-1])
  env_steps = np.arange(1, chunks + 1) * per_chunk * steps_per_update
  return Curve(env_steps, np.stack(returns, 1), np.stack(losses, 1),
               None if stats[0] is None else np.stack(stats, 1))


def _report(progress: Callable[[int, int, float], None], chunk: int, env_steps: int,
            returns: np.ndarray):
  seen = returns[~np.isnan(returns)]
  progress(chunk, env_steps, float(seen.mean()) if len(seen) else np.nan)


def chunk_plan(steps: int, steps_per_update: int, chunks: int) -> tuple[int, int]:
  """(updates per chunk, chunks) of `run_chunks`: about `chunks` equal scans, never fewer
  environment steps than asked."""
  if not steps >= 1:  # NaN fails too
    raise ValueError(f"a run needs at least 1 environment step, got {steps}")
  updates = max(1, int(steps) // steps_per_update)
  per_chunk = -(-updates // max(1, min(chunks, updates)))  # ceil
  return per_chunk, -(-updates // per_chunk)
