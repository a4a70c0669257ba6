import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optim4rl
from optim4rl.meta import a2c as M
from optim4rl.meta import pipeline
from optim4rl.meta.loop import meta_train

TINY = M.MetaConfig(worlds=("small_dense_short",), agent_lrs=(1e-2,), units=4, envs_per_unit=2,
                    reset_interval=4, iterations=4, seed=0)


def test_reset_offsets_evenly_spaced():
  r = np.asarray(pipeline.reset_offsets(512, 256))
  assert r[0] == 0 and r[-1] == 255 and np.all(np.diff(r) >= 0)
  assert np.asarray(pipeline.reset_offsets(4, 4)).tolist() == [0, 1, 2, 3]


def test_config_errors():
  with pytest.raises(ValueError, match="unknown gridworld"):
    M.MetaConfig(worlds=("nowhere",))
  with pytest.raises(ValueError, match="one per world"):
    M.MetaConfig(worlds=("small_dense_short", "big_dense_long"), agent_lrs=(1e-2, 1e-3, 1e-4))
  with pytest.raises(ValueError, match="unknown rule"):
    M.MetaConfig(rule="adam")
  with pytest.raises(ValueError, match="units"):
    M.MetaConfig(units=0)
  assert M.MetaConfig(worlds=("small_dense_short", "big_dense_long"),
                      agent_lrs=(1e-2,)).world(0).reward_scale == 100.0


def _units(cfg, world, seed=0):
  return jax.vmap(lambda k: M.init_unit(world, cfg.rule, cfg.envs_per_unit, k))(
      jax.random.split(jax.random.PRNGKey(seed), cfg.units))


def test_pipeline_resets_only_the_units_due():
  cfg, world = TINY, TINY.world(0)
  meta = optim4rl.init_meta_params(jax.random.key(0), cfg.rule)
  units = _units(cfg, world)
  units = units._replace(opt_state=units.opt_state._replace(
      count=jnp.full((cfg.units,), 4, jnp.int32)))  # as if each had taken 4 updates
  t = 6  # 6 mod 4 == 2: only unit 2 starts afresh, from the reset key's unit 2
  _, after, _ = M.task_meta_gradient(meta, units, jnp.int32(t), jax.random.PRNGKey(9), world,
                                     cfg, 1e-2)
  counts = np.asarray(after.opt_state.count)
  assert counts.tolist() == [8, 8, 4, 8]  # M = 4 updates, on top of 4 earlier ones unless reset


def test_outer_loss_is_the_configured_a2c_term(monkeypatch):
  world = TINY.world(0)
  meta = optim4rl.init_meta_params(jax.random.key(0), TINY.rule)
  unit = M.init_unit(world, TINY.rule, TINY.envs_per_unit, jax.random.PRNGKey(5))
  terms = []  # every a2c.losses call; the last is the outer loss's, on the next rollout
  losses = M.a2c.losses
  monkeypatch.setattr(M.a2c, "losses", lambda *a, **k: terms.append(losses(*a, **k)) or terms[-1])
  for name in M.OUTER_LOSSES:
    cfg = dataclasses.replace(TINY, outer_loss=name)
    outer, _ = M.unit_meta_loss(meta, unit, world, cfg, 1e-2)
    assert float(outer) == float(terms[-1][name])
  assert float(terms[-1]["total"]) != float(terms[-1]["actor"])
  with pytest.raises(ValueError, match="unknown outer loss"):
    dataclasses.replace(TINY, outer_loss="critic")


def test_agent_schedule_decays_steps_over_a_units_life():
  world = TINY.world(0)
  meta = optim4rl.init_meta_params(jax.random.key(0), TINY.rule)
  unit = M.init_unit(world, TINY.rule, TINY.envs_per_unit, jax.random.PRNGKey(5))
  life = TINY.reset_interval * TINY.inner_updates
  spent = unit._replace(opt_state=unit.opt_state._replace(count=jnp.int32(life)))
  moved = lambda cfg, u: max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(M.unit_meta_loss(meta, u, world, cfg, 1e-2)[1][0].params),
      jax.tree.leaves(u.params)))
  linear = dataclasses.replace(TINY, agent_schedule="linear")
  assert moved(linear, spent) == 0.0  # at the end of its life a unit's steps are 0
  assert moved(linear, unit) > 0.0 and moved(TINY, spent) > 0.0
  with pytest.raises(ValueError, match="unknown agent schedule"):
    dataclasses.replace(TINY, agent_schedule="cosine")


def test_meta_gradient_same_on_every_backend():
  cfg, world = TINY, TINY.world(0)
  meta = optim4rl.init_meta_params(jax.random.key(1), cfg.rule)
  units = _units(cfg, world)
  grads = {}
  for backend in optim4rl.available_backends():
    c = dataclasses.replace(cfg, backend=backend)
    g, _, _ = jax.jit(lambda m, u: M.task_meta_gradient(m, u, jnp.int32(1), jax.random.PRNGKey(3),
                                                        world, c, 1e-2))(meta, units)
    grads[backend] = optim4rl.flatten_meta(g, cfg.rule)
  ref = grads.pop("reference")
  assert float(jnp.linalg.norm(ref)) > 0
  for backend, g in grads.items():
    err = float(jnp.max(jnp.abs(g - ref)) / jnp.max(jnp.abs(ref)))
    assert err < 1e-3, (backend, err)


