"""Meta-training a learned optimizer with PPO on Brax (Section 5, Table 1, Appendix C.3).

Each training unit is one PPO agent with its own envs, observation statistics and
learned-optimizer state. One iteration per unit: collect a batch of `M + 1` minibatches with
the current policy, take M inner PPO minibatch updates with the learned optimizer, and
score the updated agent by the PPO loss of the held-out last minibatch (the outer loss; the
paper's inner and outer losses are both the PPO loss). The meta-gradient is the mean over
units of the gradient of that loss w.r.t. the meta-parameters, through all M updates.

Pipeline resets as for the gridworlds: unit i restarts when t mod m == r_i. The units axis
can be split over devices (`jax.sharding.Mesh` with one axis "units"): each device runs its
block of units and the meta-gradients are summed across devices (`meta.meta_step`).
"""
from __future__ import annotations

import dataclasses

import jax
import optax
from jax.sharding import Mesh

from optim4rl.agents import ppo
from optim4rl.envs import brax_tasks
from optim4rl.meta.pipeline import meta_step, place_units
from optim4rl.meta.tasks import Tasks
from optim4rl.rules import get_rule
from optim4rl.transforms import init_state, learned_optimizer


@dataclasses.dataclass(frozen=True)
class PPOMetaConfig:
  task: str = "ant"
  rule: str = "optim4rl"
  units: int = 2048            # n; the paper's Ant run: 2048
  envs_per_unit: int = 1
  reset_interval: int = 512    # m; the paper's Ant run: 512 or 1024
  inner_updates: int = 4       # M
  agent_lr: float = 3e-4
  clip: float = 1.0
  batch_size: int = 8          # trajectories per minibatch, per unit
  unroll_length: int | None = None      # default: the task's
  value_hidden: tuple[int, ...] = (64, 64, 64, 64, 64)  # the paper's smaller value net for Ant
  iterations: int = 1000
  meta_lr: float = 3e-4
  meta_grad_clip: float = 1.0  # clip of the meta-gradient's global norm (<= 0: none)
  max_norm: float = -1.0       # > 0: rescale the meta-gradient to this norm
  average_decay: float = 0.0   # > 0: also keep an exponential moving average of the meta-params
  seed: int = 0
  backend: str | None = None   # learned-optimizer kernel backend
  physics: str | None = None   # Brax pipeline

  def __post_init__(self):
    brax_tasks.settings(self.task)
    get_rule(self.rule)
    if not 0.0 <= self.average_decay < 1.0:
      raise ValueError(f"average_decay must be in [0, 1), got {self.average_decay}")
    for field in ("units", "envs_per_unit", "reset_interval", "inner_updates", "batch_size",
                  "iterations"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
    self.settings()  # batch and env counts must fit together

  def settings(self) -> brax_tasks.PPOSettings:
    s = brax_tasks.settings(self.task)
    s = dataclasses.replace(s, num_envs=self.envs_per_unit, batch_size=self.batch_size,
                            num_minibatches=self.inner_updates + 1,
                            unroll_length=self.unroll_length or s.unroll_length,
                            value_hidden=self.value_hidden, learning_rate=self.agent_lr)
    ppo.check_settings(s, self.envs_per_unit)
    return s

  def env(self):
    s = self.settings()
    return brax_tasks.make(self.task, episode_length=s.episode_length,
                           action_repeat=s.action_repeat, backend=self.physics)


def _state_only(rule: str) -> optax.GradientTransformation:
  return optax.GradientTransformation(lambda params: init_state(rule, params), None)


def init_units(env, nets, cfg: PPOMetaConfig, keys) -> ppo.PPOState:
  """Fresh units, one per key (leading axis)."""
  return jax.vmap(lambda k: ppo.init(env, nets, _state_only(cfg.rule), k, cfg.envs_per_unit))(keys)


def unit_meta_loss(meta, unit: ppo.PPOState, env, nets, cfg: PPOMetaConfig,
                   s: brax_tasks.PPOSettings):
  """(outer loss, (unit after the iteration, (return sum, episodes))), differentiable
  w.r.t. `meta` through the M inner updates."""
  tx = learned_optimizer(meta, rule=cfg.rule, learning_rate=cfg.agent_lr, clip=cfg.clip,
                         backend=cfg.backend)
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


def make_meta_step(env, nets, cfg: PPOMetaConfig, mesh: Mesh | None = None):
  """`step(meta, units, t, key) -> (mean meta-gradient, units, (return sum, episodes))`,
  with the units split over `mesh`'s devices if given."""
  s = cfg.settings()
  return meta_step(lambda m, u: unit_meta_loss(m, u, env, nets, cfg, s),
                   lambda keys: init_units(env, nets, cfg, keys), cfg, mesh)


def tasks(cfg: PPOMetaConfig, mesh: Mesh | None = None):
  """The PPO task for `meta_train.meta_train` (one task: cfg.task)."""
  env, s = cfg.env(), cfg.settings()
  nets = ppo.make_networks(env, s)

  def init(key):
    key, k_units = jax.random.split(key)
    units = init_units(env, nets, cfg, jax.random.split(k_units, cfg.units))
    return key, (place_units(units, mesh),)

  # Each unit collects one PPO batch (M + 1 minibatches) per iteration.
  return Tasks([cfg.task], init, [jax.jit(make_meta_step(env, nets, cfg, mesh))],
               cfg.units * ppo.env_steps_per_update(s), mesh)
