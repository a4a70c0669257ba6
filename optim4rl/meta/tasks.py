"""What the outer loop needs from a kind of meta-training (a task plug-in).

A plug-in (A2C on gridworlds in meta/a2c.py, PPO on Brax in meta/ppo.py) has a config: a
frozen dataclass, recorded in a run's config.json, whose `tasks(cfg)` builds its `Tasks` for
the outer loop's `MetaConfig`. The loop trains every task's units with pipeline training
(meta/pipeline.py) and averages their meta-gradients; it knows nothing of agents or
environments.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Protocol

from optim4rl.meta.config import MetaConfig


class Task(NamedTuple):
  """One task: how its units are made and what one iteration of one unit is."""
  name: str                      # the log's column is return_<name>
  # (meta, unit) -> (outer loss, (unit after the iteration, (return sum, episodes ended))),
  # differentiable w.r.t. meta through the inner updates.
  unit_loss: Callable
  fresh_units: Callable          # keys (n, ...) -> n fresh units (leading axis n)
  env_steps_per_iteration: int   # of all cfg.units units together


class Tasks(NamedTuple):
  """A plug-in's tasks, meta-trained together, and its validation if it has one."""
  tasks: tuple[Task, ...]
  # meta -> per-agent final returns (host array) of fresh agents trained with it.
  validate: Callable | None = None


class TaskConfig(Protocol):
  """A plug-in's settings (a frozen dataclass)."""

  def tasks(self, cfg: MetaConfig) -> Tasks:
    ...
