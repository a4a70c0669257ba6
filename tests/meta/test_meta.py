import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim4rl
from optim4rl.meta import a2c as M
from optim4rl.meta import pipeline
from optim4rl.meta.config import MetaConfig
from optim4rl.meta.loop import meta_train
from conftest import rel_err, required_kernel_backends
from toy_task import Toy

CFG = MetaConfig(units=4, envs_per_unit=2, reset_interval=4, iterations=4, seed=0)
GRID = M.GridworldConfig(worlds=("small_dense_short",), agent_lrs=(1e-2,))


def test_reset_offsets_evenly_spaced():
  r = np.asarray(pipeline.reset_offsets(512, 256))
  assert r[0] == 0 and r[-1] == 255 and np.all(np.diff(r) >= 0)
  assert np.asarray(pipeline.reset_offsets(4, 4)).tolist() == [0, 1, 2, 3]


def test_config_errors():
  with pytest.raises(ValueError, match="unknown gridworld"):
    M.GridworldConfig(worlds=("nowhere",))
  with pytest.raises(ValueError, match="one per world"):
    M.GridworldConfig(worlds=("small_dense_short", "big_dense_long"),
                      agent_lrs=(1e-2, 1e-3, 1e-4))
  with pytest.raises(ValueError, match="unknown rule"):
    MetaConfig(rule="adam")
  with pytest.raises(ValueError, match="units"):
    MetaConfig(units=0)
  with pytest.raises(ValueError, match="hidden_dtype"):
    MetaConfig(hidden_dtype="float16")
  assert M.GridworldConfig(worlds=("small_dense_short", "big_dense_long"),
                           agent_lrs=(1e-2,)).world(0).reward_scale == 100.0


def _same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_pipeline_resets_only_the_units_due():
  cfg = dataclasses.replace(CFG, reset_interval=8)  # offsets 0, 2, 4, 7
  task = M.world_task(cfg, GRID, 0)
  meta = optim4rl.init_meta_params(jax.random.key(0), cfg.rule)
  step = jax.jit(pipeline.meta_step(task, cfg))
  key = jax.random.PRNGKey(9)
  units = task.fresh_units(jax.random.split(jax.random.PRNGKey(0), cfg.units))
  fresh = task.fresh_units(jax.random.split(key, cfg.units))  # what a reset at `key` makes
  _, none_due, _ = step(meta, units, jnp.int32(9), key)  # 9 mod 8 == 1: no unit is due
  _, due, _ = step(meta, units, jnp.int32(10), key)      # 10 mod 8 == 2: unit 1 is due
  _, from_fresh, _ = step(meta, fresh, jnp.int32(9), key)
  unit = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
  for i in range(cfg.units):
    expected = from_fresh if i == 1 else none_due
    assert _same(unit(due, i), unit(expected, i)), i
  assert not _same(unit(due, 1), unit(none_due, 1))


def test_outer_loss_is_the_configured_a2c_term(monkeypatch):
  meta = optim4rl.init_meta_params(jax.random.key(0), CFG.rule)
  unit = M.world_task(CFG, GRID, 0).fresh_units(jax.random.split(jax.random.PRNGKey(5), 1))
  unit = jax.tree.map(lambda x: x[0], unit)
  terms = []  # every a2c.losses call; the last is the outer loss's, on the next rollout
  losses = M.a2c.losses
  monkeypatch.setattr(M.a2c, "losses", lambda *a, **k: terms.append(losses(*a, **k)) or terms[-1])
  for name in M.OUTER_LOSSES:
    task = M.world_task(CFG, dataclasses.replace(GRID, outer_loss=name), 0)
    outer, _ = task.unit_loss(meta, unit)
    assert float(outer) == float(terms[-1][name])
  assert float(terms[-1]["total"]) != float(terms[-1]["actor"])
  with pytest.raises(ValueError, match="unknown outer loss"):
    dataclasses.replace(GRID, outer_loss="critic")


def test_agent_schedule_decays_steps_over_a_units_life():
  meta = optim4rl.init_meta_params(jax.random.key(0), CFG.rule)

  def moves(grid):  # how far a unit's parameters move in its first and its last+1 iteration
    task = M.world_task(CFG, grid, 0)
    iterate = jax.jit(lambda u: task.unit_loss(meta, u)[1][0])
    moved = lambda u: max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(iterate(u).params), jax.tree.leaves(u.params)))
    unit = jax.tree.map(lambda x: x[0], task.fresh_units(jax.random.split(jax.random.key(5), 1)))
    first = moved(unit)
    for _ in range(CFG.reset_interval):  # a whole life: reset_interval x M updates
      unit = iterate(unit)
    return first, moved(unit)

  first, spent = moves(dataclasses.replace(GRID, agent_schedule="linear"))
  assert first > 0.0 and spent == 0.0  # at the end of its life a unit's steps are 0
  assert moves(GRID)[1] > 0.0
  with pytest.raises(ValueError, match="unknown agent schedule"):
    dataclasses.replace(GRID, agent_schedule="cosine")


