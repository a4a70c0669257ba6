"""Meta-training a learned optimizer on A2C in gridworlds (Sections 2.2 and 5, Appendix C).

n training units, each with its own agent, worlds and optimizer state, run under vmap. One
iteration per task: units due for a reset are reset (pipeline training: unit i resets when
t mod m == r_i, offsets r_i evenly spaced over [0, m-1]); each unit takes M inner A2C updates
with the learned optimizer, then the outer loss is the actor loss on its next rollout; the
meta-gradient is averaged over units (and over tasks), and Adam updates the meta-parameters.
The units axis can be split over devices (a `units_mesh`): each device runs its block of
units and the partial sums of meta-gradients are added across devices.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from optim4rl.agents import a2c
from optim4rl.envs import gridworld as gw
from optim4rl.meta.pipeline import meta_step, place_units
from optim4rl.meta.tasks import Tasks
from optim4rl.rules import get_rule
from optim4rl.schedules import SCHEDULES
from optim4rl.training.a2c import AgentState, init_agent, update
from optim4rl.training.curve import episode_means, last_tenth
from optim4rl.transforms import init_state, learned_optimizer


OUTER_LOSSES = ("actor", "total")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  worlds: tuple[str, ...] = ("small_dense_short",)
  agent_lrs: tuple[float, ...] = (1e-2,)  # agent learning rate, one per world
  rule: str = "optim4rl"
  units: int = 512               # training units n per world
  envs_per_unit: int = 1         # worlds each unit's agent acts in
  reset_interval: int = 256      # m, in iterations
  inner_updates: int = 4         # M
  outer_loss: str = "actor"      # A2C term of the outer loss: "actor" (Appendix C) or "total"
  agent_schedule: str = "constant"  # "linear": agents' steps decay to 0 over their lives
  iterations: int = 1000
  meta_lr: float = 1e-3
  meta_grad_clip: float = 1.0    # clip of the meta-gradient's global norm (<= 0: none)
  max_norm: float = -1.0         # > 0: rescale each task's meta-gradient to this norm
  average_decay: float = 0.0   # > 0: also keep an exponential moving average of the meta-params
  validate_every: int = 0        # > 0: score the meta-parameters every this many iterations
  validate_seeds: int = 4        # fresh agents per validation
  validate_steps: int = 3_000_000  # env steps per validation agent
  reward_scale: str = "auto"     # "auto": the paper's scales when several worlds, else 1
  clip: float = 1.0              # gradient clip c of the learned optimizer
  seed: int = 0
  backend: str | None = None

  def __post_init__(self):
    if not self.worlds:
      raise ValueError("meta-training needs at least one world")
    for name in self.worlds:
      gw.make(name)  # raises a clear error for unknown worlds
    if len(self.agent_lrs) not in (1, len(self.worlds)):
      raise ValueError(f"give one agent learning rate or one per world ({len(self.worlds)}), "
                       f"got {len(self.agent_lrs)}")
    get_rule(self.rule)
    if self.outer_loss not in OUTER_LOSSES:
      raise ValueError(f"unknown outer loss {self.outer_loss!r}; "
                       f"expected one of {OUTER_LOSSES}")
    if self.agent_schedule not in SCHEDULES:
      raise ValueError(f"unknown agent schedule {self.agent_schedule!r}; "
                       f"expected one of {SCHEDULES}")
    if not 0.0 <= self.average_decay < 1.0:
      raise ValueError(f"average_decay must be in [0, 1), got {self.average_decay}")
    if self.validate_every < 0:
      raise ValueError(f"validate_every must be >= 0, got {self.validate_every}")
    for field in ("units", "envs_per_unit", "reset_interval", "inner_updates", "iterations",
                  "validate_seeds", "validate_steps"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

  def world(self, i: int) -> gw.World:
    scale = self.reward_scale
    if scale == "auto":
      scale = "paper" if len(self.worlds) > 1 else 1.0
    return gw.make(self.worlds[i], scale)

  def agent_lr(self, i: int) -> float:
    return self.agent_lrs[i if len(self.agent_lrs) > 1 else 0]

  def agent_learning_rate(self, lr: float, updates: int) -> optax.ScalarOrSchedule:
    """`lr` over an agent's life of `updates` updates: constant, or with agent_schedule
    "linear" falling to 0 at its end (as `evaluate`'s linear schedule does), following the
    learned optimizer's own update count, which a reset sets back to 0."""
    return lr if self.agent_schedule == "constant" else optax.linear_schedule(lr, 0.0, updates)


# A training unit is an agent (parameters, learned-optimizer state, worlds, key).
Unit = AgentState


def init_unit(world: gw.World, rule: str, envs: int, key) -> Unit:
  """A fresh agent; only the optimizer state's shape depends on the rule, not on meta."""
  learned_state = optax.GradientTransformation(lambda params: init_state(rule, params), None)
  return init_agent(world, learned_state, key, envs)


def unit_meta_loss(meta, unit: Unit, world: gw.World, cfg: MetaConfig, lr: float,
                   agent_cfg: a2c.A2CConfig = a2c.A2CConfig()):
  """M inner A2C updates with the learned optimizer, then the outer loss (the actor loss, or
  with cfg.outer_loss="total" the whole A2C loss) of the next rollout.

  Returns (outer loss, (unit after the updates, (return sum, episodes))) and is
  differentiable w.r.t. `meta` through all M updates.
  """
  life = cfg.reset_interval * cfg.inner_updates  # updates between a unit's resets
  tx = learned_optimizer(meta, rule=cfg.rule, learning_rate=cfg.agent_learning_rate(lr, life),
                         clip=cfg.clip, backend=cfg.backend)

  def inner(u: Unit, _):
    u, (ret, eps, _) = update(world, tx, agent_cfg, u)
    return u, (ret, eps)

  unit, (ret, eps) = jax.lax.scan(inner, unit, length=cfg.inner_updates)
  key, k_roll = jax.random.split(unit.key)
  env_states, rollout = a2c.collect(world, unit.params, unit.env_states, k_roll, agent_cfg.rollout)
  outer = a2c.losses(world, unit.params, rollout, agent_cfg)[cfg.outer_loss]
  out_ret, out_eps = a2c.episode_stats(rollout)
  after = jax.lax.stop_gradient(unit._replace(env_states=env_states, key=key))
  return outer, (after, (ret.sum() + out_ret, eps.sum() + out_eps))


def task_meta_gradient(meta, units: Unit, t, reset_key, world: gw.World, cfg: MetaConfig,
                       lr: float, mesh: Mesh | None = None):
  """One iteration on one task: pipeline resets, then the unit-averaged meta-gradient.

  Returns (meta-gradient, units, (return sum, episodes)).
  """
  step = meta_step(
      lambda m, u: unit_meta_loss(m, u, world, cfg, lr),
      jax.vmap(lambda k: init_unit(world, cfg.rule, cfg.envs_per_unit, k)), cfg, mesh)
  return step(meta, units, t, reset_key)


VALIDATION_SEED = 1000  # validation agents' seeds start here, apart from evaluation's 0, 1, ...


def validation_returns(cfg: MetaConfig, envs: int = 512,
                       agent_cfg: a2c.A2CConfig = a2c.A2CConfig()):
  """`run(meta) -> (cfg.validate_seeds,)`: fresh A2C agents (`envs` worlds each, as
  evaluation trains them) on cfg.worlds[0] with unscaled rewards, trained with the learned
  optimizer at that world's agent learning rate for cfg.validate_steps env steps; per agent,
  its final return as evaluation scores it, with one chunk per update. The training is jitted
  once, with meta as an argument. The meta-objective looks M updates ahead; this scores whole
  training runs.
  """
  world = gw.make(cfg.worlds[0])
  updates = max(1, cfg.validate_steps // (envs * agent_cfg.rollout))
  keys = jnp.stack([jax.random.PRNGKey(VALIDATION_SEED + s) for s in range(cfg.validate_seeds)])

  @jax.jit
  def per_update(meta):  # (return sums, episodes), each (seeds, updates)
    tx = learned_optimizer(meta, rule=cfg.rule,
                           learning_rate=cfg.agent_learning_rate(cfg.agent_lr(0), updates),
                           clip=cfg.clip, backend=cfg.backend)

    def agent(key):
      state = init_agent(world, tx, key, envs)
      _, (ret, eps, _) = jax.lax.scan(lambda s, _: update(world, tx, agent_cfg, s), state,
                                      length=updates)
      return ret, eps

    return jax.vmap(agent)(keys)

  def run(meta):
    ret, eps = per_update(meta)
    return last_tenth(episode_means(np.asarray(ret), np.asarray(eps)))

  return run


def gridworld_tasks(cfg: MetaConfig, mesh=None) -> Tasks:
  """A2C on each of cfg.worlds; one jitted function per world (their shapes differ); with a
  `mesh`, each world's units are split over its devices."""
  def init_units(key):
    units = []
    for i in range(len(cfg.worlds)):
      key, k_units = jax.random.split(key)
      world = cfg.world(i)
      units.append(place_units(jax.vmap(
          lambda k: init_unit(world, cfg.rule, cfg.envs_per_unit, k))(
          jax.random.split(k_units, cfg.units)), mesh))
    return key, tuple(units)

  steps = []
  for i in range(len(cfg.worlds)):
    world, lr = cfg.world(i), cfg.agent_lr(i)
    steps.append(jax.jit(lambda meta, units, t, k, world=world, lr=lr:
                         task_meta_gradient(meta, units, t, k, world, cfg, lr, mesh)))
  per_world = cfg.units * cfg.envs_per_unit * a2c.A2CConfig().rollout * (cfg.inner_updates + 1)
  validate = validation_returns(cfg) if cfg.validate_every > 0 else None
  return Tasks(list(cfg.worlds), init_units, steps, per_world * len(cfg.worlds), mesh, validate)
