"""The opt-in bfloat16 hidden state: each backend against the reference's float32 arithmetic
on a widened state rounded back to nearest even, under jit, vmap and scan; the conversion that
backends without bfloat16 kernels get; the residuals it saves."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim4rl.backends import fused_step, primitive, registry
from conftest import (RULE_NAMES, assert_close, assert_matches, assert_same_bits, random_problem,
                      scanned_meta_gradients)

BF16 = jnp.bfloat16
ULP = 2.0 ** -7  # bfloat16's largest relative rounding step (8 significant bits)


def _bf16_problem(rule, n, seed=0):
  spec, meta, g, h = random_problem(rule, n, seed)
  return spec, meta, g, h.astype(BF16)


def assert_bf16_matches(got, want, what):
  """bfloat16 arrays from the same float32 arithmetic up to its last-bit differences: equal,
  or one rounding step apart where those differences straddle a rounding boundary."""
  assert got.dtype == BF16 and want.dtype == BF16, (what, got.dtype, want.dtype)
  a, b = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert_close(a, b, rtol=ULP, atol=1e-30, what=what)
  assert np.mean(a.view(np.uint32) == b.view(np.uint32)) >= 0.99, f"{what}: many differ"


def _loss(spec, backend, n):
  weights = jnp.cos(jnp.arange(n, dtype=jnp.float32))

  def loss(meta, h, g):
    d, h_new = fused_step(spec, meta, g, h, backend=backend)
    return jnp.sum(weights * d) + 0.3 * jnp.sum(jnp.sin(h_new.astype(jnp.float32)))
  return loss


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("n", (1, 37))
def test_forward_and_vjp_match_reference(kernel_backend, rule, n):
  spec, meta, g, h = _bf16_problem(rule, n, seed=1)  # test_primitive's float32 problems, rounded
  step = lambda b: jax.jit(lambda m, g, h: fused_step(spec, m, g, h, backend=b))(meta, g, h)
  (d, h_new), (d_ref, h_ref) = step(kernel_backend), step("reference")
  assert_matches(d, d_ref, 1e-5, "direction")
  assert_bf16_matches(h_new, h_ref, "hidden state")
  grad = lambda b: jax.jit(jax.grad(_loss(spec, b, n), argnums=(0, 1)))(meta, h, g)
  (d_meta, d_h), (d_meta_ref, d_h_ref) = grad(kernel_backend), grad("reference")
  assert_matches(d_meta, d_meta_ref, 1e-4, "meta-gradient")
  assert_bf16_matches(d_h, d_h_ref, "hidden-state gradient")


def test_rounding_is_xlas_convert(kernel_backend):
  """The bfloat16 step equals the float32 step on the widened state, rounded by XLA's
  convert, bit for bit: nearest even, NaN and infinities kept."""
  spec, meta, g, h = _bf16_problem("optim4rl", 3000, seed=4)
  h = h.at[:, :3].set(jnp.array([jnp.nan, jnp.inf, -jnp.inf], BF16))
  step = lambda h: jax.jit(lambda m, g, h: fused_step(spec, m, g, h, backend=kernel_backend))(
      meta, g, h)
  (d16, h16), (d32, h32) = step(h), step(h.astype(jnp.float32))
  assert_same_bits(d16, d32, "direction")
  assert_same_bits(h16.astype(jnp.float32), h32.astype(BF16).astype(jnp.float32), "hidden state")
  assert np.isnan(np.asarray(h16[0, 0], np.float32))


def test_meta_gradient_through_scan_and_vmap(kernel_backend):
  got, want, flat = scanned_meta_gradients("optim4rl", kernel_backend, hidden_dtype="bfloat16")
  assert_matches(flat(got), flat(want), 1e-3, "meta-gradient")
  problems = [_bf16_problem("l2lgd2", 50, seed=s) for s in range(3)]
  spec = problems[0][0]
  metas, gs, hs = (jnp.stack([p[i] for p in problems]) for i in (1, 2, 3))
  step = lambda m, g, h: fused_step(spec, m, g, h, backend=kernel_backend)
  batched = jax.jit(jax.vmap(step))(metas, gs, hs)
  for i, (m, g, h) in enumerate(zip(metas, gs, hs)):
    d, h_new = step(m, g, h)
    assert_same_bits(batched[0][i], d, "vmapped direction")
    assert_same_bits(batched[1][i].astype(jnp.float32), h_new.astype(jnp.float32), "vmapped h")


def test_backends_without_bf16_kernels_convert_around_them(monkeypatch):
  """The conversion of primitive._forward/_backward (CUDA's and Triton's path): bitwise the
  cpu kernels' own bfloat16 loads and stores."""
  cpu = registry.BACKENDS["cpu"]
  monkeypatch.setitem(registry.BACKENDS, "cpu_f32_only",
                      dataclasses.replace(cpu, name="cpu_f32_only",
                                          hidden_dtypes=(jnp.dtype(jnp.float32),)))
  spec, meta, g, h = _bf16_problem("optim4rl", 500, seed=5)
  run = lambda b: jax.jit(jax.value_and_grad(
      lambda m, h: jnp.sum(_loss(spec, b, 500)(m, h, g)), argnums=(0, 1)))(meta, h)
  (v1, (m1, h1)), (v2, (m2, h2)) = run("cpu"), run("cpu_f32_only")
  assert_same_bits(v1, v2, "loss")
  assert_same_bits(m1, m2, "meta-gradient")
  assert_same_bits(h1.astype(jnp.float32), h2.astype(jnp.float32), "hidden-state gradient")


def test_residuals_are_kept_as_bits():
  """XLA on CPU would widen a scan's stack of bfloat16 residuals to float32; as uint16 bits
  they stay 2 bytes per hidden-state entry."""
  h = jnp.array([1.0, -2.5, jnp.nan], BF16)
  packed = primitive._pack(h)
  assert packed.dtype == jnp.uint16
  assert_same_bits(primitive._unpack(packed).astype(jnp.float32), h.astype(jnp.float32), "bits")
  assert primitive._pack(h.astype(jnp.float32)).dtype == jnp.float32


def test_other_hidden_dtypes_are_refused():
  spec, meta, g, h = random_problem("optim4rl", 10)
  with pytest.raises(TypeError, match="float32 or bfloat16"):
    fused_step(spec, meta, g, h.astype(jnp.float16), backend="reference")
