"""Training PPO agents on Brax tasks with any optax optimizer (learned ones included).

Several seeds train at once under vmap, in jitted chunks, like `train.train` for A2C.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from optim4rl.agents import ppo
from optim4rl.envs import brax_tasks
from optim4rl.training.checkpoint import RunCheckpoint
from optim4rl.training.curve import Curve
from optim4rl.training.loop import chunk_plan, run_chunks

CHUNKS = 20  # jitted scans per training run (one point of the return curve each)


def train(task: str, optimizer: optax.GradientTransformation, *, steps: int | None = None,
          seeds=(0,), settings: brax_tasks.PPOSettings | None = None, chunks: int = CHUNKS,
          backend: str | None = None, progress: Callable[[int, int, float], None] | None = None,
          grad_stat: Callable | None = None, eval_envs: int = 0,
          checkpoint: RunCheckpoint | None = None) -> Curve:
  """Train one fresh PPO agent per seed on the Brax `task` for `steps` environment steps
  (default: the task's budget). `settings` overrides the task's PPO settings; `backend` picks
  Brax's physics pipeline. Returns are undiscounted and unscaled: with `eval_envs` > 0, those
  of deterministic evaluation episodes in that many fresh envs after each chunk (as Brax
  reports), else those of the training episodes that ended in each chunk. With a `checkpoint`
  (a `RunCheckpoint`), the run resumes from and saves to it."""
  s = settings or brax_tasks.settings(task)
  env = brax_tasks.make(task, episode_length=s.episode_length, action_repeat=s.action_repeat,
                        backend=backend)
  ppo.check_settings(s, s.num_envs)
  nets = ppo.make_networks(env, s)
  keys = jnp.stack([jax.random.PRNGKey(int(k)) for k in seeds])
  state = jax.jit(jax.vmap(lambda k: ppo.init(env, nets, optimizer, k, s.num_envs)))(keys)

  step = lambda st: ppo.update(env, nets, optimizer, s, st, grad_stat)
  evaluate = None
  if eval_envs > 0:  # fresh envs from a key the training run never uses
    evaluate = jax.jit(jax.vmap(lambda st: ppo.evaluate(
        env, nets, st, jax.random.fold_in(st.key, 7), eval_envs, s)))
  return run_chunks(step, state, steps=steps or s.num_timesteps,
                    steps_per_update=ppo.env_steps_per_update(s), chunks=chunks,
                    progress=progress, evaluate=evaluate, checkpoint=checkpoint)


def optimizer_updates(task: str, steps: int | None = None,
                      settings: brax_tasks.PPOSettings | None = None, chunks: int = CHUNKS) -> int:
  """How many optimizer updates `train` makes with these arguments (for schedules): every
  iteration takes `num_updates_per_batch` epochs of `num_minibatches` steps."""
  s = settings or brax_tasks.settings(task)
  per_chunk, chunks = chunk_plan(steps or s.num_timesteps, ppo.env_steps_per_update(s), chunks)
  return per_chunk * chunks * s.num_updates_per_batch * s.num_minibatches


def small(task: str, **changes) -> brax_tasks.PPOSettings:
  """The task's settings scaled down for CPU runs and tests (fewer envs, smaller batches)."""
  base = dict(num_envs=64, batch_size=64, num_minibatches=4, num_updates_per_batch=2)
  return dataclasses.replace(brax_tasks.settings(task), **{**base, **changes})
