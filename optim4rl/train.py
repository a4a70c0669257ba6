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


class AgentState(NamedTuple):
  params: dict
  opt_state: optax.OptState
  env_states: gw.State
  key: jax.Array


class Curve(NamedTuple):
  steps: np.ndarray    # (chunks,) environment steps taken so far (all envs)
  returns: np.ndarray  # (seeds, chunks) mean unscaled episode return in each chunk (NaN: none)
  losses: np.ndarray   # (seeds, chunks) mean A2C loss in each chunk


def init_agent(world: gw.World, optimizer: optax.GradientTransformation, key,
               num_envs: int) -> AgentState:
  k_params, k_env, k_run = jax.random.split(key, 3)
  params = a2c.init_params(world, k_params)
  return AgentState(params, optimizer.init(params), a2c.reset_envs(world, k_env, num_envs),
                    k_run)


def update(world: gw.World, optimizer: optax.GradientTransformation, cfg: a2c.A2CConfig,
           state: AgentState):
  """One A2C update: (new state, (sum of episode returns, episodes ended, loss))."""
  key, k_roll = jax.random.split(state.key)
  env_states, rollout = a2c.collect(world, state.params, state.env_states, k_roll, cfg.rollout)
  grads, terms = jax.grad(lambda p: _total(world, p, rollout, cfg), has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ret_sum, episodes = a2c.episode_stats(rollout)
  return AgentState(params, opt_state, env_states, key), (ret_sum, episodes, terms["total"])


def _total(world, params, rollout, cfg):
  terms = a2c.losses(world, params, rollout, cfg)
  return terms["total"], terms


def train(world: gw.World, optimizer: optax.GradientTransformation, *, steps: int,
          num_envs: int = 512, seeds=(0,), cfg: a2c.A2CConfig = a2c.A2CConfig(),
          chunks: int = 50, progress: Callable[[int, int, float], None] | None = None) -> Curve:
  """Train one fresh agent per seed for `steps` environment steps (per seed, all envs).

  The run is split into `chunks` jitted scans; each chunk reports the mean return of the
  episodes that ended in it. `progress(chunk, env_steps, mean_return)` is called after each.
  """
  steps_per_update = num_envs * cfg.rollout
  updates = max(1, int(steps) // steps_per_update)
  per_chunk = -(-updates // max(1, min(chunks, updates)))  # ceil: never fewer steps than asked
  chunks = -(-updates // per_chunk)
  keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
  state = jax.jit(jax.vmap(lambda k: init_agent(world, optimizer, k, num_envs)))(keys)

  @jax.jit
  def run_chunk(state):
    def body(s, _):
      return jax.vmap(lambda x: update(world, optimizer, cfg, x))(s)
    state, (ret, eps, loss) = jax.lax.scan(body, state, length=per_chunk)
    return state, ret.sum(0), eps.sum(0), loss.mean(0)

  returns, losses = [], []
  for c in range(chunks):
    state, ret, eps, loss = run_chunk(state)
    ret, eps = np.asarray(ret), np.asarray(eps)
    returns.append(np.where(eps > 0, ret / np.maximum(eps, 1), np.nan))
    losses.append(np.asarray(loss))
    if progress is not None:
      progress(c, (c + 1) * per_chunk * steps_per_update, float(np.nanmean(returns[-1])))
  env_steps = np.arange(1, chunks + 1) * per_chunk * steps_per_update
  return Curve(env_steps, np.stack(returns, 1), np.stack(losses, 1))
