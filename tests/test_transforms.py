"""The public API: optax transformations, pytrees, meta-parameter files, clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim4rl
from optim4rl import rules, transforms
from optim4rl.rules import reference
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
  tx = optim4rl.optim4rl(meta, learning_rate=1e-3)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
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
    tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=optax.constant_schedule(0.01),
                                    backend=backend)
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
  assert rel_err(got[2][0].hidden, want[2][0].hidden) <= 1e-5
  assert int(optax.tree_utils.tree_get(got[2], "count")) == 2


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
  assert state[0].hidden.shape == (spec.hidden_rows, 2 * grads.size)
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


def test_meta_gradient_through_tx_update_is_nonzero_and_matches(kernel_backend):
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
  g_kernel = flat(jax.grad(loss)(meta, kernel_backend))
  g_ref = flat(jax.grad(loss)(meta, "reference"))
  assert np.any(np.asarray(g_ref) != 0)
  assert rel_err(g_kernel, g_ref) <= 1e-4


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


def test_damaged_meta_param_files_are_value_errors(tmp_path):
  """Truncated, bit-flipped or non-finite files: one clear ValueError, never a zipfile, zlib
  or numpy traceback (arrays are read lazily, so those could come from any read)."""
  meta = optim4rl.init_meta_params(jax.random.key(7), "l2lgd2")
  good = tmp_path / "meta.npz"
  optim4rl.save_meta_params(str(good), meta, "l2lgd2")
  raw = good.read_bytes()
  flipped = bytearray(raw)
  flipped[len(raw) // 2] ^= 0xFF
  nan = jax.tree.map(lambda x: x, meta)
  nan["net1"]["mlp"]["b1"] = nan["net1"]["mlp"]["b1"].at[0].set(jnp.nan)
  optim4rl.save_meta_params(str(tmp_path / "nan.npz"), nan, "l2lgd2")
  (tmp_path / "truncated.npz").write_bytes(raw[:len(raw) // 2])
  (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
  for name, error in (("truncated", "not a readable optim4rl meta-parameter file"),
                      ("flipped", "not a readable optim4rl meta-parameter file"),
                      ("nan", "non-finite.*net1/mlp/b1")):
    with pytest.raises(ValueError, match=error):
      optim4rl.load_meta_params(str(tmp_path / f"{name}.npz"))
  with pytest.raises(FileNotFoundError):  # the CLI reports it as a missing file
    optim4rl.load_meta_params(str(tmp_path / "missing.npz"))


def test_init_is_deterministic_and_key_dependent():
  a = rules.flatten_meta(optim4rl.init_meta_params(jax.random.key(0)), "optim4rl")
  b = rules.flatten_meta(optim4rl.init_meta_params(jax.random.key(0)), "optim4rl")
  c = rules.flatten_meta(optim4rl.init_meta_params(jax.random.key(1)), "optim4rl")
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))


def test_validation_happens_at_construction(monkeypatch):
  meta = optim4rl.init_meta_params(jax.random.key(0))
  with pytest.raises(ValueError, match="unknown rule"):
    optim4rl.scale_by_learned_rule(meta, rule="adamw")
  with pytest.raises(ValueError, match="unknown rule"):
    optim4rl.init_meta_params(jax.random.key(0), rule="adamw")
  with pytest.raises(ValueError, match="dict with keys"):
    optim4rl.learned_optimizer({"net1": meta["net1"]}, rule="optim4rl")
  bad = jax.tree.map(lambda x: x, meta)
  bad["net1"]["gru"]["wx"] = jnp.zeros((3, 24))
  with pytest.raises(ValueError, match="shape"):
    optim4rl.optim4rl(bad, 1e-3)
  wrong_dtype = jnp.float64 if jax.config.x64_enabled else jnp.int32
  bad["net1"]["gru"]["wx"] = jnp.zeros((2, 24), wrong_dtype)
  with pytest.raises(TypeError, match="float32"):
    optim4rl.optim4rl(bad, 1e-3)
  for clip in (-1.0, float("nan")):
    with pytest.raises(ValueError, match="clip must be >= 0"):
      optim4rl.learned_optimizer(meta, rule="optim4rl", clip=clip)
  for clip in ("1", None, True, jnp.ones(2)):
    with pytest.raises(TypeError, match="clip must be"):
      optim4rl.scale_by_learned_rule(meta, rule="optim4rl", clip=clip)
  with pytest.raises(TypeError, match="static number"):  # a traced clip cannot be a constant
    jax.jit(lambda c: optim4rl.learned_optimizer(meta, rule="optim4rl", clip=c))(1.0)
  with pytest.raises(ValueError, match="unknown backend"):
    optim4rl.optim4rl(meta, 1e-3, backend="tpu-magic")
  missing = next(b for b in optim4rl.backends.registry.KNOWN_BACKENDS
                 if b not in optim4rl.available_backends())  # cpu and cuda never both run
  with pytest.raises(ValueError, match="cannot run here"):
    optim4rl.optim4rl(meta, 1e-3, backend=missing)

  # Once at construction, not per update: count the calls across init and three updates.
  calls = []
  for name in ("resolve_backend", "check_meta_params"):
    real = getattr(transforms, name)
    counted = lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
    monkeypatch.setattr(transforms, name, counted)
  for rule in ("optim4rl", "optim4rl_odd"):
    calls.clear()
    tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=0.1)
    g = {"w": jnp.full((4,), 0.1)}
    s = tx.init(g)
    for _ in range(2):
      _, s = tx.update(g, s)
    jax.jit(tx.update)(g, s)
    assert sorted(calls) == ["check_meta_params", "resolve_backend"]


@pytest.mark.parametrize("rule", ["optim4rl", "optim4rl_odd"])
def test_clear_errors_at_trace_time(rule):
  meta = optim4rl.init_meta_params(jax.random.key(0), rule)
  tx = optim4rl.learned_optimizer(meta, rule=rule)
  params = {"w": jnp.zeros((4,))}
  state = tx.init(params)
  with pytest.raises(TypeError, match="float32"):
    jax.jit(tx.update)({"w": jnp.zeros((4,), jnp.float16)}, state)
  with pytest.raises(TypeError, match="float32"):
    jax.jit(tx.update)({"w": jnp.zeros((4,), jnp.int32)}, state)
  with pytest.raises(ValueError, match=f"hidden states.*rule '{rule}'"):
    jax.jit(tx.update)({"w": jnp.zeros((5,))}, state)
  with pytest.raises(ValueError, match="hidden states"):  # a leaf more than at init
    jax.jit(tx.update)({"w": jnp.zeros((4,)), "b": jnp.zeros((1,))}, state)
  spec = rules.get_rule(rule)
  flat = rules.flatten_meta(meta, spec)
  with pytest.raises(ValueError, match="hidden state must have shape"):
    optim4rl.fused_step(spec, flat, jnp.zeros((4,)), jnp.zeros((8, 4)))
  with pytest.raises(ValueError, match="flat meta-parameters"):
    optim4rl.fused_step(spec, flat[:-1], jnp.zeros((4,)), jnp.zeros((16, 4)))


@pytest.mark.parametrize("rule", ["optim4rl", "optim4rl_odd"])
def test_update_refuses_gradients_of_another_tree_of_the_same_size(rule):
  """The hidden state is one flat array: only the layout recorded at init tells which
  columns belong to which parameter, so a tree of the same total size is not enough."""
  meta = optim4rl.init_meta_params(jax.random.key(0), rule)
  tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=0.1)
  params = {"a": jnp.zeros((2, 3)), "b": jnp.zeros((4,))}
  state = tx.init(params)
  assert len(jax.tree.leaves(state)) == 1  # the layout is static: still one array
  swapped = {"a": jnp.zeros((4,)), "b": jnp.zeros((2, 3))}
  a = r"(\[0\])?\['a'\]"  # odd rules see the pair (g, -g)
  for update in (tx.update, jax.jit(tx.update)):
    with pytest.raises(ValueError, match=rf"leaf {a} has shape \(4,\), expected \(2, 3\)"):
      update(swapped, state)
    with pytest.raises(ValueError, match=r"leaf .*\['a'\] has shape \(3, 2\)"):
      update({"a": jnp.zeros((3, 2)), "b": jnp.zeros((4,))}, state)
    with pytest.raises(ValueError, match=r"leaf .*\['x'\] is not among the parameters"):
      update({"x": jnp.zeros((6,)), "y": jnp.zeros((4,))}, state)
    with pytest.raises(ValueError, match=r"lack parameter leaf .*\['b'\]"):
      update({"a": jnp.zeros((10,))}, state)
    with pytest.raises(ValueError, match="is not among the parameters"):
      update([jnp.zeros((2, 3)), jnp.zeros((4,))], state)  # same leaves, another container
  batched = jax.tree.map(lambda x: jnp.stack([x, x + 1]), params)
  states = jax.vmap(tx.init)(batched)
  u, states = jax.vmap(tx.update)(batched, states)  # per-example layouts on both sides
  assert u["a"].shape == (2, 2, 3)
  with pytest.raises(ValueError, match=r"has shape \(4,\), expected \(2, 3\)"):
    jax.vmap(tx.update)(jax.tree.map(lambda x: jnp.stack([x, x]), swapped), states)
  # init_state makes the same layout; hidden states of another rule's rows still fail.
  u, _ = jax.jit(tx.update)(params, optim4rl.init_state(rule, params, learning_rate=0.1))
  assert jax.tree.structure(u) == jax.tree.structure(params)
  other_rows = state[0]._replace(hidden=jnp.zeros((8, state[0].hidden.shape[1])))
  with pytest.raises(ValueError, match="hidden states of shape"):
    tx.update(params, (other_rows, state[1]))


def test_bad_learning_rates_and_clips_are_refused_at_construction():
  meta = optim4rl.init_meta_params(jax.random.key(0))
  g = {"w": jnp.full((4,), 0.1)}
  for lr in (float("nan"), -1.0, 0.0, 0, float("inf"), -float("inf"), np.float32("nan")):
    for make in (lambda lr: optim4rl.learned_optimizer(meta, rule="optim4rl", learning_rate=lr),
                 lambda lr: optim4rl.optim4rl(meta, lr),
                 lambda lr: optim4rl.init_state("optim4rl", g, learning_rate=lr)):
      with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        make(lr)
  for lr in ("1e-3", [1e-3], jnp.ones(2), True):
    with pytest.raises(TypeError, match="learning_rate must be a number or an optax schedule"):
      optim4rl.learned_optimizer(meta, rule="optim4rl", learning_rate=lr)
  for lr in (optax.linear_schedule(0.1, 0.0, 10), lambda count: 0.1, 0.1, 1, np.float32(0.1),
             jnp.float32(0.1)):
    tx = optim4rl.learned_optimizer(meta, rule="optim4rl", learning_rate=lr)
    u, _ = tx.update(g, tx.init(g))
    assert bool(jnp.all(jnp.isfinite(u["w"])))
  # A traced rate has no value to check (vmapped over rates, say): it passes.
  traced = jax.jit(lambda lr: optim4rl.learned_optimizer(meta, rule="optim4rl", learning_rate=lr)
                   .update(g, optim4rl.init_state("optim4rl", g))[0]["w"])(0.1)
  assert traced.shape == (4,)
  for clip in (float("nan"), -1.0, float("inf"), -float("inf")):
    with pytest.raises(ValueError, match="clip must be >= 0 and finite"):
      optim4rl.learned_optimizer(meta, rule="optim4rl", clip=clip)
  optim4rl.learned_optimizer(meta, rule="optim4rl", clip=0)  # 0: no clipping


def test_default_backend_is_a_kernel_and_what_transforms_use(kernel_backend):
  default = optim4rl.resolve_backend(None)
  assert default in optim4rl.available_backends() and default != "reference"
  meta = optim4rl.init_meta_params(jax.random.key(8))
  g = rl_like_gradients(jax.random.key(9), 64)

  def two_updates(backend):
    tx = optim4rl.learned_optimizer(meta, rule="optim4rl", learning_rate=0.1, backend=backend)
    u1, s = tx.update(g, tx.init(g))
    return tx.update(-0.5 * g, s)
  for a, b in zip(jax.tree.leaves(two_updates(None)), jax.tree.leaves(two_updates(default))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rule", RULE_NAMES + ODD_RULE_NAMES)
def test_direction_is_the_rules_step_and_the_optimizer_scales_it(rule):
  """scale_by_learned_rule returns reference.step's direction (sign included); the optimizer
  multiplies it by the learning rate, for odd rules after symmetrising."""
  spec = rules.get_rule(rule)
  meta = optim4rl.init_meta_params(jax.random.key(10), rule)
  g = rl_like_gradients(jax.random.key(11), 30)
  direction = optim4rl.scale_by_learned_rule(meta, rule=rule, backend="reference")
  state = direction.init(g)
  assert isinstance(direction, optax.GradientTransformationExtraArgs)
  assert isinstance(state, optim4rl.LearnedRuleState)
  assert state.hidden.shape == (spec.hidden_rows, spec.columns_per_param * g.size)
  d, new = jax.jit(direction.update)(g, state)
  x = jnp.concatenate([g, -g]) if spec.odd else g
  want, hidden = jax.jit(lambda x, h: reference.step(spec.math, meta, x, h))(x, state.hidden)
  if spec.odd:
    want = 0.5 * (want[:g.size] - want[g.size:])
  # Separately compiled programs may round a last bit differently (vector vs scalar tails).
  assert rel_err(d, want) <= 1e-6 and rel_err(new.hidden, hidden) <= 1e-6
  assert float(jnp.vdot(d, g)) < 0  # a descent direction at this initialisation
  tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=0.3, backend="reference")
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  assert rel_err(u, 0.3 * d) <= 1e-6


def test_composes_with_optax_chain():
  """The direction is an ordinary transform: learned_optimizer is it chained with optax's
  scale_by_learning_rate, and other transforms go before or after it."""
  meta = optim4rl.init_meta_params(jax.random.key(12))
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones((3,))}
  grads = jax.tree.map(lambda p: 0.3 * jnp.sin(5 * p), params)
  by_hand = optax.chain(optax.clip_by_global_norm(0.1),
                        optim4rl.scale_by_learned_rule(meta, rule="optim4rl"),
                        optax.add_decayed_weights(1e-2),
                        optax.scale_by_learning_rate(0.05, flip_sign=False))
  direction = optim4rl.scale_by_learned_rule(meta, rule="optim4rl")
  s, s_dir = by_hand.init(params), direction.init(params)
  for _ in range(3):
    u, s = jax.jit(by_hand.update)(grads, s, params)
    clipped, _ = optax.clip_by_global_norm(0.1).update(grads, optax.EmptyState())
    d, s_dir = jax.jit(direction.update)(clipped, s_dir)
    for a, b, p in zip(jax.tree.leaves(u), jax.tree.leaves(d), jax.tree.leaves(params)):
      np.testing.assert_allclose(a, 0.05 * (b + 1e-2 * p), rtol=1e-6)
    params = optax.apply_updates(params, u)
  # learned_optimizer is exactly chain(direction, scale_by_learning_rate(lr, flip_sign=False)).
  tx = optim4rl.learned_optimizer(meta, rule="optim4rl", learning_rate=0.05)
  chained = optax.chain(optim4rl.scale_by_learned_rule(meta, rule="optim4rl"),
                        optax.scale_by_learning_rate(0.05, flip_sign=False))
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(chained.init(params))
  for a, b in zip(jax.tree.leaves(tx.update(grads, tx.init(params))),
                  jax.tree.leaves(chained.update(grads, chained.init(params)))):
    np.testing.assert_array_equal(a, b)


def test_schedule_follows_the_optimizers_own_update_count():
  meta = optim4rl.init_meta_params(jax.random.key(13))
  schedule = optax.linear_schedule(0.2, 0.0, 3)
  tx = optim4rl.learned_optimizer(meta, rule="optim4rl", learning_rate=schedule)
  direction = optim4rl.scale_by_learned_rule(meta, rule="optim4rl")
  g = rl_like_gradients(jax.random.key(14), 20)
  s, s_dir = tx.init(g), direction.init(g)
  assert isinstance(s[1], optax.ScaleByScheduleState)
  for step in range(5):
    assert int(optax.tree_utils.tree_get(s, "count")) == step
    u, s = jax.jit(tx.update)(g, s)
    d, s_dir = jax.jit(direction.update)(g, s_dir)
    np.testing.assert_allclose(u, schedule(step) * d, rtol=1e-6, atol=1e-7)
  assert float(jnp.max(jnp.abs(u))) <= 1e-7  # the schedule has reached 0
  # A fresh state restarts the schedule; the hidden state is the optimizer's either way.
  fresh = optim4rl.init_state("optim4rl", g, learning_rate=schedule)
  assert int(fresh[1].count) == 0 and not np.any(np.asarray(fresh[0].hidden))
  u, _ = tx.update(g, fresh)
  np.testing.assert_allclose(u, 0.2 * direction.update(g, direction.init(g))[0], rtol=1e-6)


@pytest.mark.parametrize("rule", RULE_NAMES + ODD_RULE_NAMES)
def test_init_state_is_the_optimizers_init_without_meta(rule):
  """Meta-training makes states before it has meta-parameters, then updates them."""
  meta = optim4rl.init_meta_params(jax.random.key(15), rule)
  params = mixed_tree(jax.random.key(16))
  for lr in (1e-3, optax.linear_schedule(1e-3, 0.0, 10), None):
    want = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=lr).init(params)
    got = optim4rl.init_state(rule, params, learning_rate=lr)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert a.shape == b.shape and a.dtype == b.dtype
      np.testing.assert_array_equal(a, b)
  tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=1e-3)
  u, _ = jax.jit(tx.update)(params, optim4rl.init_state(rule, params, learning_rate=1e-3))
  assert jax.tree.structure(u) == jax.tree.structure(params)


@pytest.mark.parametrize("rule", ["optim4rl", "optim4rl_odd"])
def test_bfloat16_hidden_state_through_the_optax_api(kernel_backend, rule):
  """hidden_dtype="bfloat16": the state is kept in bfloat16 (both signs' columns for odd
  rules), updates stay float32 and follow the float32 optimizer's within bfloat16's rounding,
  a state of the other dtype is refused, other dtypes are refused at construction."""
  meta = optim4rl.init_meta_params(jax.random.key(17), rule)
  params = mixed_tree(jax.random.key(18))
  make = lambda dtype: optim4rl.learned_optimizer(meta, rule=rule, learning_rate=0.1,
                                                  backend=kernel_backend, hidden_dtype=dtype)
  tx16, tx32 = make("bfloat16"), make(jnp.float32)
  s16 = tx16.init(params)
  hidden = optax.tree_utils.tree_get(s16, "hidden")
  assert hidden.dtype == jnp.bfloat16
  assert jax.tree.leaves(optim4rl.init_state(rule, params, hidden_dtype=jnp.bfloat16))[0].dtype \
      == jnp.bfloat16
  (u16, s16), (u32, _) = (jax.jit(tx.update)(params, tx.init(params)) for tx in (tx16, tx32))
  for a, b in zip(jax.tree.leaves(u16), jax.tree.leaves(u32)):
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)  # a zero state is exact in bfloat16: same first step
  u16, _ = jax.jit(tx16.update)(params, s16)
  u32, _ = jax.jit(tx32.update)(*[params, tx32.update(params, tx32.init(params))[1]])
  assert rel_err(u16, u32, norm="l2") < 1e-3  # the second step reads a rounded state
  with pytest.raises(ValueError, match="bfloat16 hidden states, but this optimizer keeps them "
                     "in float32"):
    tx32.update(params, s16)
  with pytest.raises(ValueError, match="hidden_dtype must be float32 or bfloat16"):
    make(jnp.float16)
  with pytest.raises(ValueError, match="hidden_dtype must be float32 or bfloat16"):
    make("f8")


def test_extra_args_are_accepted_and_ignored_by_todays_rules():
  """OPEN will read activations, a key and the training progress: update takes extra args."""
  meta = optim4rl.init_meta_params(jax.random.key(17), "optim4rl_odd")
  g = {"w": rl_like_gradients(jax.random.key(18), 12)}
  extra = {"activations": jnp.ones((4, 3)), "key": jax.random.key(0), "progress": 0.25}
  for tx in (optim4rl.learned_optimizer(meta, rule="optim4rl_odd", learning_rate=0.1),
             optim4rl.scale_by_learned_rule(meta, rule="optim4rl_odd"),
             optax.chain(optax.scale(2.0),
                         optim4rl.scale_by_learned_rule(meta, rule="optim4rl_odd"))):
    s = tx.init(g)
    want = tx.update(g, s, g)
    got = jax.jit(lambda g, s, extra: tx.update(g, s, g, **extra))(g, s, extra)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
  state = optim4rl.init_state("optim4rl_odd", g, learning_rate=0.1)
  got, _ = optim4rl.learned_update(meta, g, state, rule="optim4rl_odd", learning_rate=0.1, **extra)
  want, _ = optim4rl.learned_update(meta, g, state, rule="optim4rl_odd", learning_rate=0.1)
  np.testing.assert_array_equal(got["w"], want["w"])


def test_odd_part_is_the_odd_part_of_any_transform():
  """(u(g) - u(-g)) / 2 with one state over both signs: Adam is odd already, |g| is even."""
  g = {"a": jnp.array([0.5, -2.0, 0.0]), "b": jnp.array([[1e-3]])}
  adam, odd_adam = optax.adam(0.1), optim4rl.odd_part(optax.adam(0.1))
  s, s_odd = adam.init(g), odd_adam.init(g)
  for step in range(3):
    x = jax.tree.map(lambda v: (step + 1.0) * v, g)
    u, s = adam.update(x, s)
    u_odd, s_odd = odd_adam.update(x, s_odd)
    for a, b in zip(jax.tree.leaves(u_odd), jax.tree.leaves(u)):
      np.testing.assert_allclose(a, b, rtol=1e-6)
  assert jax.tree.structure(s_odd[0].mu) == jax.tree.structure((g, g))  # both signs' moments
  even = optim4rl.odd_part(optax.stateless(lambda u, p: jax.tree.map(jnp.abs, u)))
  u, _ = even.update(g, even.init(g))
  assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(u))


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
