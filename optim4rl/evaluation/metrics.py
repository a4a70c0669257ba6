"""Scores of an evaluation: each optimizer's final returns over seeds, and its best setting."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from optim4rl.evaluation.specs import split_spec
from optim4rl.training.curve import Curve


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


def best_per_optimizer(results: list[Result]) -> list[Result]:
  """The best-scoring result of each optimizer, best first; labels NAME@SETTINGS (as the CLI
  writes them, e.g. adam@3e-2 and adam@5e-2:linear) count as settings of one optimizer NAME."""
  best = {}
  for r in results:
    name = split_spec(r.label)[0]
    if name not in best or r.mean > best[name].mean:
      best[name] = r
  return sorted(best.values(), key=lambda r: -r.mean if np.isfinite(r.mean) else np.inf)