def test_killed_run_resumes_exactly(tmp_path):
  whole = meta_train(dataclasses.replace(TINY, iterations=4), tmp_path / "whole",
                     checkpoint_every=2)
  meta_train(dataclasses.replace(TINY, iterations=2), tmp_path / "split", checkpoint_every=2)
  resumed = meta_train(dataclasses.replace(TINY, iterations=4), tmp_path / "split",
                       checkpoint_every=2)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rows = (tmp_path / "split" / "log.csv").read_text().strip().splitlines()
  assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
  loaded, rule = optim4rl.load_meta_params(tmp_path / "split" / "meta.npz")
  assert rule == TINY.rule
  np.testing.assert_array_equal(optim4rl.flatten_meta(loaded, rule),
                                optim4rl.flatten_meta(resumed, rule))
  with pytest.raises(ValueError, match="another configuration"):
    meta_train(dataclasses.replace(TINY, units=8), tmp_path / "split")


def test_moving_average_of_meta_parameters(tmp_path):
  cfg = dataclasses.replace(TINY, iterations=1, average_decay=0.25)
  meta_train(cfg, tmp_path)
  meta1, rule = optim4rl.load_meta_params(tmp_path / "meta.npz")
  avg, _ = optim4rl.load_meta_params(tmp_path / "meta_avg.npz")
  k_meta, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))
  meta0 = optim4rl.init_meta_params(k_meta, rule)
  flat = lambda m: np.asarray(optim4rl.flatten_meta(m, rule))
  assert not np.allclose(flat(meta1), flat(meta0))
  np.testing.assert_allclose(flat(avg), 0.25 * flat(meta0) + 0.75 * flat(meta1), rtol=1e-6,
                             atol=1e-7)
  with pytest.raises(ValueError, match="average_decay"):
    dataclasses.replace(TINY, average_decay=1.0)


VALIDATED = dataclasses.replace(TINY, validate_every=2, validate_seeds=2,
                                validate_steps=512 * 20 * 12)  # 12 updates of 512 worlds


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_validation_scores_as_evaluation_does(schedule):
  from optim4rl.schedules import scheduled
  from optim4rl.training.curve import final_returns
  from optim4rl.training.a2c import optimizer_updates, train
  cfg = dataclasses.replace(VALIDATED, agent_schedule=schedule)
  meta = optim4rl.init_meta_params(jax.random.key(2), cfg.rule)
  tx = optim4rl.learned_optimizer(meta, rule=cfg.rule, learning_rate=cfg.agent_lr(0),
                                  clip=cfg.clip)
  tx = scheduled(tx, schedule, optimizer_updates(cfg.validate_steps, chunks=12))
  curve = train(cfg.world(0), tx, steps=cfg.validate_steps, seeds=range(M.VALIDATION_SEED,
                M.VALIDATION_SEED + cfg.validate_seeds), chunks=12)
  expected = final_returns(curve)
  got = np.asarray(M.validation_returns(cfg)(meta))
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
  half = meta_train(dataclasses.replace(VALIDATED, iterations=2), tmp_path / "split",
                    checkpoint_every=2)
  meta_train(VALIDATED, tmp_path / "split", checkpoint_every=2)
  whole = meta_train(VALIDATED, tmp_path / "whole", checkpoint_every=4)
  text = (tmp_path / "whole" / "validation.csv").read_text()
  assert (tmp_path / "split" / "validation.csv").read_text() == text
  rows = [line.split(",") for line in text.strip().splitlines()[1:]]
  assert [r[0] for r in rows] == ["2", "4"]
  scores = [float(r[1]) for r in rows]
  expected = [float(np.mean(M.validation_returns(VALIDATED)(m))) for m in (half, whole)]
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  flat = lambda m: np.asarray(optim4rl.flatten_meta(m, VALIDATED.rule))
  best = (half, whole)[int(np.argmax(scores))]
  for run in ("whole", "split"):
    kept, _ = optim4rl.load_meta_params(tmp_path / run / "meta_best.npz")
    np.testing.assert_array_equal(flat(kept), flat(best))
  with pytest.raises(ValueError, match="validate_seeds"):
    dataclasses.replace(TINY, validate_seeds=0)


@pytest.mark.parametrize("kind", ["gridworld", "ppo"])
def test_units_split_over_two_host_devices_match_one_device(kind):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  case = os.path.join(os.path.dirname(__file__), "sharded_case.py")
  out = subprocess.run([sys.executable, case, kind, "cpu"], capture_output=True, text=True,
                       env=env, timeout=900)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  assert "sharded == single" in out.stdout


def test_validation_scores_the_moving_average_when_one_is_kept(tmp_path):
  cfg = dataclasses.replace(VALIDATED, iterations=2, average_decay=0.5)
  meta_train(cfg, tmp_path, checkpoint_every=2)
  avg, _ = optim4rl.load_meta_params(tmp_path / "meta_avg.npz")
  best, _ = optim4rl.load_meta_params(tmp_path / "meta_best.npz")
  flat = lambda m: np.asarray(optim4rl.flatten_meta(m, cfg.rule))
  np.testing.assert_array_equal(flat(best), flat(avg))  # the only validated iteration
  score = float((tmp_path / "validation.csv").read_text().splitlines()[1].split(",")[1])
  np.testing.assert_allclose(score, float(np.mean(M.validation_returns(cfg)(avg))), rtol=1e-5)
