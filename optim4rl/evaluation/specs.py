"""Optimizer specs: the grammar NAME[:PATH][@LR[:SCHEDULE]] and the optax optimizer a spec names.

Optimizers are named by specs: "adam", "rmsprop", "sgd" (optax, with the elementwise gradient
clip of 1 used in the paper's configs), or "RULE:PATH" for a learned optimizer whose
meta-parameters were saved to PATH (RULE is optim4rl, optim4rl_public, linear_optim, l2lgd2;
"learned:PATH" takes the rule stored in the file). Any of them can run under a schedule
(SCHEDULES) that scales its steps over training, alike for every optimizer.
"""
from __future__ import annotations

import optax

from optim4rl.envs import gridworld as gw
from optim4rl.rules import RULES, load_meta_params
from optim4rl.schedules import SCHEDULES, scheduled
from optim4rl.transforms import learned_optimizer

CLASSICAL = {"adam": optax.adam, "rmsprop": optax.rmsprop, "sgd": optax.sgd}


def default_learning_rate(world_name: str) -> float:
  """Agent learning rates of Appendix C.3: 1e-2 for the small worlds, 3e-3 for the big; for
  Brax tasks, the learning rate of Brax's PPO example."""
  if world_name not in gw.WORLD_NAMES:
    from optim4rl.envs import brax_tasks
    return brax_tasks.settings(world_name).learning_rate
  return 3e-3 if gw.make(world_name).is_big else 1e-2


def split_spec(spec: str) -> tuple[str, str, str]:
  """The (optimizer, learning rate, schedule) texts of a spec NAME[:PATH][@LR[:SCHEDULE]], as
  the CLI takes them ("" where absent): "adam@5e-2:linear" -> ("adam", "5e-2", "linear")."""
  optimizer, _, setting = spec.rpartition("@") if "@" in spec else (spec, "", "")
  lr, _, schedule = setting.partition(":")
  return optimizer, lr, schedule


def make_optimizer(spec: str, learning_rate: float, *, clip: float | None = 1.0,
                   backend: str | None = None, schedule: str = "constant",
                   updates: int | None = None) -> optax.GradientTransformation:
  """The optax optimizer a spec names (see the module docstring); clear errors otherwise.

  `clip`: elementwise gradient clip of the classical optimizers (None: none, as in Brax's
  PPO); a learned optimizer always clips at Algorithm 1's c (1 unless `clip` says otherwise).
  `schedule` (one of SCHEDULES) scales the steps over a run of `updates` optimizer updates."""
  return scheduled(_unscheduled(spec, learning_rate, clip, backend), schedule, updates)


def _unscheduled(spec: str, learning_rate: float, clip: float | None,
                 backend: str | None) -> optax.GradientTransformation:
  name, _, path = spec.partition(":")
  if name in CLASSICAL and not path:
    tx = CLASSICAL[name](learning_rate)
    return optax.chain(optax.clip(clip), tx) if clip is not None else tx
  if name in RULES or name == "learned":
    if not path:
      raise ValueError(f"optimizer {spec!r}: a learned optimizer needs its meta-parameter file, "
                       f"e.g. {name}:runs/sds/meta.npz")
    meta, rule = load_meta_params(path)
    if name != "learned" and rule != name:
      raise ValueError(f"optimizer {spec!r}: {path} holds meta-parameters of rule {rule!r}")
    return learned_optimizer(meta, rule=rule, learning_rate=learning_rate,
                             clip=1.0 if clip is None else clip, backend=backend)
  raise ValueError(f"unknown optimizer {spec!r}; expected one of {sorted(CLASSICAL)} or "
                   f"RULE:PATH with RULE in {sorted(RULES)} or 'learned'")


