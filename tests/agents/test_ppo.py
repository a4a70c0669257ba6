"""PPO on Brax with (learned) optax optimizers, PPO meta-training, and its multi-device split."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim4rl
from optim4rl.evaluation import gradients
from optim4rl.meta import ppo as meta_ppo
from optim4rl.meta.config import MetaConfig
from optim4rl.training import ppo as train_ppo
from optim4rl.envs import brax_tasks


def test_unknown_and_removed_tasks_are_refused():
  with pytest.raises(ValueError, match="no longer part of Brax"):
    brax_tasks.settings("ur5e")
  with pytest.raises(ValueError, match="unknown Brax task"):
    brax_tasks.make("antt")
  with pytest.raises(ValueError, match="multiple of the number of envs"):
    train_ppo.train("inverted_pendulum", optax.adam(1e-3), steps=10,
                    settings=train_ppo.small("inverted_pendulum", num_envs=48))
  with pytest.raises(ValueError, match="units"):
    MetaConfig(units=0)
  with pytest.raises(ValueError, match="multiple of the number of envs"):
    meta_ppo.BraxConfig(task="inverted_pendulum", batch_size=2).settings(
        MetaConfig(envs_per_unit=3))


def test_every_listed_task_exists_in_brax():
  from brax import envs
  for name in brax_tasks.TASKS:
    envs.get_environment(name)


def test_adam_ppo_learns_inverted_pendulum():
  # A random policy keeps the pole up for ~10 steps; 1000 is the episode limit.
  curve = train_ppo.train("inverted_pendulum", optax.adam(3e-4), steps=150_000,
                          settings=train_ppo.small("inverted_pendulum"), chunks=6, eval_envs=8)
  assert not np.any(np.isnan(curve.returns))  # evaluation episodes: a return every chunk
  assert curve.returns[0, -2:].mean() > 500, curve.returns
  from optim4rl.agents import ppo
  s = train_ppo.small("inverted_pendulum")
  env = brax_tasks.make("inverted_pendulum")
  nets = ppo.make_networks(env, s)
  fresh = ppo.init(env, nets, optax.adam(3e-4), jax.random.PRNGKey(0), s.num_envs)
  untrained = float(jax.jit(lambda st: ppo.evaluate(env, nets, st, st.key, 8, s))(fresh))
  assert untrained < 100, untrained


def test_learned_optimizer_trains_ppo_and_records_gradients():
  meta = optim4rl.init_meta_params(jax.random.key(0), "optim4rl_public")
  tx = optim4rl.learned_optimizer(meta, rule="optim4rl_public", learning_rate=1e-3)
  s = train_ppo.small("inverted_pendulum", value_hidden=(32, 32))
  curve = train_ppo.train("inverted_pendulum", tx, steps=2 * 64 * 4 * 5, settings=s, chunks=2,
                          seeds=(0, 1), grad_stat=gradients.log_histogram)
  assert curve.stats.shape == (2, 2, gradients.BINS)
  assert np.all(np.isfinite(curve.losses))
  env = brax_tasks.make("inverted_pendulum")
  from optim4rl.agents import ppo
  params = ppo.init_params(ppo.make_networks(env, s), jax.random.PRNGKey(0))
  n = sum(x.size for x in jax.tree.leaves(params))
  steps = s.num_minibatches * s.num_updates_per_batch  # one update per chunk
  np.testing.assert_array_equal(curve.stats.sum(-1), n * steps)
  # What schedules are told: the optimizer updates the run made (here 2 chunks of 1 iteration).
  assert train_ppo.optimizer_updates("inverted_pendulum", 2 * 64 * 4 * 5, s, chunks=2) == 2 * steps


# Resuming is RunCheckpoint's, tested on A2C and gymnax PPO in CI; Brax's compile makes this
# one 70 s: slow, outside CI's run.
@pytest.mark.slow
def test_killed_ppo_run_resumes_to_the_same_curve(tmp_path):
  from optim4rl.training.checkpoint import RunCheckpoint
  s = train_ppo.small("inverted_pendulum")
  from optim4rl.agents import ppo
  steps = 3 * ppo.env_steps_per_update(s)
  run = lambda **kw: train_ppo.train("inverted_pendulum", optax.adam(3e-4), steps=steps,
                                     settings=s, chunks=3, seeds=(0, 1), **kw)
  whole = run()

  def kill(chunk, env_steps, mean_return):
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):  # Brax's states and PPO's statistics saved by orbax
    run(checkpoint=RunCheckpoint(tmp_path, {}, every_seconds=0), progress=kill)
  ckpt = RunCheckpoint(tmp_path, {})
  resumed = run(checkpoint=ckpt)
  assert ckpt.resumed_after == 1
  np.testing.assert_array_equal(resumed.returns, whole.returns)
  np.testing.assert_array_equal(resumed.losses, whole.losses)


def test_meta_ppo_gradient_is_finite_and_nonzero():
  from optim4rl.meta import pipeline
  cfg = MetaConfig(units=2, reset_interval=2)
  task = meta_ppo.BraxConfig(task="inverted_pendulum", batch_size=2, value_hidden=(8,)).tasks(
      cfg).tasks[0]
  units = task.fresh_units(jax.random.split(jax.random.key(1), cfg.units))
  meta = optim4rl.init_meta_params(jax.random.key(0), cfg.rule)
  grads, units, (ret, eps) = jax.jit(pipeline.meta_step(task, cfg))(
      meta, units, jnp.int32(0), jax.random.key(2))
  leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert max(np.abs(g).max() for g in leaves) > 0
  assert jax.tree.structure(grads) == jax.tree.structure(meta)


# Meta-training resumes through the same loop for every plug-in (gridworld: test_meta.py,
# test_cli.py, test_faults.py); three Brax compiles make this one 70 s: slow, outside CI's run.
@pytest.mark.slow
def test_ppo_meta_training_from_the_cli_resumes_exactly(tmp_path, capsys):
  from optim4rl.cli import main

  def run(out, iterations):
    return main(["meta-train", "--task", "inverted_pendulum", "--units", "2", "--batch-size", "2",
                 "--reset-interval", "2", "--iterations", str(iterations), "--checkpoint-every",
                 "1", "--out", str(tmp_path / out)])
  assert run("whole", 2) == 0
  assert run("split", 1) == 0
  assert run("split", 2) == 0  # resumes from iteration 1
  whole, rule = optim4rl.load_meta_params(tmp_path / "whole" / "meta.npz")
  resumed, _ = optim4rl.load_meta_params(tmp_path / "split" / "meta.npz")
  np.testing.assert_array_equal(optim4rl.flatten_meta(whole, rule),
                                optim4rl.flatten_meta(resumed, rule))
  fresh = optim4rl.init_meta_params(jax.random.PRNGKey(0), rule)
  assert not np.array_equal(optim4rl.flatten_meta(whole, rule), optim4rl.flatten_meta(fresh, rule))
  rows = (tmp_path / "split" / "log.csv").read_text().strip().splitlines()
  assert rows[0].split(",")[-1] == "return_inverted_pendulum" and len(rows) == 3


def test_cli_evaluates_a_learned_optimizer_on_brax(tmp_path, capsys):
  from optim4rl.cli import main
  meta = optim4rl.init_meta_params(jax.random.key(0), "optim4rl_public")
  optim4rl.save_meta_params(tmp_path / "meta.npz", meta, "optim4rl_public")
  code = main(["evaluate", "--task", "inverted_pendulum", "--small", "--seeds", "2", "--steps",
               "5120", "--optimizers", "adam", f"learned:{tmp_path / 'meta.npz'}@1e-3",
               "--out", str(tmp_path / "eval")])
  assert code == 0
  text = capsys.readouterr().out
  assert "inverted_pendulum" in text and "learned:" in text and "+-" in text
  assert (tmp_path / "eval" / "returns.png").stat().st_size > 1000
  with pytest.raises(SystemExit):
    main(["train", "--task", "ur5e"])
  assert "no longer part of Brax" in capsys.readouterr().err


def test_cli_gradient_distributions(tmp_path, capsys):
  from optim4rl.cli import main
  code = main(["gradients", "--worlds", "small_dense_short", "--tasks", "inverted_pendulum",
               "--small", "--world-steps", "20480", "--envs", "64", "--task-steps", "5120",
               "--out", str(tmp_path)])
  assert code == 0
  lines = capsys.readouterr().out.splitlines()
  row = next(line for line in lines if line.startswith("inverted_pendulum"))
  shares = [float(x) for x in row.split()[1:]]
  assert len(shares) == 2 and all(0.0 <= x <= 1.0 for x in shares) and shares[0] == shares[1]
  hists = np.load(tmp_path / "histograms.npz")
  assert {"small_dense_short/early", "inverted_pendulum/late", "edges"} <= set(hists.files)
  assert hists["inverted_pendulum/late"].sum() > 0
  assert (tmp_path / "gradients_inverted_pendulum.png").stat().st_size > 1000
