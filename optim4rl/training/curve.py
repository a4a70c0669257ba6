"""A training run's return curve and how it is scored."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Curve(NamedTuple):
  steps: np.ndarray    # (chunks,) environment steps taken so far (all envs)
  returns: np.ndarray  # (seeds, chunks) mean unscaled episode return in each chunk (NaN: none)
  losses: np.ndarray   # (seeds, chunks) mean loss in each chunk
  stats: np.ndarray | None = None  # (seeds, chunks, ...) summed per-update statistics, if asked


def episode_means(ret_sum: np.ndarray, episodes: np.ndarray) -> np.ndarray:
  """Mean episode return from sums and counts; NaN where no episode ended."""
  return np.where(episodes > 0, ret_sum / np.maximum(episodes, 1), np.nan)


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
