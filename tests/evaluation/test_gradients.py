import jax.numpy as jnp
import numpy as np
import pytest

from optim4rl.evaluation import gradients


def test_log_histogram_matches_numpy():
  rng = np.random.default_rng(0)
  g = {"a": rng.standard_normal((30, 7)) * 10.0 ** rng.uniform(-12, 1, (30, 7)),
       "b": np.array([0.0, 1e-30, 5e6, np.nan], np.float64), "c": np.zeros((0,))}
  counts = np.asarray(gradients.log_histogram({k: jnp.asarray(v, jnp.float32)
                                               for k, v in g.items()}))
  x = np.log10(np.abs(np.concatenate([np.ravel(v) for v in g.values()]).astype(np.float32)) + 1e-16)
  x = np.clip(x[np.isfinite(x)], gradients.LOG10_LOW, np.nextafter(gradients.LOG10_HIGH, 0))
  expected, _ = np.histogram(x, gradients.EDGES)
  assert counts.sum() == 30 * 7 + 3  # NaN is not counted
  assert np.abs(counts - expected).sum() <= 2  # float32 vs float64 at bin edges


def test_coverage_and_stages():
  train = np.zeros(gradients.BINS)
  train[50:100] = 1.0
  test = np.zeros(gradients.BINS)
  test[90:110] = 1.0
  assert gradients.coverage(test, train) == pytest.approx(0.5)
  assert gradients.coverage(train, train) == 1.0
  other = np.zeros(gradients.BINS)
  other[105:110] = 1e6  # a task with far more parameters must not hide the first's support
  assert gradients.coverage(test, np.stack([train, other])) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="empty"):
    gradients.coverage(np.zeros(gradients.BINS), train)
  stats = np.ones((2, 6, gradients.BINS))  # seeds, chunks, bins
  early, mid, late = gradients.stages(stats)
  assert early.shape == (gradients.BINS,) and np.all(early == 4)


def test_gradient_study_writes_histograms_plots_and_coverage(tmp_path):
  # A gridworld stands in for the task: the study treats any environment alike.
  study = gradients.gradient_study(["small_dense_short"], ["small_sparse_short"], tmp_path,
                                   world_steps=20480, task_steps=20480, envs=64)
  assert set(study.histograms) == {f"{name}/{stage}" for stage in gradients.STAGES
                                   for name in ("small_dense_short", "small_sparse_short")}
  together, each = study.coverage["small_sparse_short"]
  assert 0.0 <= together <= 1.0 and each == [together]  # one world: the same support
  saved = np.load(study.histogram_file)
  assert set(saved.files) == set(study.histograms) | {"edges"}
  assert study.plots == [tmp_path / "gradients_small_sparse_short.png"]
  assert study.plots[0].stat().st_size > 1000
  line = gradients.coverage_table(study).splitlines()[1]
  assert line.split() == ["small_sparse_short", f"{together:.3f}", f"{together:.3f}"]
