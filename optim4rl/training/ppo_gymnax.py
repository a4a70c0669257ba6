"""Training PPO agents on gymnax tasks (MinAtar) with any optax optimizer, learned ones included.

Several seeds train at once under vmap, in jitted chunks, resumable, as `training.ppo` does
for Brax. Returns are those of the training episodes that ended in each chunk (as PureJaxRL
and the OPEN paper report them).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from optim4rl.agents import ppo_gymnax as ppo
from optim4rl.envs import gymnax_tasks
from optim4rl.training.checkpoint import RunCheckpoint
from optim4rl.training.curve import Curve
from optim4rl.training.loop import chunk_plan, run_chunks

CHUNKS = 20  # jitted scans per training run (one point of the return curve each)


def train(task: str, optimizer: optax.GradientTransformation, *, steps: int | None = None,
          seeds=(0,), chunks: int = CHUNKS,
          progress: Callable[[int, int, float], None] | None = None,
          checkpoint: RunCheckpoint | None = None,
          settings: gymnax_tasks.PPOSettings | None = None) -> Curve:
  """Train one fresh PPO agent per seed on the gymnax `task` for `steps` environment steps
  (default: the task's budget). `optimizer` is used as given (learning rate and schedule are
  the caller's; `settings.learning_rate` is the task's suggestion); it may take the extra
  arguments `activations` and `key` (see `agents.ppo_gymnax`). `settings` overrides the
  task's PPO settings. With a `checkpoint` (a `RunCheckpoint`), the run resumes from and
  saves to it."""
  s = settings or gymnax_tasks.settings(task)
  env, env_params = gymnax_tasks.make(task)
  nets = ppo.make_networks(ppo.action_count(env, env_params), s)
  keys = jnp.stack([jax.random.PRNGKey(int(k)) for k in seeds])
  # One seed at a time (lax.map), not vmap: batched, the orthogonal initialisers' QR
  # factorisations (LAPACK custom calls) split their batch onto XLA:CPU's worker pool while
  # running on it, and two of them at once on a 2-core machine deadlock that pool.
  state = jax.jit(lambda ks: jax.lax.map(
      lambda k: ppo.init(env, env_params, nets, optimizer, k, s), ks))(keys)
  step = lambda st: ppo.update(env, env_params, nets, optimizer, s, st)
  return run_chunks(step, state, steps=steps or s.num_timesteps,
                    steps_per_update=ppo.env_steps_per_update(s), chunks=chunks,
                    progress=progress, checkpoint=checkpoint)


def optimizer_updates(task: str, steps: int | None = None,
                      settings: gymnax_tasks.PPOSettings | None = None,
                      chunks: int = CHUNKS) -> int:
  """How many optimizer updates `train` makes with these arguments (for schedules): every
  rollout takes `num_epochs` epochs of `num_minibatches` steps."""
  s = settings or gymnax_tasks.settings(task)
  per_chunk, chunks = chunk_plan(steps or s.num_timesteps, ppo.env_steps_per_update(s), chunks)
  return per_chunk * chunks * s.num_epochs * s.num_minibatches


def small(task: str, **changes) -> gymnax_tasks.PPOSettings:
  """The task's settings scaled down for CPU tests (8 envs, rollouts of 32 steps, 2 epochs of
  4 minibatches, hidden layers of 32)."""
  base = dict(num_envs=8, num_steps=32, num_epochs=2, num_minibatches=4, hidden=(32, 32))
  return dataclasses.replace(gymnax_tasks.settings(task), **{**base, **changes})
