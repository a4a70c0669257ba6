"""Optimizer specs: the grammar NAME[:PATH][@LR[:SCHEDULE]] and the optax optimizer a spec names.

Optimizers are named by specs: "adam", "rmsprop", "sgd" (optax, with the elementwise gradient
clip of 1 used in the paper's configs), or "RULE:PATH" for a learned optimizer whose
meta-parameters were saved to PATH (RULE is optim4rl, optim4rl_public, linear_optim, l2lgd2;
"learned:PATH" takes the rule stored in the file), or "open:PATH" for OPEN (a .npy of the
authors' or our .npz; "open:breakout" etc. for the published sets), which agents reporting
their activations can run (gymnax PPO). Any but OPEN can run under a schedule (SCHEDULES) that
scales its steps over training, alike for every optimizer.

`optimizer_for` builds the optimizer of a full spec for a run on an environment (its default
learning rate and clip); `make_optimizer` that of NAME[:PATH] with everything given.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import optax

from optim4rl.envs import gridworld as gw
from optim4rl.rules import RULES, load_meta_params
from optim4rl.schedules import scheduled
from optim4rl.transforms import learned_optimizer

CLASSICAL = {"adam": optax.adam, "rmsprop": optax.rmsprop, "sgd": optax.sgd}


def default_learning_rate(world_name: str) -> float:
  """Agent learning rates of Appendix C.3: 1e-2 for the small worlds, 3e-3 for the big; for
  Brax tasks, the learning rate of Brax's PPO example; for gymnax tasks, PureJaxRL's."""
  if world_name not in gw.WORLD_NAMES:
    from optim4rl.envs import gymnax_tasks
    if world_name in gymnax_tasks.TASKS:
      return gymnax_tasks.settings(world_name).learning_rate
    from optim4rl.envs import brax_tasks
    return brax_tasks.settings(world_name).learning_rate
  return 3e-3 if gw.make(world_name).is_big else 1e-2


def split_spec(spec: str) -> tuple[str, str, str]:
  """The (optimizer, learning rate, schedule) texts of a spec NAME[:PATH][@LR[:SCHEDULE]], as
  the CLI takes them ("" where absent): "adam@5e-2:linear" -> ("adam", "5e-2", "linear")."""
  optimizer, _, setting = spec.rpartition("@") if "@" in spec else (spec, "", "")
  lr, _, schedule = setting.partition(":")
  return optimizer, lr, schedule


def optimizer_for(spec: str, environment: str, *, updates: int, backend: str | None = None,
                  learning_rate: float | None = None,
                  open_plan=None) -> optax.GradientTransformation:
  """The optax optimizer of a full spec NAME[:PATH][@LR[:SCHEDULE]] ("adam@3e-3",
  "adam@5e-2:linear") for a run of `updates` optimizer updates on `environment` (a gridworld
  or a Brax or gymnax task). `learning_rate` overrides LR; without either, the environment's
  default learning rate applies. "open:PATH" (OPEN, no learning rate) needs the run's
  `open_plan` (`Trainer.open_plan`), which only agents that report activations have."""
  name, lr_text, schedule = split_spec(spec)
  if name.partition(":")[0] == "open":
    return _open(spec, environment, lr_text or schedule or learning_rate, open_plan, backend)
  if learning_rate is None and lr_text:
    try:
      learning_rate = float(lr_text)
    except ValueError:
      raise ValueError(f"optimizer {spec!r}: {lr_text!r} is not a learning rate") from None
  if learning_rate is None:
    learning_rate = default_learning_rate(environment)
  _check_learning_rate(spec, learning_rate)  # here, to name the whole spec ("adam@-1")
  # Brax's PPO runs its optimizers unclipped; the paper's gridworld configs clip at 1.
  clip = 1.0 if environment in gw.WORLD_NAMES else None
  return make_optimizer(name, learning_rate, backend=backend, clip=clip,
                        schedule=schedule or "constant", updates=updates)


def meta_file_hash(spec: str) -> str | None:
  """SHA-256 of the meta-parameter file a learned optimizer's spec names (None: classical)."""
  name, _, path = split_spec(spec)[0].partition(":")
  if name == "open" and path:
    path = _open_file(path)
  return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def _open_file(path: str) -> Path:
  """The file of "open:PATH": a path, or the name of published meta-parameters ("breakout")."""
  from optim4rl.rules.open import PRETRAINED
  published = PRETRAINED / f"{path}_OPEN.npy"
  return published if not Path(path).exists() and published.exists() else Path(path)


def _open(spec: str, environment: str, step_setting, plan, backend: str | None):
  from optim4rl.open_optimizer import open_optimizer
  from optim4rl.rules.open import load_open_meta
  if step_setting:
    raise ValueError(f"optimizer {spec!r}: OPEN learns its own step sizes; it takes no learning "
                     f"rate or schedule")
  if plan is None:
    raise ValueError(f"optimizer {spec!r}: OPEN needs an agent that reports its layers' "
                     f"activations (PPO on a gymnax task such as Breakout-MinAtar), not "
                     f"{environment}'s")
  _, _, path = split_spec(spec)[0].partition(":")
  if not path:
    raise ValueError(f"optimizer {spec!r}: name its meta-parameters, open:PATH or a published "
                     f"set (open:breakout, open:multi, ...)")
  return open_optimizer(load_open_meta(_open_file(path)), plan=plan, backend=backend)


def make_optimizer(spec: str, learning_rate: float, *, clip: float | None = 1.0,
                   backend: str | None = None, schedule: str = "constant",
                   updates: int | None = None) -> optax.GradientTransformation:
  """The optax optimizer a spec names (see the module docstring); clear errors otherwise.

  `learning_rate`: a finite number > 0 (or an optax schedule). `clip`: elementwise gradient
  clip of the classical optimizers, finite and > 0 (None: none, as in Brax's PPO); a learned
  optimizer always clips at Algorithm 1's c (1 unless `clip` says otherwise).
  `schedule` (one of SCHEDULES) scales the steps over a run of `updates` optimizer updates."""
  _check_learning_rate(spec, learning_rate)
  return scheduled(_unscheduled(spec, learning_rate, clip, backend), schedule, updates)


def _finite_positive(x) -> bool:
  try:
    return not isinstance(x, (bool, str)) and float(x) > 0 and math.isfinite(float(x))
  except (TypeError, ValueError):
    return False


def _check_learning_rate(spec: str, learning_rate) -> None:
  """A number must be finite and > 0: NaN or inf would train to NaN, 0 or less not at all
  (or uphill), all silently. A schedule (callable) is optax's to check."""
  if not callable(learning_rate) and not _finite_positive(learning_rate):
    raise ValueError(f"optimizer {spec!r}: the learning rate must be a finite number > 0, "
                     f"got {learning_rate!r}")


def _unscheduled(spec: str, learning_rate: float, clip: float | None,
                 backend: str | None) -> optax.GradientTransformation:
  name, _, path = spec.partition(":")
  if name in CLASSICAL and not path:
    # optax.clip(0) zeroes every update and clip(nan) makes them nan, silently.
    if clip is not None and not _finite_positive(clip):
      raise ValueError(f"optimizer {spec!r}: clip must be None (no clipping) or a finite number "
                       f"> 0, got {clip!r}")
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
