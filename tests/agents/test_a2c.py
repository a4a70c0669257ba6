import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim4rl
from optim4rl import envs
from optim4rl.agents import a2c
from optim4rl.evaluation.specs import make_optimizer
from optim4rl.training.a2c import optimizer_updates, train
from conftest import required_kernel_backends


def lambda_returns_loop(rewards, discounts, values, lam):
  g = values[-1]
  out = np.zeros_like(rewards)
  for t in reversed(range(len(rewards))):
    g = rewards[t] + discounts[t] * ((1 - lam) * values[t + 1] + lam * g)
    out[t] = g
  return out


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_lambda_returns(lam):
  rng = np.random.default_rng(0)
  r = rng.normal(size=(20, 3)).astype(np.float32)
  d = (0.99 * (rng.random((20, 3)) > 0.1)).astype(np.float32)
  v = rng.normal(size=(21, 3)).astype(np.float32)
  got = a2c.lambda_returns(jnp.asarray(r), jnp.asarray(d), jnp.asarray(v), lam)
  np.testing.assert_allclose(got, lambda_returns_loop(r, d, v, lam), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["small_dense_short", "big_dense_long"])
def test_networks_and_losses(name):
  world = envs.make(name)
  params = a2c.init_params(world, jax.random.PRNGKey(0))
  kinds = jax.tree_util.tree_map_with_path(lambda p, _: jax.tree_util.keystr(p), params)
  assert any("Conv" in k for k in jax.tree.leaves(kinds)) == world.is_big
  env_states = a2c.reset_envs(world, jax.random.PRNGKey(1), 8)
  _, rollout = a2c.collect(world, params, env_states, jax.random.PRNGKey(2), 20)
  assert rollout.obs.shape == (21, 8, *world.obs_shape)
  assert rollout.actions.shape == (20, 8)
  terms = a2c.losses(world, params, rollout, a2c.A2CConfig())
  cfg = a2c.A2CConfig()
  np.testing.assert_allclose(terms["total"], terms["actor"] + cfg.critic_weight * terms["critic"]
                             - cfg.entropy_weight * terms["entropy"], rtol=1e-6)
  assert 0 < float(terms["entropy"]) <= np.log(envs.NUM_ACTIONS) + 1e-5
  grads = jax.grad(lambda p: a2c.losses(world, p, rollout, cfg)["total"])(params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_adam_learns_small_dense_short():
  """A2C with Adam: a random policy earns ~0 per episode; a few hundred thousand steps of
  training must earn clearly more (the full run reaches ~11, see README)."""
  world = envs.make("small_dense_short")
  curve = train(world, make_optimizer("adam", 1e-2), steps=400_000, num_envs=256,
                seeds=(0, 1), chunks=4)
  assert curve.returns.shape == (2, 4)
  assert np.all(curve.returns[:, -1] > 1.5), curve.returns
  assert np.all(curve.returns[:, -1] > curve.returns[:, 0] + 1.0)


def test_learned_optimizer_trains_agents_same_on_every_backend(tmp_path):
  backends = ("reference",) + required_kernel_backends()
  missing = [b for b in backends if b not in optim4rl.available_backends()]
  assert not missing, f"kernel backends this host must have are missing: {missing}"
  world = envs.make("small_dense_short")
  meta = optim4rl.init_meta_params(jax.random.key(0), "optim4rl_public")
  optim4rl.save_meta_params(tmp_path / "m.npz", meta, "optim4rl_public")
  curves = {b: train(world, make_optimizer(f"learned:{tmp_path / 'm.npz'}", 3e-3, backend=b),
                     steps=20 * 64 * 6, num_envs=64, seeds=(0,), chunks=2)
            for b in backends}
  losses = [c.losses for c in curves.values()]
  for other in losses[1:]:
    np.testing.assert_allclose(other, losses[0], rtol=1e-3)


def test_optimizer_specs(tmp_path):
  assert isinstance(make_optimizer("rmsprop", 1e-3), optax.GradientTransformation)
  with pytest.raises(ValueError, match="unknown optimizer"):
    make_optimizer("adamw", 1e-3)
  with pytest.raises(ValueError, match="needs its meta-parameter file"):
    make_optimizer("optim4rl", 1e-3)
  optim4rl.save_meta_params(tmp_path / "m.npz",
                            optim4rl.init_meta_params(jax.random.key(0), "l2lgd2"), "l2lgd2")
  with pytest.raises(ValueError, match="holds meta-parameters of rule 'l2lgd2'"):
    make_optimizer(f"optim4rl:{tmp_path / 'm.npz'}", 1e-3)
  (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError):
    make_optimizer(f"learned:{tmp_path / 'bad.npz'}", 1e-3)


@pytest.mark.parametrize("spec", ["adam", "learned"])
def test_linear_schedule_scales_each_step(tmp_path, spec):
  if spec == "learned":
    optim4rl.save_meta_params(tmp_path / "m.npz",
                              optim4rl.init_meta_params(jax.random.key(0), "optim4rl"), "optim4rl")
    spec = f"learned:{tmp_path / 'm.npz'}"
  plain, decayed = (make_optimizer(spec, 1e-2, schedule=s, updates=8)
                    for s in ("constant", "linear"))
  params = {"w": jnp.ones((3, 5))}
  grads = jax.random.normal(jax.random.key(1), (10, 3, 5))
  states = plain.init(params), decayed.init(params)
  for k in range(10):
    (u, s0), (v, s1) = (tx.update({"w": grads[k]}, st, params)
                        for tx, st in zip((plain, decayed), states))
    states = s0, s1
    np.testing.assert_allclose(v["w"], max(0.0, 1 - k / 8) * u["w"], rtol=1e-6, atol=1e-9)


def test_schedule_errors():
  with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
    make_optimizer("adam", 1e-3, schedule="cosine", updates=10)
  with pytest.raises(ValueError, match="number of optimizer updates"):
    make_optimizer("adam", 1e-3, schedule="linear")


def test_optimizer_updates_counts_the_updates_train_makes():
  world = envs.make("small_dense_short")
  steps = 64 * 20 * 7 + 5  # 7 updates, in chunks of 3: 9 run
  curve = train(world, optax.sgd(0.0), steps=steps, num_envs=64, chunks=3,
                grad_stat=lambda g: jnp.ones(()))
  assert curve.stats.sum() == optimizer_updates(steps, 64, chunks=3) == 9


def test_patch_dense_is_a_valid_2x2_convolution():
  import flax.linen as nn
  x = jax.random.normal(jax.random.key(0), (3, 5, 4, 2))
  conv = nn.Conv(6, (2, 2), padding="VALID")
  p = conv.init(jax.random.key(1), x)
  kernel = p["params"]["kernel"]  # (2, 2, C, F) -> rows ordered like the patches
  w = jnp.concatenate([kernel[0, 0], kernel[0, 1], kernel[1, 0], kernel[1, 1]], axis=0)
  got = a2c.patches_2x2(x) @ w + p["params"]["bias"]
  np.testing.assert_allclose(got, conv.apply(p, x), rtol=1e-5, atol=1e-5)
