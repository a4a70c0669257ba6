"""Fused kernels against the pure-JAX reference: forward, VJP, jit/vmap/scan, edge cases."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import optim4rl
from optim4rl import rules
from optim4rl.rules import reference
from optim4rl.backends import fused_step
from optim4rl.backends import registry
from conftest import (RULE_NAMES, assert_matches, assert_same_bits, assert_zeros_match,
                      denormal_and_zero_gradients, random_problem, rel_err,
                      scanned_meta_gradients, special_gradients)

SIZES = (1, 16, 37, 1000)


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("n", SIZES)
def test_forward_matches_reference(kernel_backend, rule, n):
  spec, meta, g, h = random_problem(rule, n)
  want = jax.jit(lambda m, g, h: fused_step(spec, m, g, h, backend="reference"))(meta, g, h)
  got = jax.jit(lambda m, g, h: fused_step(spec, m, g, h, backend=kernel_backend))(meta, g, h)
  assert_matches(got[0], want[0], 1e-5, "direction")
  assert_matches(got[1], want[1], 1e-5, "hidden state")


def _loss(spec, backend, n):
  weights = jnp.cos(jnp.arange(n, dtype=jnp.float32))

  def loss(meta, h, g):
    d, h_new = fused_step(spec, meta, g, h, backend=backend)
    return jnp.sum(weights * d) + 0.3 * jnp.sum(jnp.sin(h_new))
  return loss


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("n", SIZES)
def test_vjp_matches_reference_grad(kernel_backend, rule, n):
  spec, meta, g, h = random_problem(rule, n, seed=1)
  want = jax.jit(jax.grad(_loss(spec, "reference", n), argnums=(0, 1, 2)))(meta, h, g)
  got = jax.jit(jax.grad(_loss(spec, kernel_backend, n), argnums=(0, 1, 2)))(meta, h, g)
  assert_matches(got[0], want[0], 1e-4, "meta-gradient")
  assert_matches(got[1], want[1], 1e-4, "hidden-state gradient")
  # Gradients are stop-gradient inputs in both.
  assert not np.any(np.asarray(got[2])) and not np.any(np.asarray(want[2]))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_grad_through_four_scanned_updates(kernel_backend, rule):
  """The meta-gradient path: grad w.r.t. meta of a loss after M = 4 inner updates."""
  got, want, flat = scanned_meta_gradients(rule, kernel_backend)
  assert np.any(np.asarray(flat(want)) != 0)
  assert_matches(flat(got), flat(want), 1e-4, "meta-gradient")


@pytest.mark.parametrize("rule", ["optim4rl_public", "linear_optim", "l2lgd2"])
def test_reference_is_truly_differentiable(rule):
  """check_grads (numerical vs autodiff, float64) where the math has no straight-through."""
  spec, meta, g, h = random_problem(rule, 5, seed=2)
  with jax.enable_x64(True):
    meta64, h64 = np.asarray(meta, np.float64), np.asarray(h, np.float64)
    g64 = np.asarray(g, np.float64)
    f = lambda m, h: reference.step(spec, rules.unflatten_meta(m, spec), g64, h, 1.0)
    check_grads(f, (meta64, h64), order=1, modes=("rev",), eps=1e-6, atol=1e-5, rtol=1e-5)


def test_straight_through_sign_follows_its_definition(kernel_backend):
  """Optim4RL's m_sign: forward is a hard sign, backward the derivative of tanh(o1 + 1)."""
  spec, meta_flat, g, h = random_problem("optim4rl", 200, seed=4)
  meta = rules.unflatten_meta(meta_flat, spec)
  # Pieces of Algorithm 1, recomputed by hand.
  gc = jnp.clip(g, -1, 1)
  sign, log_abs = jnp.sign(gc), jnp.log(jnp.abs(gc) + 1e-18)
  o, _ = reference.net(meta["net1"], jnp.stack([sign, log_abs]), h[:8])
  (o3,), _ = reference.net(meta["net2"], 2 * log_abs[None], h[8:])
  t = jnp.tanh(o[0] + 1.0)
  m_sign = jnp.where(t >= 0, 1.0, -1.0)
  q = 1 / jnp.sqrt(jnp.exp(o3) + 1e-18)
  direction = -sign * m_sign * jnp.exp(o[1]) * q
  # b3[0] shifts o1 of every element by the same amount: d direction_i / d b3[0] is
  # -sign * exp(o2) * q * (1 - tanh^2) under the straight-through rule.
  expected = jnp.sum(-sign * jnp.exp(o[1]) * q * (1 - t * t))
  offset = spec.leaf_offsets(0)[("mlp", "b3")]  # net1/mlp/b3 in the flat vector
  for backend in ("reference", kernel_backend):
    d, _ = fused_step(spec, meta_flat, g, h, backend=backend)
    assert rel_err(d, direction) <= 1e-5
    assert set(np.unique(np.asarray(m_sign))) <= {-1.0, 1.0}
    grad = jax.grad(lambda m: jnp.sum(fused_step(spec, m, g, h, backend=backend)[0]))(meta_flat)
    assert abs(float(grad[offset]) - float(expected)) <= 1e-4 * abs(float(expected))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_vmap_equals_loop(kernel_backend, rule):
  problems = [random_problem(rule, 50, seed=s) for s in range(3)]
  spec = problems[0][0]
  metas, gs, hs = (jnp.stack([p[i] for p in problems]) for i in (1, 2, 3))
  step = lambda m, g, h: fused_step(spec, m, g, h, backend=kernel_backend)
  loop = [step(m, g, h) for m, g, h in zip(metas, gs, hs)]
  batched = jax.jit(jax.vmap(step))(metas, gs, hs)
  shared = jax.jit(jax.vmap(step, in_axes=(None, 0, 0)))(metas[0], gs, hs)
  for i in range(3):
    assert rel_err(batched[0][i], loop[i][0]) <= 1e-6
    assert rel_err(batched[1][i], loop[i][1]) <= 1e-6
  assert rel_err(shared[0][0], loop[0][0]) <= 1e-6
  # Nested vmap (e.g. tasks x units) and the meta-gradient summed over the batch.
  nested = jax.jit(jax.vmap(jax.vmap(step, in_axes=(None, 0, 0)), in_axes=(None, 0, 0)))(
      metas[0], gs.reshape(3, 1, 50), hs.reshape(3, 1, *hs.shape[1:]))
  assert rel_err(nested[0].reshape(3, 50), shared[0]) <= 1e-6
  loss = lambda m, backend: jnp.sum(jax.vmap(
      lambda g, h: fused_step(spec, m, g, h, backend=backend)[0], in_axes=(0, 0))(gs, hs))
  assert rel_err(jax.grad(loss)(metas[0], kernel_backend),
                 jax.grad(loss)(metas[0], "reference")) <= 1e-4


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_special_gradient_values_behave_as_reference(kernel_backend, rule):
  spec, meta, _, h = random_problem(rule, 12, seed=5)
  g = special_gradients()
  for clip in (1.0, 0.0):
    want = fused_step(spec, meta, g, h, clip=clip, backend="reference")
    got = fused_step(spec, meta, g, h, clip=clip, backend=kernel_backend)
    assert_matches(got[0], want[0], 1e-5, "direction")
    assert_matches(got[1], want[1], 1e-5, "hidden state")
    assert_zeros_match(got[0], want[0], "direction")
  # Zero gradients give zero updates in the sign-based rules.
  if rule in ("optim4rl", "optim4rl_public", "l2lgd2"):
    assert float(got[0][0]) == 0.0


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_denormal_gradients_step_as_zeros_of_their_sign(kernel_backend, rule, clip):
  """The denormal policy (reference.flush_denormal): forward and backward are bit for bit
  those of zero gradients of the same signs, and match the reference."""
  g_denormal, g_zero = denormal_and_zero_gradients()
  spec, meta, _, h = random_problem(rule, g_zero.shape[0], seed=11)
  d_dir = jnp.cos(jnp.arange(g_zero.shape[0], dtype=jnp.float32))

  def run(g, backend):
    (d, h_new), vjp = jax.vjp(lambda m, h: fused_step(spec, m, g, h, clip=clip, backend=backend),
                              meta, h)
    return (d, h_new, *vjp((d_dir, 0.3 * jnp.ones_like(h_new))))
  run = jax.jit(run, static_argnums=1)
  got, zero, want = run(g_denormal, kernel_backend), run(g_zero, kernel_backend), \
      run(g_denormal, "reference")
  for name, a, b in zip(("direction", "h_new", "d_meta", "d_h"), got, zero):
    assert_same_bits(a, b, name)
  assert_matches(got[0], want[0], 1e-5, "direction")
  assert_matches(got[1], want[1], 1e-5, "hidden state")
  assert_zeros_match(got[0], want[0], "direction")
  assert_matches(got[2], want[2], 1e-4, "meta-gradient")
  assert_matches(got[3], want[3], 1e-4, "hidden-state gradient")


