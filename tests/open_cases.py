"""OPEN step problems shared by the tests of every OPEN backend (tests/backends): operands
with gradients over several decades, and the comparison of a kernel's step with the
reference's."""
import jax
import jax.numpy as jnp
import numpy as np

from optim4rl.rules import open as spec

# Tensor sizes: not multiples of the SIMD width (16), a one-element tensor, an empty one.
SIZES = (5, 17, 1, 0, 64, 33, 1100)
NETS = ("breakout", "multi")  # the published default (H 8, W 16) and larger (H 16, W 32) nets


def problem(name, sizes=SIZES, seed=0):
  """(meta, operands) with gradients over several decades, old momenta and carries, actor and
  critic tensors, and the proportions mid-run."""
  meta = spec.pretrained_open(name)
  hidden, n, t = spec.net_of(meta).hidden, sum(sizes), len(sizes)
  k = jax.random.split(jax.random.key(seed), 7)
  g = 0.01 * jax.random.normal(k[0], (n,)) * 10.0 ** jax.random.uniform(k[1], (n,), minval=-5,
                                                                        maxval=1)
  g = g.at[::7].set(0.0)  # zero gradients: sign 0, log of eps
  args = (jax.random.normal(k[2], (n,)), g, 0.01 * jax.random.normal(k[3], (6, n)),
          0.5 * jax.random.normal(k[4], (hidden, n)),
          np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32),
          jnp.linspace(0.0, 1.0, t, dtype=jnp.float32),
          jnp.asarray(np.arange(t) % 2 == 0, jnp.float32),
          jnp.abs(jax.random.normal(k[5], (n,))), jax.random.normal(k[6], (n,)),
          jnp.float32(0.3), jnp.float32(2 / 3))
  return meta, args


def assert_kernel_matches(got, want, segments, what="", momenta_ulp=1):
  """u per element against the scale of u over its tensor; carries per element against the
  scale of the carry; momenta to `momenta_ulp` ulp (the kernels fuse b m + (1 - b) g into one
  FMA, as XLA's CPU fusion of the reference does under jit, but not always under vmap), or,
  with None, to 1e-6 relative."""
  (u, m, c), (u0, m0, c0) = [tuple(np.asarray(x, np.float64) for x in r) for r in (got, want)]
  for s, e in zip(segments[:-1], segments[1:]):
    if e > s:
      scale = np.max(np.abs(u0[s:e]))
      assert np.max(np.abs(u[s:e] - u0[s:e])) <= 1e-5 * scale, (what, s, e)
  assert np.max(np.abs(c - c0)) <= 1e-5 * np.max(np.abs(c0)), what
  if momenta_ulp is None:  # another compiler's rounding (GPUs): relative to the scale
    np.testing.assert_allclose(m, m0, rtol=1e-6, atol=1e-7 * np.max(np.abs(m0)), err_msg=what)
  else:
    np.testing.assert_array_max_ulp(np.float32(m), np.float32(m0), maxulp=momenta_ulp)
