"""Meta-training a learned optimizer with PPO on Brax (Section 5, Table 1, Appendix C.3).

Each training unit is one PPO agent with its own envs, observation statistics and
learned-optimizer state. One iteration per unit: collect a batch of `M + 1` minibatches with
the current policy, take M inner PPO minibatch updates with the learned optimizer, and
score the updated agent by the PPO loss of the held-out last minibatch (the outer loss; the
paper's inner and outer losses are both the PPO loss). The meta-gradient is the mean over
units of the gradient of that loss w.r.t. the meta-parameters, through all M updates.

Pipeline resets as for the gridworlds: unit i restarts when t mod m == r_i. The units axis
can be split over devices (`jax.sharding.Mesh` with one axis "units"): each device runs its
block of units and the meta-gradients are summed across devices.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optim4rl.agents import ppo
from optim4rl.envs import brax_tasks
from optim4rl.meta import rescale, reset_offsets
from optim4rl.rules import get_rule
from optim4rl.transform import init_state, learned_optimizer


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


def _local_step(meta, units, fresh, due, env, nets, cfg, s):
  """Resets and summed meta-gradient over this block of units."""
  units = jax.tree.map(
      lambda f, o: jnp.where(due.reshape(due.shape + (1,) * (o.ndim - 1)), f, o), fresh, units)
  grad_fn = jax.grad(lambda m, u: unit_meta_loss(m, u, env, nets, cfg, s), has_aux=True)
  grads, (units, (ret, eps)) = jax.vmap(grad_fn, (None, 0))(meta, units)
  return jax.tree.map(lambda g: jnp.sum(g, axis=0), grads), units, jnp.stack([ret.sum(), eps.sum()])


def make_meta_step(env, nets, cfg: PPOMetaConfig, mesh: Mesh | None = None):
  """`step(meta, units, t, key) -> (mean meta-gradient, units, (return sum, episodes))`.

  With a `mesh` (axis "units"), units are split over its devices: each runs its block and
  the partial sums of meta-gradients are added across devices (`psum`).
  """
  s = cfg.settings()
  offsets = reset_offsets(cfg.units, cfg.reset_interval)
  if mesh is not None and cfg.units % mesh.size:
    raise ValueError(f"{cfg.units} units do not split evenly over {mesh.size} devices")

  def step(meta, units, t, key):
    fresh = init_units(env, nets, cfg, jax.random.split(key, cfg.units))
    due = (t % cfg.reset_interval) == offsets
    if mesh is None:
      grads, units, stats = _local_step(meta, units, fresh, due, env, nets, cfg, s)
    else:
      def local(meta, units, fresh, due):
        g, u, st = _local_step(meta, units, fresh, due, env, nets, cfg, s)
        return jax.lax.psum(g, "units"), u, jax.lax.psum(st, "units")
      grads, units, stats = jax.shard_map(
          local, mesh=mesh, in_specs=(P(), P("units"), P("units"), P("units")),
          out_specs=(P(), P("units"), P()),
          check_vma=False)(meta, units, fresh, due)  # Brax's solver loops fail the vma check
    grads = jax.tree.map(lambda g: g / cfg.units, grads)
    return rescale(grads, cfg.max_norm), units, (stats[0], stats[1])

  return step


def tasks(cfg: PPOMetaConfig, mesh: Mesh | None = None):
  """The PPO task for `meta_train.meta_train` (one task: cfg.task)."""
  from optim4rl.meta_train import Tasks
  env, s = cfg.env(), cfg.settings()
  nets = ppo.make_networks(env, s)

  def init(key):
    key, k_units = jax.random.split(key)
    units = init_units(env, nets, cfg, jax.random.split(k_units, cfg.units))
    if mesh is not None:
      units = jax.device_put(units, NamedSharding(mesh, P("units")))
    return key, (units,)

  per_iteration = cfg.units * (cfg.inner_updates + 1) * s.batch_size * s.unroll_length * s.action_repeat
  return Tasks([cfg.task], init, [jax.jit(make_meta_step(env, nets, cfg, mesh))], per_iteration,
               mesh)


def units_mesh(devices=None) -> Mesh:
  """A one-axis mesh ("units") over `devices` (default: all)."""
  import numpy as np
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("units",))
