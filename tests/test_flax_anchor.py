"""The benchmarks' flax anchor computes Optim4RL's step (optim4rl.rules.reference) given the
same weights, so that timing it beside the kernels compares like with like."""
import jax
import jax.numpy as jnp
import numpy as np

import optim4rl
from optim4rl.evaluation.flax_anchor import (AnchorState, anchor_optimizer,
                                             anchor_params_from_meta, init_anchor)
from optim4rl.rules import reference


def test_anchor_is_the_reference_rule():
  meta = optim4rl.init_meta_params(jax.random.key(0), "optim4rl")
  params = anchor_params_from_meta(meta)
  shapes = lambda t: jax.tree.map(jnp.shape, t)
  assert shapes(params) == shapes(init_anchor(jax.random.key(1)))  # every leaf mapped
  k1, k2 = jax.random.split(jax.random.key(2))
  n = 500
  g = 1e-2 * jax.random.normal(k1, (n,)) * 10.0 ** jax.random.uniform(k2, (n,), minval=-4,
                                                                      maxval=2)
  h = 0.5 * jax.random.normal(jax.random.key(3), (16, n))
  want_d, want_h = reference.step("optim4rl", meta, g, h, 1.0)
  tx = anchor_optimizer(params, learning_rate=1.0)
  d, state = jax.jit(tx.update)(g, AnchorState((h[:8].T, h[8:].T)))
  np.testing.assert_allclose(np.asarray(d), np.asarray(want_d), rtol=1e-5,
                             atol=1e-6 * float(jnp.max(jnp.abs(want_d))))
  got_h = jnp.concatenate([state.carries[0].T, state.carries[1].T])
  np.testing.assert_allclose(np.asarray(got_h), np.asarray(want_h), rtol=1e-5, atol=1e-6)
