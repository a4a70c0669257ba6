"""The A2C plug-in: meta-training a learned optimizer on A2C in gridworlds (Sections 2.2 and 5,
Appendix C).

One task per world. Each of its n training units is an agent with its own worlds and optimizer
state; in one iteration a unit takes M inner A2C updates with the learned optimizer, and the
outer loss is the actor loss on its next rollout. Resets, averaging over units and tasks and
the meta-update are the outer loop's (meta/pipeline.py, meta/iteration.py).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim4rl.agents import a2c
from optim4rl.envs import gridworld as gw
from optim4rl.meta.config import MetaConfig, check_int, check_number
from optim4rl.meta.tasks import Task, Tasks
from optim4rl.schedules import SCHEDULES
from optim4rl.training.a2c import AgentState, init_agent, update
from optim4rl.training.curve import episode_means, last_tenth
from optim4rl.transforms import init_state, learned_optimizer


OUTER_LOSSES = ("actor", "total")


@dataclasses.dataclass(frozen=True)
class GridworldConfig:
  """The A2C plug-in's settings; the outer loop's (units, reset interval, meta-optimizer, ...)
  are a `MetaConfig`."""
  worlds: tuple[str, ...] = ("small_dense_short",)
  agent_lrs: tuple[float, ...] = (1e-2,)  # agent learning rate, one per world
  outer_loss: str = "actor"      # A2C term of the outer loss: "actor" (Appendix C) or "total"
  agent_schedule: str = "constant"  # "linear": agents' steps decay to 0 over their lives
  reward_scale: str = "auto"     # "auto": the paper's scales when several worlds, else 1
  validate_seeds: int = 4        # fresh agents per validation (MetaConfig.validate_every)
  validate_steps: int = 3_000_000  # env steps per validation agent

  def __post_init__(self):
    if not self.worlds:
      raise ValueError("meta-training needs at least one world")
    for name in self.worlds:
      gw.make(name)  # raises a clear error for unknown worlds
    if len(self.agent_lrs) not in (1, len(self.worlds)):
      raise ValueError(f"give one agent learning rate or one per world ({len(self.worlds)}), "
                       f"got {len(self.agent_lrs)}")
    if self.outer_loss not in OUTER_LOSSES:
      raise ValueError(f"unknown outer loss {self.outer_loss!r}; "
                       f"expected one of {OUTER_LOSSES}")
    if self.agent_schedule not in SCHEDULES:
      raise ValueError(f"unknown agent schedule {self.agent_schedule!r}; "
                       f"expected one of {SCHEDULES}")
    for field in ("validate_seeds", "validate_steps"):
      check_int(field, getattr(self, field), 1)
    for lr in self.agent_lrs:
      check_number("agent learning rate", lr, positive=True)
    for i in range(len(self.worlds)):
      self.world(i)  # refuses a reward_scale that is neither a number > 0 nor "paper"

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
    optimizer's own update count, which a reset sets back to 0."""
    return lr if self.agent_schedule == "constant" else optax.linear_schedule(lr, 0.0, updates)

  def tasks(self, cfg: MetaConfig) -> Tasks:
    return gridworld_tasks(cfg, self)


# A training unit is an agent (parameters, learned-optimizer state, worlds, key).
Unit = AgentState


def init_unit(world: gw.World, cfg: MetaConfig, key,
              learning_rate: optax.ScalarOrSchedule) -> Unit:
  """A fresh agent whose optimizer state is the one the learned optimizer at `learning_rate`
  starts from; it does not depend on the meta-parameters."""
  state_only = optax.GradientTransformation(
      lambda params: init_state(cfg.rule, params, learning_rate=learning_rate,
                                hidden_dtype=cfg.hidden_dtype), None)
  return init_agent(world, state_only, key, cfg.envs_per_unit)