def test_scan_of_kernel_equals_reference(kernel_backend):
  spec, meta, g, h = random_problem("optim4rl", 100, seed=6)
  gs = jnp.stack([g * (0.5 ** i) for i in range(5)])

  def run(backend):
    def body(h, g):
      d, h = fused_step(spec, meta, g, h, backend=backend)
      return h, d
    return jax.jit(lambda h: jax.lax.scan(body, h, gs))(h)
  (h_k, d_k), (h_r, d_r) = run(kernel_backend), run("reference")
  assert_matches(d_k, d_r, 1e-5, "directions")
  assert_matches(h_k, h_r, 1e-5, "hidden state")


def test_backward_is_deterministic(kernel_backend):
  spec, meta, g, h = random_problem("optim4rl", 5000, seed=7)
  f = jax.jit(jax.grad(lambda m: jnp.sum(fused_step(spec, m, g, h, backend=kernel_backend)[0])))
  a, b = np.asarray(f(meta)), np.asarray(f(meta))
  np.testing.assert_array_equal(a, b)


def test_large_problem_matches_reference(kernel_backend):
  """Outputs of several MB (the cpu handler asks for huge pages on them) and many threads'
  worth of blocks, forward and VJP."""
  spec, meta, g, h = random_problem("optim4rl", 70_001, seed=3)
  run = lambda b: jax.jit(lambda m, g, h: fused_step(spec, m, g, h, backend=b))(meta, g, h)
  got, want = run(kernel_backend), run("reference")
  assert_matches(got[0], want[0], 1e-5, "direction")
  assert_matches(got[1], want[1], 1e-5, "hidden state")
  grad = lambda b: jax.jit(jax.grad(_loss(spec, b, 70_001), argnums=(0, 1)))(meta, h, g)
  got, want = grad(kernel_backend), grad("reference")
  assert_matches(got[0], want[0], 1e-4, "meta-gradient")
  assert_matches(got[1], want[1], 1e-4, "hidden-state gradient")


