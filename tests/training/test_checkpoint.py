"""Resumable training runs: a run killed between chunks and resumed ends with the same curve
as an uninterrupted one; a directory of another run is refused."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from optim4rl import envs
from optim4rl.training.checkpoint import RunCheckpoint
from optim4rl.training.a2c import init_agent, train
from optim4rl.training.loop import chunk_plan

ENVS, SEEDS, CHUNKS = 32, (0, 1), 6
STEPS = ENVS * 20 * CHUNKS  # one update per chunk


class Killed(Exception):
  pass


def kill_after(chunk):
  def progress(c, env_steps, mean_return):
    if c == chunk:
      raise Killed
  return progress


def run(**kw):
  kw = {"steps": STEPS, "chunks": CHUNKS, **kw}
  return train(envs.make("small_dense_short"), optax.adam(1e-2), num_envs=ENVS, seeds=SEEDS,
               **kw)


def fresh_state():
  world = envs.make("small_dense_short")
  keys = jnp.stack([jax.random.PRNGKey(s) for s in SEEDS])
  return jax.vmap(lambda k: init_agent(world, optax.adam(1e-2), k, ENVS))(keys)


def test_killed_run_resumes_to_the_same_curve(tmp_path):
  whole = run()
  ckpt = lambda: RunCheckpoint(tmp_path, {"what": "test"}, every_seconds=0)
  with pytest.raises(Killed):
    run(checkpoint=ckpt(), progress=kill_after(2))  # chunks 0-2 done and saved
  # Killed again between saving the state after chunk 4 and writing its history: that chunk
  # must run again.
  partial = ckpt()
  state, done, returns, _, _ = partial.restore(fresh_state(), *chunk_plan(STEPS, ENVS * 20, CHUNKS))
  assert done == 3 and len(returns) == 3
  partial._state_manager().save(4, args=ocp.args.StandardSave(state))
  partial.close()

  resumed_ckpt = ckpt()
  resumed = run(checkpoint=resumed_ckpt)
  assert resumed_ckpt.resumed_after == 3
  resumed_ckpt.close()
  for field in ("steps", "returns", "losses"):
    np.testing.assert_array_equal(getattr(resumed, field), getattr(whole, field))
  # Finished: a further call restores everything and trains nothing.
  again = run(checkpoint=ckpt(), progress=kill_after(CHUNKS - 2))
  np.testing.assert_array_equal(again.returns, whole.returns)


def test_another_run_is_refused(tmp_path):
  RunCheckpoint(tmp_path, {"optimizer": "adam@1e-2"}).close()
  with pytest.raises(ValueError, match="holds another run"):
    RunCheckpoint(tmp_path, {"optimizer": "adam@3e-2"})
  ckpt = RunCheckpoint(tmp_path, {"optimizer": "adam@1e-2"}, every_seconds=0)
  run(checkpoint=ckpt)
  ckpt.close()
  with pytest.raises(ValueError, match="holds a run of 6 chunks"):
    run(chunks=3, checkpoint=RunCheckpoint(tmp_path, {"optimizer": "adam@1e-2"}))
