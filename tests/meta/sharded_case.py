"""Run by the tests in a fresh process with 2 simulated host devices: meta-training with its
units split over both devices (A2C on a gridworld, or PPO on Brax) gives the single-device
meta-gradient and units, and (gridworld) the meta-training loop runs and resumes so split.

Usage: sharded_case.py gridworld|ppo BACKEND
"""
import dataclasses
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from optim4rl import rules  # noqa: E402
from optim4rl.meta import a2c as meta_a2c, pipeline  # noqa: E402
from optim4rl.meta.config import MetaConfig  # noqa: E402
from optim4rl.meta.loop import meta_train  # noqa: E402

# Run as a script (cwd: the repository root): the tests' one rel_err lives in tests/conftest.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import conftest  # noqa: E402


def rel_err(a, b) -> float:
  # Euclidean: whole units and optimizer states, whose rounding differences between the two
  # programs spread over many entries (the max norm sees 2e-4 on PPO's hidden states).
  return conftest.rel_err(a, b, norm="l2")


def gridworld_case(backend):
  cfg = MetaConfig(units=4, envs_per_unit=2, reset_interval=2, backend=backend)
  return cfg, meta_a2c.GridworldConfig()


def ppo_case(backend):
  from optim4rl.meta import ppo as meta_ppo
  cfg = MetaConfig(units=4, reset_interval=2, backend=backend)
  return cfg, meta_ppo.BraxConfig(task="inverted_pendulum", batch_size=4, value_hidden=(16, 16))


def main(kind, backend):
  assert len(jax.devices()) == 2, jax.devices()
  cfg, plugin = {"gridworld": gridworld_case, "ppo": ppo_case}[kind](backend)
  task = plugin.tasks(cfg).tasks[0]
  units = task.fresh_units(jax.random.split(jax.random.key(1), cfg.units))
  meta = rules.init_meta_params(jax.random.key(0), cfg.rule)
  single = jax.jit(pipeline.meta_step(task, cfg))
  sharded = jax.jit(pipeline.meta_step(task, cfg, pipeline.units_mesh()))
  u1 = u2 = units
  for t in range(2):  # the second iteration resets half the units
    key = jax.random.key(10 + t)
    g1, u1, (r1, e1) = single(meta, u1, jnp.int32(t), key)
    g2, u2, (r2, e2) = sharded(meta, u2, jnp.int32(t), key)
    assert len(jax.tree.leaves(u2.params)[0].sharding.device_set) == 2, "units are not split"
    # The two programs fuse differently, so they agree to rounding, not bit for bit.
    assert rel_err(g2, g1) <= 1e-4, (t, rel_err(g2, g1))
    assert rel_err(u2.params, u1.params) <= 1e-5, (t, rel_err(u2.params, u1.params))
    assert rel_err(u2.opt_state, u1.opt_state) <= 1e-4, (t, rel_err(u2.opt_state, u1.opt_state))
    assert float(e1) == float(e2) and abs(float(r1) - float(r2)) <= 1e-3 * max(1.0, abs(float(r1)))
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g1)) > 0, "zero meta-gradient"
  if kind != "gridworld":  # the loop is the same for every plug-in: run it once, on the cheaper
    print("sharded == single")
    return
  # End to end: the meta-training loop with its units split over both devices, resumed.
  with tempfile.TemporaryDirectory() as run_dir:
    meta_train(dataclasses.replace(cfg, iterations=1), plugin, run_dir,
               mesh=pipeline.units_mesh())
    meta2 = meta_train(dataclasses.replace(cfg, iterations=2), plugin, run_dir,
                       mesh=pipeline.units_mesh())
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(meta2))
  print("sharded == single")


if __name__ == "__main__":
  main(*sys.argv[1:])