def test_cpu_simd_width_is_one_the_host_supports():
  """The cpu kernels use one native register per value; the width they were built for must be
  one this CPU runs (16 needs AVX-512, 8 AVX2)."""
  cpu = pytest.importorskip("optim4rl._cpu")
  lanes = cpu.simd_lanes()
  if not os.path.exists("/proc/cpuinfo"):
    pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
  flags = open("/proc/cpuinfo").read()  # the host CPU's, whatever JAX's platform
  assert lanes in (4, 8, 16)
  if lanes == 16:
    assert "avx512f" in flags
  if lanes == 8:
    assert "avx2" in flags and "fma" in flags


def test_empty_gradients(kernel_backend):
  spec, meta, _, _ = random_problem("optim4rl", 1)
  g, h = jnp.zeros((0,), jnp.float32), jnp.zeros((16, 0), jnp.float32)
  d, h_new = fused_step(spec, meta, g, h, backend=kernel_backend)
  assert d.shape == (0,) and h_new.shape == (16, 0)
  grad = jax.grad(lambda m: jnp.sum(fused_step(spec, m, g, h, backend=kernel_backend)[0]))(meta)
  assert not np.any(np.asarray(grad))


# ----------------------------------------------------------------------------- dispatch

def test_registry_records():
  for name, b in registry.BACKENDS.items():
    assert b.name == name and callable(b.forward) and callable(b.unavailable)
    assert (b.backward is None) == (name == "reference")  # only JAX differentiates itself
  assert registry.KNOWN_BACKENDS == tuple(registry.BACKENDS)
  assert optim4rl.available_backends("cpu") == ("reference", "cpu")
  assert optim4rl.resolve_backend(None, "cpu") == "cpu"
  assert "cuda" not in optim4rl.available_backends("cpu")
  assert "cpu" not in optim4rl.available_backends("gpu")