def test_meta_gradient_same_on_every_backend():
  meta = optim4rl.init_meta_params(jax.random.key(1), CFG.rule)
  units = M.world_task(CFG, GRID, 0).fresh_units(jax.random.split(jax.random.PRNGKey(0), CFG.units))
  grads = {}
  backends = ("reference",) + required_kernel_backends()  # a missing kernel backend fails
  for backend in backends:
    cfg = dataclasses.replace(CFG, backend=backend)
    step = pipeline.meta_step(M.world_task(cfg, GRID, 0), cfg)
    g, _, _ = jax.jit(lambda m, u: step(m, u, jnp.int32(1), jax.random.PRNGKey(3)))(meta, units)
    grads[backend] = optim4rl.flatten_meta(g, cfg.rule)
  ref = grads.pop("reference")
  assert float(jnp.linalg.norm(ref)) > 0 and grads
  for backend, g in grads.items():
    assert rel_err(g, ref) < 1e-3, backend
  # Units whose optimizer state is bfloat16 (the kernels against the reference on such
  # states: tests/backends/test_bf16_hidden.py): close to the float32 state's.
  cfg = dataclasses.replace(CFG, backend=required_kernel_backends()[0], hidden_dtype="bfloat16")
  task = M.world_task(cfg, GRID, 0)
  units = task.fresh_units(jax.random.split(jax.random.PRNGKey(0), CFG.units))
  assert optax.tree_utils.tree_get(units.opt_state, "hidden").dtype == jnp.bfloat16
  step = pipeline.meta_step(task, cfg)
  g, _, _ = jax.jit(lambda m, u: step(m, u, jnp.int32(1), jax.random.PRNGKey(3)))(meta, units)
  assert rel_err(optim4rl.flatten_meta(g, cfg.rule), ref, norm="l2") < 2e-2  # measured 2.3e-3


def test_killed_run_resumes_exactly(tmp_path):
  whole = meta_train(dataclasses.replace(CFG, iterations=4), GRID, tmp_path / "whole",
                     checkpoint_every=2)
  meta_train(dataclasses.replace(CFG, iterations=2), GRID, tmp_path / "split", checkpoint_every=2)
  resumed = meta_train(dataclasses.replace(CFG, iterations=4), GRID, tmp_path / "split",
                       checkpoint_every=2, log_every=3)  # read at other iterations: same run
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  logs = [(tmp_path / run / "log.csv").read_text().strip().splitlines() for run in
          ("whole", "split")]
  assert [r.split(",")[0] for r in logs[1][1:]] == ["1", "2", "3", "4"]
  without_seconds = lambda rows: [r.split(",")[:1] + r.split(",")[2:] for r in rows]
  assert without_seconds(logs[0]) == without_seconds(logs[1])
  loaded, rule = optim4rl.load_meta_params(tmp_path / "split" / "meta.npz")
  assert rule == CFG.rule
  np.testing.assert_array_equal(optim4rl.flatten_meta(loaded, rule),
                                optim4rl.flatten_meta(resumed, rule))
  with pytest.raises(ValueError, match="another configuration.*units"):
    meta_train(dataclasses.replace(CFG, units=8), GRID, tmp_path / "split")
  with pytest.raises(ValueError, match="another configuration.*agent_lrs"):
    meta_train(CFG, dataclasses.replace(GRID, agent_lrs=(2e-2,)), tmp_path / "split")


def test_the_loop_runs_any_plugin_and_stops_at_a_non_finite_meta_gradient(tmp_path):
  cfg = dataclasses.replace(CFG, reset_interval=100)  # no resets after the first iteration
  meta_train(cfg, Toy(), tmp_path / "fine")
  rows = (tmp_path / "fine" / "log.csv").read_text().strip().splitlines()
  assert rows[0].endswith("return_toy") and len(rows) == 5
  with pytest.raises(FloatingPointError, match="iteration 3 is not finite"):
    meta_train(cfg, Toy(nan_from=3), tmp_path / "nan", checkpoint_every=2, log_every=10)
  assert [p.name for p in (tmp_path / "nan" / "checkpoints").iterdir()] == ["2"]
  rows = (tmp_path / "nan" / "log.csv").read_text().strip().splitlines()
  assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
  saved, rule = optim4rl.load_meta_params(tmp_path / "nan" / "meta.npz")
  assert np.all(np.isfinite(optim4rl.flatten_meta(saved, rule)))
  with pytest.raises(ValueError, match="another configuration.*nan_from"):
    meta_train(cfg, Toy(), tmp_path / "nan")
  with pytest.raises(ValueError,
                     match=r"another task's run \(a Toy run\), not A2C on small_dense_short"):
    meta_train(cfg, GRID, tmp_path / "nan")


