import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optim4rl
from optim4rl import rules

# Rules with their own per-element math (kernels); odd rules reuse a plain rule's kernel and
# are tested through the optax API (test_api.py).
RULE_NAMES = tuple(name for name, spec in rules.RULES.items() if not spec.odd)
ODD_RULE_NAMES = tuple(name for name, spec in rules.RULES.items() if spec.odd)
KERNEL_BACKENDS = tuple(b for b in optim4rl.available_backends() if b != "reference")


def rel_err(a, b):
  """max |a - b| / max |b|, with NaN/Inf required to sit at the same places."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape
  bad_a, bad_b = ~np.isfinite(a), ~np.isfinite(b)
  np.testing.assert_array_equal(bad_a, bad_b)
  np.testing.assert_array_equal(a[bad_a & ~np.isnan(a)], b[bad_b & ~np.isnan(b)])
  a, b = a[~bad_a], b[~bad_b]
  if a.size == 0:
    return 0.0
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def rl_like_gradients(key, n):
  """Gradients spread over many decades, as agent-gradients are (paper, Fig. 1)."""
  k1, k2, k3 = jax.random.split(key, 3)
  magnitude = 10.0 ** jax.random.uniform(k1, (n,), minval=-9.0, maxval=0.5)
  g = jnp.where(jax.random.bernoulli(k2, 0.5, (n,)), magnitude, -magnitude)
  return jnp.where(jax.random.bernoulli(k3, 0.05, (n,)), 0.0, g).astype(jnp.float32)


def special_gradients():
  """12 gradients: signed zeros, tiny, denormal, huge, infinite, NaN and two ordinary ones."""
  return jnp.array([0.0, -0.0, 1e-30, -1e-30, 1e-45, 1e30, -1e30, jnp.inf, -jnp.inf, jnp.nan,
                    0.5, -3.0], jnp.float32)


def random_problem(rule, n, seed=0):
  spec = rules.get_rule(rule)
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  meta = optim4rl.init_meta_params(k1, rule)
  # Non-zero biases so every code path (gates, ReLUs both ways) is exercised.
  flat = rules.flatten_meta(meta, spec)
  flat = flat + 0.3 * jax.random.normal(k3, flat.shape)
  g = rl_like_gradients(k2, n)
  h = 0.5 * jax.random.normal(k3, (spec.hidden_rows, n), jnp.float32)
  return spec, flat, g, h


def scanned_meta_gradients(rule, backend, size=60):
  """(grad from `backend`, grad from the reference, flatten) of a loss after M = 4 updates of
  a weighted quadratic through the optax API: the meta-gradient path of Section 2.2."""
  target = {"w": jnp.linspace(-1.0, 1.0, size).reshape(6, -1),
            "b": jnp.full((7,), 0.5)}
  params0 = jax.tree.map(jnp.zeros_like, target)
  meta = optim4rl.init_meta_params(jax.random.key(3), rule)

  def meta_loss(meta, backend):
    tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=0.1, backend=backend)

    def inner(p):
      return sum(jnp.sum(jnp.square(a - t) * (1 + jnp.abs(t)))
                 for a, t in zip(jax.tree.leaves(p), jax.tree.leaves(target)))

    def body(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(inner)(params), state)
      return (jax.tree.map(jnp.add, params, updates), state), None
    (params, _), _ = jax.lax.scan(body, (params0, tx.init(params0)), None, length=4)
    return inner(params)

  grad = jax.jit(jax.grad(meta_loss), static_argnums=1)
  return grad(meta, backend), grad(meta, "reference"), lambda m: rules.flatten_meta(m, rule)


@pytest.fixture(params=KERNEL_BACKENDS or ["no-kernel-backend"])
def kernel_backend(request):
  if request.param == "no-kernel-backend":
    pytest.fail("no kernel backend was built: pip install -e . must build optim4rl._cpu")
  return request.param
