"""Training A2C agents on gridworlds with any optax optimizer (learned ones included).

One agent acts in `num_envs` worlds at once; each update collects one rollout from all of
them and applies the optimizer to the mean gradient (as in the paper's A2C). Updates run in
jitted chunks (lax.scan), and several seeds train at once under vmap.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim4rl.agents import a2c
from optim4rl.envs import gridworld as gw
from optim4rl.training.checkpoint import RunCheckpoint
from optim4rl.training.curve import Curve
from optim4rl.training.loop import chunk_plan, run_chunks


CHUNKS = 50  # jitted scans per training run (one point of the return curve each)


class AgentState(NamedTuple):
  params: dict
  opt_state: optax.OptState
  env_states: gw.State
  key: jax.Array


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


def optimizer_updates(steps: int, num_envs: int = 512, cfg: a2c.A2CConfig = a2c.A2CConfig(),
                      chunks: int = CHUNKS) -> int:
  """How many optimizer updates `train` makes with these arguments (for schedules)."""
  per_chunk, chunks = chunk_plan(steps, num_envs * cfg.rollout, chunks)
  return per_chunk * chunks