def test_moving_average_of_meta_parameters(tmp_path):
  cfg = dataclasses.replace(CFG, iterations=1, average_decay=0.25)
  meta_train(cfg, GRID, tmp_path)
  meta1, rule = optim4rl.load_meta_params(tmp_path / "meta.npz")
  avg, _ = optim4rl.load_meta_params(tmp_path / "meta_avg.npz")
  k_meta, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))
  meta0 = optim4rl.init_meta_params(k_meta, rule)
  flat = lambda m: np.asarray(optim4rl.flatten_meta(m, rule))
  assert not np.allclose(flat(meta1), flat(meta0))
  np.testing.assert_allclose(flat(avg), 0.25 * flat(meta0) + 0.75 * flat(meta1), rtol=1e-6,
                             atol=1e-7)
  with pytest.raises(ValueError, match="average_decay"):
    dataclasses.replace(CFG, average_decay=1.0)


VALIDATED = dataclasses.replace(CFG, validate_every=2)
VALIDATED_GRID = dataclasses.replace(GRID, validate_seeds=2,
                                     validate_steps=512 * 20 * 12)  # 12 updates of 512 worlds


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_validation_scores_as_evaluation_does(schedule):
  from optim4rl.schedules import scheduled
  from optim4rl.training.curve import final_returns
  from optim4rl.training.a2c import optimizer_updates, train
  grid = dataclasses.replace(VALIDATED_GRID, agent_schedule=schedule)
  meta = optim4rl.init_meta_params(jax.random.key(2), VALIDATED.rule)
  tx = optim4rl.learned_optimizer(meta, rule=VALIDATED.rule, learning_rate=grid.agent_lr(0),
                                  clip=VALIDATED.clip)
  tx = scheduled(tx, schedule, optimizer_updates(grid.validate_steps, chunks=12))
  curve = train(grid.world(0), tx, steps=grid.validate_steps, seeds=range(M.VALIDATION_SEED,
                M.VALIDATION_SEED + grid.validate_seeds), chunks=12)
  expected = final_returns(curve)
  got = np.asarray(M.validation_returns(VALIDATED, grid)(meta))
  assert np.all(np.isfinite(expected))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_final_return_skips_updates_without_episodes():
  from optim4rl.training.curve import last_tenth
  from optim4rl.training.curve import episode_means
  ret = np.array([[1.0, 2.0, 0.0, 9.0, 0.0] * 5])
  eps = np.array([[1.0, 1.0, 0.0, 3.0, 0.0] * 5])  # 15 updates with episodes: last 1 counts
  assert float(last_tenth(episode_means(ret, eps))[0]) == 3.0
  assert np.isnan(float(last_tenth(episode_means(ret, np.zeros_like(eps)))[0]))


def test_validation_keeps_the_best_and_resumes(tmp_path):
  half = meta_train(dataclasses.replace(VALIDATED, iterations=2), VALIDATED_GRID,
                    tmp_path / "split", checkpoint_every=2)
  meta_train(VALIDATED, VALIDATED_GRID, tmp_path / "split", checkpoint_every=2)
  whole = meta_train(VALIDATED, VALIDATED_GRID, tmp_path / "whole", checkpoint_every=4)
  text = (tmp_path / "whole" / "validation.csv").read_text()
  assert (tmp_path / "split" / "validation.csv").read_text() == text
  rows = [line.split(",") for line in text.strip().splitlines()[1:]]
  assert [r[0] for r in rows] == ["2", "4"]
  scores = [float(r[1]) for r in rows]
  validate = M.validation_returns(VALIDATED, VALIDATED_GRID)
  expected = [float(np.mean(validate(m))) for m in (half, whole)]
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  flat = lambda m: np.asarray(optim4rl.flatten_meta(m, VALIDATED.rule))
  best = (half, whole)[int(np.argmax(scores))]
  for run in ("whole", "split"):
    kept, _ = optim4rl.load_meta_params(tmp_path / run / "meta_best.npz")
    np.testing.assert_array_equal(flat(kept), flat(best))
  with pytest.raises(ValueError, match="validate_seeds"):
    dataclasses.replace(GRID, validate_seeds=0)