def unit_meta_loss(meta, unit: Unit, world: gw.World, learning_rate: optax.ScalarOrSchedule,
                   cfg: MetaConfig, outer_loss: str = "actor",
                   agent_cfg: a2c.A2CConfig = a2c.A2CConfig()):
  """M inner A2C updates with the learned optimizer at `learning_rate`, then the outer loss
  (the actor loss, or with outer_loss="total" the whole A2C loss) of the next rollout.

  Returns (outer loss, (unit after the updates, (return sum, episodes))) and is
  differentiable w.r.t. `meta` through all M updates.
  """
  tx = learned_optimizer(meta, rule=cfg.rule, learning_rate=learning_rate, clip=cfg.clip,
                         backend=cfg.backend, hidden_dtype=cfg.hidden_dtype)

  def inner(u: Unit, _):
    u, (ret, eps, _) = update(world, tx, agent_cfg, u)
    return u, (ret, eps)

  unit, (ret, eps) = jax.lax.scan(inner, unit, length=cfg.inner_updates)
  key, k_roll = jax.random.split(unit.key)
  env_states, rollout = a2c.collect(world, unit.params, unit.env_states, k_roll, agent_cfg.rollout)
  outer = a2c.losses(world, unit.params, rollout, agent_cfg)[outer_loss]
  out_ret, out_eps = a2c.episode_stats(rollout)
  after = jax.lax.stop_gradient(unit._replace(env_states=env_states, key=key))
  return outer, (after, (ret.sum() + out_ret, eps.sum() + out_eps))


def world_task(cfg: MetaConfig, gcfg: GridworldConfig, i: int) -> Task:
  """A2C on gcfg.worlds[i]: units of cfg.envs_per_unit worlds each, at that world's agent
  learning rate over a unit's life."""
  world = gcfg.world(i)
  lr = gcfg.agent_learning_rate(gcfg.agent_lr(i), cfg.unit_life)
  rollout = a2c.A2CConfig().rollout
  return Task(
      name=gcfg.worlds[i],
      unit_loss=lambda meta, unit: unit_meta_loss(meta, unit, world, lr, cfg, gcfg.outer_loss),
      fresh_units=jax.vmap(lambda k: init_unit(world, cfg, k, lr)),
      env_steps_per_iteration=cfg.units * cfg.envs_per_unit * rollout * (cfg.inner_updates + 1))


VALIDATION_SEED = 1000  # validation agents' seeds start here, apart from evaluation's 0, 1, ...


def validation_returns(cfg: MetaConfig, gcfg: GridworldConfig, envs: int = 512,
                       agent_cfg: a2c.A2CConfig = a2c.A2CConfig()):
  """`run(meta) -> (gcfg.validate_seeds,)`: fresh A2C agents (`envs` worlds each, as
  evaluation trains them) on gcfg.worlds[0] with unscaled rewards, trained with the learned
  optimizer at that world's agent learning rate for gcfg.validate_steps env steps; per agent,
  its final return as evaluation scores it, with one chunk per update. The training is jitted
  once, with meta as an argument. The meta-objective looks M updates ahead; this scores whole
  training runs.
  """
  world = gw.make(gcfg.worlds[0])
  updates = max(1, gcfg.validate_steps // (envs * agent_cfg.rollout))
  keys = jnp.stack([jax.random.PRNGKey(VALIDATION_SEED + s) for s in range(gcfg.validate_seeds)])
  lr = gcfg.agent_learning_rate(gcfg.agent_lr(0), updates)

  @jax.jit
  def per_update(meta):  # (return sums, episodes), each (seeds, updates)
    tx = learned_optimizer(meta, rule=cfg.rule, learning_rate=lr, clip=cfg.clip,
                           backend=cfg.backend, hidden_dtype=cfg.hidden_dtype)

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


def gridworld_tasks(cfg: MetaConfig, gcfg: GridworldConfig) -> Tasks:
  """A2C on each of gcfg.worlds, validated (if cfg.validate_every > 0) on the first."""
  validate = validation_returns(cfg, gcfg) if cfg.validate_every > 0 else None
  return Tasks(tuple(world_task(cfg, gcfg, i) for i in range(len(gcfg.worlds))), validate)
