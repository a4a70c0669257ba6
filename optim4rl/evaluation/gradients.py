"""Agent-gradient distributions (Figures 1, 2a, 5e-h, 6e-h of the paper).

Gradients are summarised as counts of log10(|g| + 1e-16) over fixed bins, so histograms of
different tasks, stages and runs add up and compare bin for bin. `coverage` measures how much
of a test task's gradient mass lies where the meta-training tasks' gradients also lie.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOG10_LOW, LOG10_HIGH, BINS = -16.0, 4.0, 200   # 0.1-decade bins; |g| = 0 lands in the first
EDGES = np.linspace(LOG10_LOW, LOG10_HIGH, BINS + 1)


def log_histogram(grads) -> jax.Array:
  """Counts (BINS,) of log10(|g| + 1e-16) over every element of the pytree `grads`
  (values outside [LOG10_LOW, LOG10_HIGH) go to the end bins; NaN is not counted)."""
  width = (LOG10_HIGH - LOG10_LOW) / BINS
  counts = jnp.zeros(BINS, jnp.float32)
  for g in jax.tree.leaves(grads):
    x = jnp.log10(jnp.abs(g.astype(jnp.float32)).ravel() + 1e-16)
    idx = jnp.clip(jnp.floor((x - LOG10_LOW) / width), 0, BINS - 1).astype(jnp.int32)
    counts = counts + jnp.bincount(idx, weights=jnp.isfinite(x).astype(jnp.float32), length=BINS)
  return counts


def support(counts, min_mass: float = 1e-4) -> np.ndarray:
  """Bins holding at least `min_mass` of the distribution's mass."""
  counts = np.asarray(counts, np.float64)
  return counts >= min_mass * max(counts.sum(), 1e-300)


def coverage(test_counts, train_counts, min_mass: float = 1e-4) -> float:
  """Fraction of the test distribution's mass inside the training support: that of one
  histogram (BINS,), or the union of the supports of several (k, BINS), each task's own."""
  test = np.asarray(test_counts, np.float64)
  if test.sum() == 0:
    raise ValueError("the test histogram is empty")
  train = np.atleast_2d(np.asarray(train_counts, np.float64))
  covered = np.any([support(t, min_mass) for t in train], axis=0)
  return float(test[covered].sum() / test.sum())


def stages(stats: np.ndarray, count: int = 3) -> list[np.ndarray]:
  """Split per-chunk histograms (..., chunks, BINS) into `count` training stages (early,
  middle, late), each summed over its chunks and every leading axis (seeds)."""
  stats = np.asarray(stats).reshape((-1,) + np.shape(stats)[-2:]).sum(0)
  return [part.sum(0) for part in np.array_split(stats, count)]


def plot(histograms: dict[str, np.ndarray], path, title: str = "") -> str:
  """Density of log10(|g| + 1e-16) for each labelled histogram, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  centers = (EDGES[:-1] + EDGES[1:]) / 2
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for label, counts in histograms.items():
    counts = np.asarray(counts, np.float64)
    ax.plot(centers, counts / max(counts.sum(), 1e-300), label=label)
  ax.set_xlabel("log10(|g| + 1e-16)")
  ax.set_ylabel("fraction of agent-gradients")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return str(path)