# PPO's split runs the same shard_map code as the gridworld's, with Brax's compile (100 s):
# slow, outside CI's run.
@pytest.mark.parametrize("kind", ["gridworld", pytest.param("ppo", marks=pytest.mark.slow)])
def test_units_split_over_two_host_devices_match_one_device(kind):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  case = os.path.join(os.path.dirname(__file__), "sharded_case.py")
  out = subprocess.run([sys.executable, case, kind, "cpu"], capture_output=True, text=True,
                       env=env, timeout=900)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  assert "sharded == single" in out.stdout


def test_validation_scores_the_moving_average_when_one_is_kept(tmp_path):
  cfg = dataclasses.replace(VALIDATED, iterations=2, average_decay=0.5)
  meta_train(cfg, VALIDATED_GRID, tmp_path, checkpoint_every=2)
  avg, _ = optim4rl.load_meta_params(tmp_path / "meta_avg.npz")
  best, _ = optim4rl.load_meta_params(tmp_path / "meta_best.npz")
  flat = lambda m: np.asarray(optim4rl.flatten_meta(m, cfg.rule))
  np.testing.assert_array_equal(flat(best), flat(avg))  # the only validated iteration
  score = float((tmp_path / "validation.csv").read_text().splitlines()[1].split(",")[1])
  validate = M.validation_returns(cfg, VALIDATED_GRID)
  np.testing.assert_allclose(score, float(np.mean(validate(avg))), rtol=1e-5)


def test_chunked_meta_gradient_equals_unchunked():
  """Units run a chunk at a time (the due ones reset inside their chunk): the same
  meta-gradient, units and returns as all at once, up to rounding."""
  cfg = dataclasses.replace(CFG, units=8, reset_interval=4)  # offsets 0, 0, 1, 1, 2, 2, 3, 3
  task = M.world_task(cfg, GRID, 0)
  meta = optim4rl.init_meta_params(jax.random.key(0), cfg.rule)
  units = task.fresh_units(jax.random.split(jax.random.PRNGKey(1), cfg.units))
  units = jax.jit(pipeline.meta_step(task, cfg))(meta, units, jnp.int32(1),
                                                jax.random.PRNGKey(2))[1]
  out = {chunk: jax.jit(pipeline.meta_step(task, cfg, unit_chunk=chunk))(
      meta, units, jnp.int32(6), jax.random.PRNGKey(3)) for chunk in (None, 2, 8)}
  flat = lambda g: np.asarray(optim4rl.flatten_meta(g, cfg.rule))
  assert np.any(flat(out[None][0]) != 0)
  for a, b in zip(jax.tree.leaves(out[None]), jax.tree.leaves(out[8])):  # one chunk: the same
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(flat(out[2][0]), flat(out[None][0]), rtol=1e-5,
                             atol=1e-6 * np.max(np.abs(flat(out[None][0]))))
  for a, b in zip(jax.tree.leaves(out[2][1:]), jax.tree.leaves(out[None][1:])):
    # XLA's numerics of a batch of 2 units and of 8 differ in the last bits; 4 updates later,
    # a handful of agent parameters differ by up to ~1e-4 relative.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
  with pytest.raises(ValueError, match="does not divide"):
    pipeline.meta_step(task, cfg, unit_chunk=3)


def test_auto_unit_chunk_follows_the_memory_budget():
  cfg = dataclasses.replace(CFG, units=128, envs_per_unit=1)
  task = M.world_task(cfg, GRID, 0)
  meta = optim4rl.init_meta_params(jax.random.key(0), cfg.rule)
  units = task.fresh_units(jax.random.split(jax.random.PRNGKey(1), 128))
  per_unit = pipeline.unit_working_bytes(task, meta, units, 128)
  assert per_unit > 0
  assert pipeline.chunk_for_budget(128, per_unit, 1e15) == 128
  assert pipeline.chunk_for_budget(128, per_unit, 1.0) == 1
  assert pipeline.chunk_for_budget(128, per_unit, 5.5 * per_unit) == 4  # largest divisor <= 5
  assert pipeline.chunk_for_budget(96, per_unit, 40 * per_unit) == 32
  assert pipeline.auto_unit_chunk(task, meta, units, 128, budget_bytes=2.5 * per_unit) == 2
  assert pipeline.auto_unit_chunk(task, meta, units, 64, budget_bytes=1.0) == 64  # small: all
  assert pipeline.memory_budget() > 0