def test_resolve_backend_errors_say_why():
  with pytest.raises(ValueError, match="unknown backend 'tpu-kernel'"):
    optim4rl.resolve_backend("tpu-kernel", "cpu")
  with pytest.raises(ValueError, match="'triton' cannot run here: it runs on GPUs.*is cpu"):
    optim4rl.resolve_backend("triton", "cpu")
  with pytest.raises(ValueError, match="'cpu' cannot run here: it runs on CPU, the platform"):
    optim4rl.resolve_backend("cpu", "gpu")
  with pytest.raises(ValueError, match="has no kernel in this build"):
    fused_step(rules.get_rule("l2lgd2"), jnp.zeros((721,)), jnp.zeros((3,)),
               jnp.zeros((8, 3)), backend="tpu-kernel")


def test_fused_step_dispatches_through_the_registry(monkeypatch):
  """A backend added to the registry is used by fused_step, its backward by the VJP: there
  is no other list of backends."""
  calls = []
  ref = registry.BACKENDS["reference"]

  def forward(rule, clip, meta, g, h):
    calls.append("forward")
    return ref.forward(rule, clip, meta, g, h)

  def backward(rule, clip, meta, g, h, d_dir, d_h):
    calls.append("backward")
    _, vjp = jax.vjp(lambda m, h: ref.forward(rule, clip, m, g, h), meta, h)
    return vjp((d_dir, d_h))
  fake = registry.Backend("fake", ("cpu",), lambda platform: None, forward, backward, 9)
  monkeypatch.setitem(registry.BACKENDS, "fake", fake)
  assert "fake" in optim4rl.available_backends("cpu")
  spec, meta, g, h = random_problem("l2lgd2", 5)
  grad = jax.grad(lambda m: jnp.sum(fused_step(spec, m, g, h, backend="fake")[0]))(meta)
  want = jax.grad(lambda m: jnp.sum(fused_step(spec, m, g, h, backend="reference")[0]))(meta)
  assert calls == ["forward", "backward"]
  np.testing.assert_array_equal(grad, want)


@pytest.mark.skipif(registry.cuda_library() is None,
                    reason="CUDA library not built (no nvcc at install time)")
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_cuda_custom_calls_lower_for_cuda(rule):
  """The cuda backend's forward and backward become its FFI custom calls, with the rule's
  kernel id, when lowered for CUDA (no GPU needed)."""
  spec = rules.get_rule(rule)
  flat = rules.flatten_meta(optim4rl.init_meta_params(jax.random.key(0), rule), spec)
  g, h = denormal_and_zero_gradients()[0], jnp.zeros((spec.hidden_rows, 12))
  loss = lambda m, h: jnp.sum(fused_step(spec, m, g, h, backend="cuda")[0])
  text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).trace(flat, h).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "optim4rl_cuda_forward" in text and "optim4rl_cuda_backward" in text
  assert f"rule = {spec.kernel_id} : i32" in text
