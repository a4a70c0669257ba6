"""Evaluation: train fresh agents (A2C on gridworlds, PPO on Brax) with fixed optimizers over
several seeds and compare.

Optimizers are named by specs: "adam", "rmsprop", "sgd" (optax, with the elementwise gradient
clip of 1 used in the paper's configs), or "RULE:PATH" for a learned optimizer whose
meta-parameters were saved to PATH (RULE is optim4rl, optim4rl_public, linear_optim, l2lgd2;
"learned:PATH" takes the rule stored in the file). Any of them can run under a schedule
(SCHEDULES) that scales its steps over training, alike for every optimizer. Results: final
return mean +- standard error over seeds (the mean over the last tenth of training), CSV logs
and a PNG of the curves.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import optax

from optim4rl.envs import gridworld as gw
from optim4rl.rules import RULES, load_meta_params
from optim4rl.run_checkpoint import RunCheckpoint
from optim4rl.train import Curve
from optim4rl.transform import learned_optimizer

CLASSICAL = {"adam": optax.adam, "rmsprop": optax.rmsprop, "sgd": optax.sgd}
# Factors on every step: constant, or falling linearly from 1 to 0 over training (annealing
# that the learned rules do not do by themselves; see benchmarks/layer_study.py).
SCHEDULES = ("constant", "linear")


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


def scheduled(tx: optax.GradientTransformation, schedule: str,
              updates: int | None) -> optax.GradientTransformation:
  """`tx` with its steps scaled by `schedule` over `updates` optimizer updates."""
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {list(SCHEDULES)}")
  if schedule == "constant":
    return tx
  if not updates or updates < 1:
    raise ValueError(f"schedule {schedule!r} needs the run's number of optimizer updates")
  return optax.chain(tx, optax.scale_by_schedule(optax.linear_schedule(1.0, 0.0, updates)))


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


class Result(NamedTuple):
  label: str
  curve: Curve
  final: np.ndarray  # (seeds,) mean return over the last tenth of training

  @property
  def mean(self) -> float:
    return float(np.mean(self.final))

  @property
  def stderr(self) -> float:
    n = len(self.final)
    return float(np.std(self.final, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def final_returns(curve: Curve) -> np.ndarray:
  """Per seed, the mean over the last tenth of the chunks in which episodes ended (long
  episodes, e.g. Brax's 1000 steps, leave some chunks without any); NaN if none did."""
  return last_tenth(curve.returns)


def last_tenth(chunk_returns: np.ndarray) -> np.ndarray:
  """`final_returns` of (seeds, chunks) mean returns, NaN where no episode ended."""
  finals = []
  for returns in chunk_returns:
    seen = returns[~np.isnan(returns)]
    finals.append(seen[-max(1, len(seen) // 10):].mean() if len(seen) else np.nan)
  return np.asarray(finals)


def evaluate(run: Callable[..., Curve], optimizers: dict[str, optax.GradientTransformation], *,
             seeds: int, progress: Callable[[str], Callable[[int, int, float], None]] | None = None,
             checkpoint: Callable[[str], RunCheckpoint] | None = None) -> list[Result]:
  """Train `seeds` fresh agents per optimizer (label -> optax optimizer).

  `run(tx, seeds=..., progress=..., checkpoint=...) -> Curve` trains them, e.g. `train.train`
  on a gridworld or `train_ppo.train` on a Brax task with everything but those arguments
  bound. `checkpoint(label)`, if given, makes each optimizer's run resumable."""
  results = []
  for label, tx in optimizers.items():
    ckpt = checkpoint(label) if checkpoint else None
    try:
      curve = run(tx, seeds=range(seeds), progress=progress(label) if progress else None,
                  checkpoint=ckpt)
    finally:
      if ckpt is not None:
        ckpt.close()
    results.append(Result(label, curve, final_returns(curve)))
  return results


def table(results: list[Result]) -> str:
  width = max(len(r.label) for r in results)
  lines = [f"{'optimizer':<{width}}  final return (mean +- s.e., {len(results[0].final)} seeds)"]
  lines += [f"{r.label:<{width}}  {r.mean:8.3f} +- {r.stderr:.3f}" for r in results]
  return "\n".join(lines)


def best_per_optimizer(results: list[Result]) -> list[Result]:
  """The best-scoring result of each optimizer, best first; labels NAME@SETTINGS (as the CLI
  writes them, e.g. adam@3e-2 and adam@5e-2:linear) count as settings of one optimizer NAME."""
  best = {}
  for r in results:
    name = split_spec(r.label)[0]
    if name not in best or r.mean > best[name].mean:
      best[name] = r
  return sorted(best.values(), key=lambda r: -r.mean if np.isfinite(r.mean) else np.inf)


def best_table(results: list[Result]) -> str:
  """`best_per_optimizer` as a table, with each one's share of the top mean (if positive)."""
  best = best_per_optimizer(results)
  top = best[0].mean
  width = max(len(r.label) for r in best)
  lines = [f"{'best setting of each optimizer':<{width}}  final return"
           + ("  share of the best" if top > 0 else "")]
  for r in best:
    share = f"  {100 * r.mean / top:6.1f}%" if top > 0 else ""
    lines.append(f"{r.label:<{width}}  {r.mean:8.3f} +- {r.stderr:.3f}{share}")
  return "\n".join(lines)


def write_csv(results: list[Result], path: Path):
  with open(path, "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["optimizer", "seed", "env_steps", "return"])
    for r in results:
      for seed, returns in enumerate(r.curve.returns):
        for steps, ret in zip(r.curve.steps, returns):
          out.writerow([r.label, seed, int(steps), f"{ret:.6g}"])


def plot(results: list[Result], path: Path, title: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in results:
    keep = ~np.all(np.isnan(r.curve.returns), axis=0)  # chunks in which some episode ended
    returns = r.curve.returns[:, keep]
    mean = np.nanmean(returns, axis=0)
    err = np.nanstd(returns, axis=0) / np.sqrt(np.sum(~np.isnan(returns), axis=0))
    ax.plot(r.curve.steps[keep], mean, label=r.label)
    ax.fill_between(r.curve.steps[keep], mean - err, mean + err, alpha=0.25)
  ax.set_xlabel("environment steps")
  ax.set_ylabel("episode return")
  ax.set_title(title)
  ax.legend(loc="lower right", fontsize="small")  # curves rise from the lower left
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
