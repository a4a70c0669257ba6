"""Which agent trains on an environment: A2C on a gridworld, PPO on a Brax task.

`make_trainer` binds everything of a training run but the optimizer and the run's own
arguments, so comparisons and studies treat gridworlds and Brax tasks alike.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from optim4rl.envs import gridworld as gw
from optim4rl.training.curve import Curve


class Trainer(NamedTuple):
  environment: str  # a gridworld or Brax task name
  agent: str  # "A2C" (gridworld) or "PPO" (Brax)
  steps: int  # environment steps per agent
  run: Callable[..., Curve]  # run(tx, seeds=, progress=, checkpoint=, grad_stat=) -> Curve
  updates: int  # optimizer updates of one run (for schedules)
  settings: dict  # the agent's other settings a run's curve depends on (JSON-able)
  open_plan: Any = None  # OpenPlan of a run whose agent gives OPEN what it needs (else None)


def brax_eval_envs(small: bool, eval_envs: int | None = None) -> int:
  """Brax evaluation envs per chunk: `eval_envs`, else Brax's 128 (16 at CPU size)."""
  return (16 if small else 128) if eval_envs is None else eval_envs


def make_trainer(environment: str, *, steps: int, envs: int = 512, small: bool = False,
                 eval_envs: int | None = None, chunks: int | None = None) -> Trainer:
  """The trainer of `steps` environment steps per agent on `environment`, in `chunks` scans
  (default: the trainer's). Gridworlds: A2C with `envs` worlds per agent. Brax tasks: PPO,
  at CPU size if `small`, scoring each chunk by deterministic episodes in `eval_envs` envs
  (`brax_eval_envs`; 0: returns of the training episodes). Gymnax tasks (MinAtar): PPO at
  the OPEN paper's settings, scored by the training episodes' returns."""
  if environment in gw.WORLD_NAMES:
    from optim4rl.training import a2c
    world = gw.make(environment)
    chunks = chunks or a2c.CHUNKS
    run = lambda tx, **kw: a2c.train(world, tx, steps=steps, num_envs=envs, chunks=chunks, **kw)
    return Trainer(environment, "A2C", steps, run,
                   a2c.optimizer_updates(steps, envs, chunks=chunks), dict(envs=envs))
  from optim4rl.envs import gymnax_tasks
  if environment in gymnax_tasks.TASKS:
    return _gymnax_trainer(environment, steps, chunks)
  from optim4rl.training import ppo  # Brax is imported only for Brax tasks
  settings = ppo.small(environment) if small else None  # also rejects unknown tasks
  eval_envs = brax_eval_envs(small, eval_envs)
  chunks = chunks or ppo.CHUNKS
  run = lambda tx, **kw: ppo.train(environment, tx, steps=steps, settings=settings,
                                   eval_envs=eval_envs, chunks=chunks, **kw)
  return Trainer(environment, "PPO", steps, run,
                 ppo.optimizer_updates(environment, steps, settings, chunks),
                 dict(small=small, eval_envs=eval_envs))


def _gymnax_trainer(task: str, steps: int, chunks: int | None) -> Trainer:
  """PPO on a gymnax task (MinAtar): its networks report the activations OPEN reads."""
  from optim4rl.envs import gymnax_tasks
  from optim4rl.open_optimizer import OpenPlan
  from optim4rl.training import ppo_gymnax
  s = gymnax_tasks.settings(task)
  chunks = chunks or ppo_gymnax.CHUNKS
  run = lambda tx, **kw: ppo_gymnax.train(task, tx, steps=steps, chunks=chunks, **kw)
  updates = ppo_gymnax.optimizer_updates(task, steps, chunks=chunks)
  plan = OpenPlan(minibatches=s.num_minibatches, epochs=s.num_epochs,
                  updates=updates // (s.num_minibatches * s.num_epochs))
  return Trainer(task, "PPO", steps, run, updates, {}, plan)
