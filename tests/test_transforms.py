"""The public API: optax transformations, pytrees, meta-parameter files, clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim4rl
from optim4rl import rules
from conftest import (ODD_RULE_NAMES, RULE_NAMES, rel_err, rl_like_gradients,
                      scanned_meta_gradients)


def mixed_tree(key):
  k = jax.random.split(key, 4)
  return {"dense": {"w": rl_like_gradients(k[0], 12).reshape(3, 4),
                    "b": rl_like_gradients(k[1], 4)},
          "scalar": jnp.float32(0.25), "empty": jnp.zeros((0, 3), jnp.float32),
          "stack": [rl_like_gradients(k[2], 5), rl_like_gradients(k[3], 8).reshape(2, 2, 2)]}


def test_public_contract():
  meta = optim4rl.init_meta_params(jax.random.key(0), rule="optim4rl")
  tx = optim4rl.optim4rl(meta, learning_rate=1e-3, backend="cpu")
  assert isinstance(tx, optax.GradientTransformation)
  params = {"w": jnp.ones((3, 2))}
  updates, state = tx.update({"w": jnp.full((3, 2), 0.1)}, tx.init(params), params)
  assert updates["w"].shape == (3, 2) and bool(jnp.all(jnp.isfinite(updates["w"])))
  for rule in ("linear_optim", "l2lgd2"):
    optim4rl.init_meta_params(jax.random.key(0), rule=rule)


@pytest.mark.parametrize("rule", RULE_NAMES + ODD_RULE_NAMES)
def test_pytree_with_mixed_shapes_scalars_and_empty_leaves(kernel_backend, rule):
  meta = optim4rl.init_meta_params(jax.random.key(1), rule)
  grads = mixed_tree(jax.random.key(2))

  def two_steps(backend):
    tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=0.01, backend=backend)
    state = tx.init(grads)
    u1, state = tx.update(grads, state)
    u2, state = tx.update(jax.tree.map(lambda x: -2 * x, grads), state)
    return u1, u2, state
  want = jax.jit(two_steps, static_argnums=0)("reference")
  got = jax.jit(two_steps, static_argnums=0)(kernel_backend)
  assert jax.tree.structure(got[0]) == jax.tree.structure(grads)
  for a, b, g in zip(jax.tree.leaves(got[:2]), jax.tree.leaves(want[:2]),
                     jax.tree.leaves(grads) * 2):
    assert a.shape == g.shape
    assert rel_err(a, b) <= 1e-5
  assert rel_err(got[2].hidden, want[2].hidden) <= 1e-5
  assert int(got[2].count) == 2


@pytest.mark.parametrize("rule", ODD_RULE_NAMES)
def test_odd_rule_is_its_plain_rule_on_both_signs(kernel_backend, rule):
  spec = rules.get_rule(rule)
  meta = optim4rl.init_meta_params(jax.random.key(5), rule)
  grads = rl_like_gradients(jax.random.key(6), 40)
  plain = optim4rl.learned_optimizer(meta, rule=spec.math, learning_rate=0.1, backend="reference")

  @jax.jit
  def want(g):  # (u(g) - u(-g)) / 2 over two steps, each sign with its own hidden state
    sp, sn = plain.init(g), plain.init(g)
    outs = []
    for x in (g, -3.0 * g):
      up, sp = plain.update(x, sp)
      un, sn = plain.update(-x, sn)
      outs.append(0.5 * (up - un))
    return outs

  @jax.jit
  def got(g, sign):
    tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=0.1, backend=kernel_backend)
    s = tx.init(g)
    outs = []
    for x in (g, -3.0 * g):
      u, s = tx.update(sign * x, s)
      outs.append(u)
    return outs, s

  (u1, u2), state = got(grads, 1.0)
  (n1, n2), _ = got(grads, -1.0)
  assert state.hidden.shape == (spec.hidden_rows, 2 * grads.size)
  for a, b in zip((u1, u2), want(grads)):
    assert rel_err(a, b) <= 1e-5
  assert rel_err(-n1, u1) <= 1e-6 and rel_err(-n2, u2) <= 1e-6  # odd in g
  batch = jnp.stack([grads, 0.5 * grads[::-1]])
  for row, u in zip(batch, jax.vmap(lambda g: got(g, 1.0)[0][1])(batch)):
    assert rel_err(u, got(row, 1.0)[0][1]) <= 1e-6


@pytest.mark.parametrize("rule", ODD_RULE_NAMES)
def test_odd_rule_meta_gradient_matches_reference(kernel_backend, rule):
  got, want, flatten = scanned_meta_gradients(rule, kernel_backend)
  assert np.any(np.asarray(flatten(want)) != 0)
  assert rel_err(flatten(got), flatten(want)) <= 1e-4


def test_meta_gradient_through_tx_update_is_nonzero_and_matches():
  meta = optim4rl.init_meta_params(jax.random.key(4))
  params = {"a": jnp.linspace(-1, 1, 10), "b": jnp.ones((2, 3))}

  def loss(meta, backend):
    tx = optim4rl.optim4rl(meta, learning_rate=0.05, backend=backend)
    p, s = params, tx.init(params)
    for _ in range(3):
      g = jax.grad(lambda p: sum(jnp.sum(jnp.sin(3 * x)) for x in jax.tree.leaves(p)))(p)
      u, s = tx.update(g, s)
      p = optax.apply_updates(p, u)
    return sum(jnp.sum(jnp.sin(3 * x)) for x in jax.tree.leaves(p))
  flat = lambda m: rules.flatten_meta(m, "optim4rl")
  g_cpu = flat(jax.grad(loss)(meta, "cpu"))
  g_ref = flat(jax.grad(loss)(meta, "reference"))
  assert np.any(np.asarray(g_ref) != 0)
  assert rel_err(g_cpu, g_ref) <= 1e-4


def test_learning_rate_schedule_and_chain():
  meta = optim4rl.init_meta_params(jax.random.key(5))
  schedule = optax.linear_schedule(1.0, 0.0, 4)
  tx = optax.chain(optax.clip_by_global_norm(10.0), optim4rl.optim4rl(meta, schedule))
  unit = optim4rl.optim4rl(meta, 1.0)
  g = {"x": jnp.array([0.1, -0.2, 0.3])}
  s, s_unit = tx.init(g), unit.init(g)
  for step in range(3):
    u, s = tx.update(g, s)
    u_unit, s_unit = unit.update(g, s_unit)
    np.testing.assert_allclose(u["x"], float(schedule(step)) * u_unit["x"], rtol=1e-6)


def test_public_variant_is_a_different_rule():
  meta = optim4rl.init_meta_params(jax.random.key(6), "optim4rl_public")
  tx = optim4rl.optim4rl(meta, 1e-3, variant="public")
  g = {"x": jnp.array([0.1, -0.2, 0.0])}
  u, _ = tx.update(g, tx.init(g))
  assert float(u["x"][2]) == 0.0 and float(u["x"][0]) < 0 < float(u["x"][1])
  with pytest.raises(ValueError, match="meta-parameter"):
    optim4rl.optim4rl(meta, 1e-3)  # paper-variant shapes differ
  with pytest.raises(ValueError, match="variant"):
    optim4rl.optim4rl(meta, 1e-3, variant="nope")


def test_save_and_load_meta_params(tmp_path):
  meta = optim4rl.init_meta_params(jax.random.key(7), "l2lgd2")
  path = str(tmp_path / "meta.npz")
  optim4rl.save_meta_params(path, meta, "l2lgd2")
  loaded, rule = optim4rl.load_meta_params(path)
  assert rule == "l2lgd2"
  for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="not an optim4rl"):
    optim4rl.load_meta_params(str(bad))


def test_init_is_deterministic_and_key_dependent():
  a = rules.flatten_meta(optim4rl.init_meta_params(jax.random.key(0)), "optim4rl")
  b = rules.flatten_meta(optim4rl.init_meta_params(jax.random.key(0)), "optim4rl")
  c = rules.flatten_meta(optim4rl.init_meta_params(jax.random.key(1)), "optim4rl")
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))


def test_clear_errors_at_trace_time():
  meta = optim4rl.init_meta_params(jax.random.key(0))
  tx = optim4rl.optim4rl(meta, 1e-3)
  params = {"w": jnp.zeros((4,))}
  state = tx.init(params)
  with pytest.raises(TypeError, match="float32"):
    jax.jit(tx.update)({"w": jnp.zeros((4,), jnp.float16)}, state)
  with pytest.raises(TypeError, match="float32"):
    jax.jit(tx.update)({"w": jnp.zeros((4,), jnp.int32)}, state)
  with pytest.raises(ValueError, match="hidden states"):
    jax.jit(tx.update)({"w": jnp.zeros((5,))}, state)
  with pytest.raises(ValueError, match="unknown backend"):
    optim4rl.optim4rl(meta, 1e-3, backend="tpu-magic")
  with pytest.raises(ValueError, match="cannot run here"):
    optim4rl.optim4rl(meta, 1e-3, backend="cuda")
  with pytest.raises(ValueError, match="unknown rule"):
    optim4rl.init_meta_params(jax.random.key(0), rule="adamw")
  bad = jax.tree.map(lambda x: x, meta)
  bad["net1"]["gru"]["wx"] = jnp.zeros((3, 24))
  with pytest.raises(ValueError, match="shape"):
    optim4rl.optim4rl(bad, 1e-3)
  bad["net1"]["gru"]["wx"] = jnp.zeros((2, 24), jnp.float64 if jax.config.x64_enabled else jnp.int32)
  with pytest.raises(TypeError, match="float32"):
    optim4rl.optim4rl(bad, 1e-3)
  spec = rules.get_rule("optim4rl")
  flat = rules.flatten_meta(meta, spec)
  with pytest.raises(ValueError, match="hidden state must have shape"):
    optim4rl.fused_step(spec, flat, jnp.zeros((4,)), jnp.zeros((8, 4)))
  with pytest.raises(ValueError, match="flat meta-parameters"):
    optim4rl.fused_step(spec, flat[:-1], jnp.zeros((4,)), jnp.zeros((16, 4)))


def test_default_backend_is_the_kernel_on_cpu():
  assert optim4rl.resolve_backend(None) == "cpu"


@pytest.mark.skipif(optim4rl.backends.registry.cuda_library() is None,
                    reason="CUDA library not built (no nvcc at install time)")
def test_cuda_custom_calls_lower_for_cuda():
  spec = rules.get_rule("optim4rl")
  flat = rules.flatten_meta(optim4rl.init_meta_params(jax.random.key(0)), spec)
  g, h = jnp.zeros((100,)), jnp.zeros((16, 100))
  loss = lambda m, h: jnp.sum(optim4rl.fused_step(spec, m, g, h, backend="cuda")[0])
  text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).trace(flat, h).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "optim4rl_cuda_forward" in text and "optim4rl_cuda_backward" in text
