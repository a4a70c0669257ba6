"""Training A2C agents on gridworlds with any optax optimizer (learned ones included).

One agent acts in `num_envs` worlds at once; each update collects one rollout from all of
them and applies the optimizer to the mean gradient (as in the paper's A2C). Updates run in
jitted chunks (lax.scan), and several seeds train at once under vmap.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim4rl.agents import a2c
from optim4rl.envs import gridworld as gw
from optim4rl.run_checkpoint import RunCheckpoint


CHUNKS = 50  # jitted scans per training run (one point of the return curve each)


class AgentState(NamedTuple):
  params: dict
  opt_state: optax.OptState
  env_states: gw.State
  key: jax.Array


class Curve(NamedTuple):
  steps: np.ndarray    # (chunks,) environment steps taken so far (all envs)
  returns: np.ndarray  # (seeds, chunks) mean unscaled episode return in each chunk (NaN: none)
  losses: np.ndarray   # (seeds, chunks) mean loss in each chunk
  stats: np.ndarray | None = None  # (seeds, chunks, ...) summed per-update statistics, if asked


def init_agent(world: gw.World, optimizer: optax.GradientTransformation, key,
               num_envs: int) -> AgentState:
  k_params, k_env, k_run = jax.random.split(key, 3)
  params = a2c.init_params(world, k_params)
  return AgentState(params, optimizer.init(params), a2c.reset_envs(world, k_env, num_envs),
                    k_run)


def update(world: gw.World, optimizer: optax.GradientTransformation, cfg: a2c.A2CConfig,
           state: AgentState, grad_stat: Callable | None = None):
  """One A2C update: (new state, (sum of episode returns, episodes ended, loss)), plus
  `grad_stat(grads)` as a fourth output if given (e.g. a histogram of the agent-gradients)."""
  key, k_roll = jax.random.split(state.key)
  env_states, rollout = a2c.collect(world, state.params, state.env_states, k_roll, cfg.rollout)
  grads, terms = jax.grad(lambda p: _total(world, p, rollout, cfg), has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ret_sum, episodes = a2c.episode_stats(rollout)
  out = (ret_sum, episodes, terms["total"])
  if grad_stat is not None:
    out += (grad_stat(grads),)
  return AgentState(params, opt_state, env_states, key), out


def _total(world, params, rollout, cfg):
  terms = a2c.losses(world, params, rollout, cfg)
  return terms["total"], terms


def train(world: gw.World, optimizer: optax.GradientTransformation, *, steps: int,
          num_envs: int = 512, seeds=(0,), cfg: a2c.A2CConfig = a2c.A2CConfig(),
          chunks: int = CHUNKS, progress: Callable[[int, int, float], None] | None = None,
          grad_stat: Callable | None = None, checkpoint: RunCheckpoint | None = None) -> Curve:
  """Train one fresh agent per seed for `steps` environment steps (per seed, all envs).

  The run is split into `chunks` jitted scans; each chunk reports the mean return of the
  episodes that ended in it. `progress(chunk, env_steps, mean_return)` is called after each.
  `grad_stat(grads)` (optional) is summed over each chunk's updates into `Curve.stats`.
  With a `checkpoint` (a `RunCheckpoint`), the run resumes from and saves to it.
  """
  keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
  state = jax.jit(jax.vmap(lambda k: init_agent(world, optimizer, k, num_envs)))(keys)
  step = lambda s: update(world, optimizer, cfg, s, grad_stat)
  return run_chunks(step, state, steps=steps, steps_per_update=num_envs * cfg.rollout,
                    chunks=chunks, progress=progress, checkpoint=checkpoint)


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
  updates = max(1, int(steps) // steps_per_update)
  per_chunk = -(-updates // max(1, min(chunks, updates)))  # ceil
  return per_chunk, -(-updates // per_chunk)


def optimizer_updates(steps: int, num_envs: int = 512, cfg: a2c.A2CConfig = a2c.A2CConfig(),
                      chunks: int = CHUNKS) -> int:
  """How many optimizer updates `train` makes with these arguments (for schedules)."""
  per_chunk, chunks = chunk_plan(steps, num_envs * cfg.rollout, chunks)
  return per_chunk * chunks


def episode_means(ret_sum: np.ndarray, episodes: np.ndarray) -> np.ndarray:
  """Mean episode return from sums and counts; NaN where no episode ended."""
  return np.where(episodes > 0, ret_sum / np.maximum(episodes, 1), np.nan)
