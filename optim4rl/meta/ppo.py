"""The PPO plug-in: meta-training a learned optimizer with PPO on Brax (Section 5, Table 1,
Appendix C.3).

One task. Each training unit is one PPO agent with its own envs, observation statistics and
learned-optimizer state. One iteration per unit: collect a batch of `M + 1` minibatches with
the current policy, take M inner PPO minibatch updates with the learned optimizer, and
score the updated agent by the PPO loss of the held-out last minibatch (the outer loss; the
paper's inner and outer losses are both the PPO loss). The meta-gradient is the mean over
units of the gradient of that loss w.r.t. the meta-parameters, through all M updates.

Pipeline resets, averaging over units (optionally split over devices) and the meta-update are
the outer loop's (meta/pipeline.py, meta/iteration.py).
"""
from __future__ import annotations

import dataclasses

import jax
import optax

from optim4rl.agents import ppo
from optim4rl.envs import brax_tasks
from optim4rl.meta.config import MetaConfig, check_int, check_number
from optim4rl.meta.tasks import Task, Tasks
from optim4rl.transforms import init_state, learned_optimizer


@dataclasses.dataclass(frozen=True)
class BraxConfig:
  """The PPO plug-in's settings; the outer loop's (units, reset interval, meta-optimizer, ...)
  are a `MetaConfig`."""
  task: str = "ant"
  agent_lr: float = 3e-4
  batch_size: int = 8          # trajectories per minibatch, per unit
  unroll_length: int | None = None      # default: the task's
  value_hidden: tuple[int, ...] = (64, 64, 64, 64, 64)  # the paper's smaller value net for Ant
  physics: str | None = None   # Brax pipeline

  def __post_init__(self):
    brax_tasks.settings(self.task)  # raises a clear error for unknown or removed tasks
    check_int("batch_size", self.batch_size, 1)
    check_number("agent_lr", self.agent_lr, positive=True)
    if self.unroll_length is not None:
      check_int("unroll_length", self.unroll_length, 1)

  def settings(self, cfg: MetaConfig) -> brax_tasks.PPOSettings:
    """The task's PPO settings with one batch of M + 1 minibatches per unit; raises if the
    batch and cfg.envs_per_unit do not fit together."""
    s = brax_tasks.settings(self.task)
    s = dataclasses.replace(s, num_envs=cfg.envs_per_unit, batch_size=self.batch_size,
                            num_minibatches=cfg.inner_updates + 1,
                            unroll_length=self.unroll_length or s.unroll_length,
                            value_hidden=self.value_hidden, learning_rate=self.agent_lr)
    ppo.check_settings(s, cfg.envs_per_unit)
    return s

  def env(self):
    s = brax_tasks.settings(self.task)
    return brax_tasks.make(self.task, episode_length=s.episode_length,
                           action_repeat=s.action_repeat, backend=self.physics)

  def tasks(self, cfg: MetaConfig) -> Tasks:
    return Tasks((brax_task(cfg, self),))


def unit_meta_loss(meta, unit: ppo.PPOState, env, nets, cfg: MetaConfig, lr: float,
                   s: brax_tasks.PPOSettings):
  """(outer loss, (unit after the iteration, (return sum, episodes))), differentiable
  w.r.t. `meta` through the M inner updates."""
  tx = learned_optimizer(meta, rule=cfg.rule, learning_rate=lr, clip=cfg.clip,
                         backend=cfg.backend, hidden_dtype=cfg.hidden_dtype)
  key, k_roll, k_perm, k_loss = jax.random.split(unit.key, 4)
  env_state, data = ppo.collect(env, nets, unit.params, unit.normalizer, unit.env_state, k_roll, s)
  normalizer = ppo.observe(unit.normalizer, data, s)
  batches = ppo.minibatches(data, k_perm, cfg.inner_updates + 1)
  inner_batches = jax.tree.map(lambda x: x[:-1], batches)
  outer_batch = jax.tree.map(lambda x: x[-1], batches)
  keys = jax.random.split(k_loss, cfg.inner_updates + 1)

  def inner(carry, xs):
    params, opt_state = carry
    mb, k = xs
    grads, _ = jax.grad(lambda p: ppo.loss(nets, p, normalizer, mb, k, s), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, opt_state), _ = jax.lax.scan(inner, (unit.params, unit.opt_state),
                                        (inner_batches, keys[:-1]))
  outer, _ = ppo.loss(nets, params, normalizer, outer_batch, keys[-1], s)
  after = jax.lax.stop_gradient(ppo.PPOState(params, opt_state, normalizer, env_state, key))
  return outer, (after, ppo.episode_stats(data))


def brax_task(cfg: MetaConfig, bcfg: BraxConfig) -> Task:
  """PPO on bcfg.task; each unit collects one PPO batch (M + 1 minibatches) per iteration."""
  env, s = bcfg.env(), bcfg.settings(cfg)
  nets = ppo.make_networks(env, s)
  state_only = optax.GradientTransformation(
      lambda params: init_state(cfg.rule, params, learning_rate=bcfg.agent_lr,
                                hidden_dtype=cfg.hidden_dtype), None)
  return Task(
      name=bcfg.task,
      unit_loss=lambda meta, unit: unit_meta_loss(meta, unit, env, nets, cfg, bcfg.agent_lr, s),
      fresh_units=jax.vmap(lambda k: ppo.init(env, nets, state_only, k, cfg.envs_per_unit)),
      env_steps_per_iteration=cfg.units * ppo.env_steps_per_update(s))
