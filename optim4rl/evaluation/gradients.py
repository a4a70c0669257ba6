"""Agent-gradient distributions (Figures 1, 2a, 5e-h, 6e-h of the paper).

Gradients are summarised as counts of log10(|g| + 1e-16) over fixed bins, so histograms of
different tasks, stages and runs add up and compare bin for bin. `coverage` measures how much
of a test task's gradient mass lies where the meta-training tasks' gradients also lie.
`gradient_study` trains an agent per gridworld and Brax task and reports both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optim4rl.evaluation.specs import optimizer_for
from optim4rl.evaluation.trainers import make_trainer
from optim4rl.training.files import atomic_path

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
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120)
  plt.close(fig)
  return str(path)


STAGES = ("early", "middle", "late")


class GradientStudy(NamedTuple):
  worlds: list[str]
  tasks: list[str]
  histograms: dict[str, np.ndarray]  # "NAME/STAGE" -> counts (BINS,)
  coverage: dict[str, tuple[float, list[float]]]  # task -> (share in all worlds', in each's)
  histogram_file: Path  # histograms.npz: the histograms and EDGES
  plots: list[Path]  # gradients_NAME.png, one per task (per world if there are no tasks)


def gradient_study(worlds: list[str], tasks: list[str], out: str | Path, *,
                   optimizer: str = "adam", world_steps: int = 3_000_000,
                   task_steps: int = 10_000_000, envs: int = 512, small: bool = False,
                   seed: int = 0, backend: str | None = None,
                   progress: Callable[[str, int], Callable] | None = None) -> GradientStudy:
  """Agent-gradient distributions per environment and training stage, and how much the
  gridworlds' cover each task's (`coverage`, against all worlds together and each alone).

  One agent (seed `seed`) per gridworld (A2C, `envs` worlds, `world_steps` steps) and Brax
  task (PPO, CPU size if `small`, `task_steps` steps), trained by the spec `optimizer` at
  the environment's default learning rate unless the spec gives one. Writes histograms.npz
  and a plot per task (per world without tasks) to `out`. `progress(name, steps)`, if given,
  makes the progress callback of an environment's run."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  hists = {}
  for name, steps in [(w, world_steps) for w in worlds] + [(t, task_steps) for t in tasks]:
    # 12 chunks: 4 per stage; training-episode returns suffice (no evaluation episodes).
    trainer = make_trainer(name, steps=int(steps), envs=envs, small=small, eval_envs=0,
                           chunks=12)
    tx = optimizer_for(optimizer, name, updates=trainer.updates, backend=backend,
                       open_plan=trainer.open_plan)
    curve = trainer.run(tx, seeds=(seed,), grad_stat=log_histogram,
                        progress=progress(name, int(steps)) if progress else None)
    for stage, counts in zip(STAGES, stages(curve.stats, len(STAGES))):
      hists[f"{name}/{stage}"] = counts
  histogram_file = out / "histograms.npz"
  with atomic_path(histogram_file) as tmp:
    np.savez(tmp, edges=EDGES, **hists)

  total = lambda name: sum(hists[f"{name}/{stage}"] for stage in STAGES)
  all_worlds = np.stack([total(w) for w in worlds]) if worlds else None
  shares, plots = {}, []
  for name in tasks or worlds:
    curves = {f"{name}, {stage}": hists[f"{name}/{stage}"] for stage in STAGES}
    if all_worlds is not None and name not in worlds:
      # The worlds' distributions with equal weights, whatever their parameter counts.
      curves["all gridworlds"] = (all_worlds / all_worlds.sum(1, keepdims=True)).mean(0)
      shares[name] = (coverage(total(name), all_worlds),
                      [coverage(total(name), total(w)) for w in worlds])
    plots.append(Path(plot(curves, out / f"gradients_{name}.png",
                           f"agent-gradients ({optimizer})")))
  return GradientStudy(list(worlds), list(tasks), hists, shares, histogram_file, plots)


def coverage_table(study: GradientStudy) -> str:
  """The study's coverage shares as text: a line per task, "" if there are none."""
  if not study.coverage:
    return ""
  lines = [f"share of each task's agent-gradients inside the support of the gridworlds' "
           f"(all; {', '.join(study.worlds)})"]
  lines += [f"{task:<26} {together:8.3f}  " + "  ".join(f"{s:.3f}" for s in each)
            for task, (together, each) in study.coverage.items()]
  return "\n".join(lines)
