"""Reporting an evaluation: text tables, a CSV of the curves and a PNG plot."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from optim4rl.evaluation.metrics import Result, best_per_optimizer
from optim4rl.training.files import atomic_path


def table(results: list[Result]) -> str:
  width = max(len(r.label) for r in results)
  lines = [f"{'optimizer':<{width}}  final return (mean +- s.e., {len(results[0].final)} seeds)"]
  lines += [f"{r.label:<{width}}  {r.mean:8.3f} +- {r.stderr:.3f}" for r in results]
  return "\n".join(lines)


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
  """The curves, one row per optimizer, seed and chunk (replaced atomically)."""
  with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["optimizer", "seed", "env_steps", "return"])
    for r in results:
      for seed, returns in enumerate(r.curve.returns):
        for steps, ret in zip(r.curve.steps, returns):
          out.writerow([r.label, seed, int(steps), f"{ret:.6g}"])


def plot(results: list[Result], path: Path, title: str):
  """Mean return +- standard error over seeds per optimizer (replaced atomically)."""
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
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120)
  plt.close(fig)
