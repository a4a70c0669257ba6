import atexit
import os
import shutil
import tempfile

# One compilation cache for the session, its subprocesses (CLI runs, the 2-device cases)
# included: tests that run the same program again (a run, then its resumption) load it instead
# of compiling it again, which halves the meta-training tests on a 2-core machine. A fresh
# directory per session, so nothing compiled by other code is ever loaded.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="optim4rl-test-jax-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import optim4rl  # noqa: E402
from optim4rl import rules  # noqa: E402
from optim4rl.rules.constants import FLT_MIN  # noqa: E402,F401 (the tests import it from here)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0.5)))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", 0)))

# Rules with their own per-element math (kernels); odd rules reuse a plain rule's kernel and
# are tested through the optax API (test_transforms.py).
RULE_NAMES = tuple(name for name, spec in rules.RULES.items() if not spec.odd)
ODD_RULE_NAMES = tuple(name for name, spec in rules.RULES.items() if spec.odd)


def required_kernel_backends(platform=None):
  """The kernel backends a host must have, whatever was built: the C++ library on a CPU
  host, the CUDA library and the Triton kernels on a GPU host. A missing one fails the
  tests that use it (kernel_backend), so they can never pass by comparing the reference
  with itself."""
  platform = platform or jax.default_backend()
  gpu = ("cuda", "triton")
  return {"cpu": ("cpu",), "gpu": gpu, "cuda": gpu}.get(platform, ())


KERNEL_BACKENDS = required_kernel_backends()


def _flat64(x):
  """A pytree of arrays as one float64 vector (a single array stays as it is, flattened)."""
  leaves = jax.tree.leaves(x)
  if not leaves:
    return np.zeros((0,), np.float64)
  return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves])


def _non_finite_mismatch(a, b):
  """Indices where a and b disagree on NaN/+inf/-inf (NaN matches NaN, inf an inf of its sign)."""
  bad_a, bad_b = ~np.isfinite(a), ~np.isfinite(b)
  return np.argwhere((bad_a != bad_b) | (bad_a & bad_b & ~np.isnan(a) & (a != b)))


def rel_err(a, b, norm="max"):
  """|a - b| / |b| over all entries of two arrays (or pytrees of arrays of the same
  structure), with NaN/Inf required to sit at the same places. norm="max": max |a - b| /
  max |b|; norm="l2": the Euclidean norms (for whole states, where rounding differences
  spread over many entries). Normwise either way: an error in an entry much smaller than
  the largest ones goes unseen; assert_close checks each entry."""
  if isinstance(a, (np.ndarray, jax.Array)):
    assert np.shape(a) == np.shape(b), (np.shape(a), np.shape(b))
  else:
    assert jax.tree.structure(a) == jax.tree.structure(b), "different pytree structures"
  a, b = _flat64(a), _flat64(b)
  bad = _non_finite_mismatch(a, b)
  assert bad.size == 0, f"NaN/Inf differ at {bad[:5].ravel().tolist()}"
  a, b = a[np.isfinite(b)], b[np.isfinite(b)]
  if a.size == 0:
    return 0.0
  size = {"max": lambda x: np.max(np.abs(x)), "l2": np.linalg.norm}[norm]
  return float(size(a - b) / max(size(b), 1e-30))


def assert_close(a, b, rtol, atol, what=""):
  """Every entry: |a - b| <= atol + rtol * |b| (b is the reference), with NaN/Inf at the same
  places in both. The message names the worst entry."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, f"{what}: shapes {a.shape} != {b.shape}"
  bad = _non_finite_mismatch(a, b)
  assert bad.size == 0, f"{what}: NaN/Inf differ at {bad[:5].tolist()}"
  finite = np.isfinite(b)
  a, b = np.where(finite, a, 0.0), np.where(finite, b, 0.0)  # matched non-finite: equal
  excess = np.abs(a - b) - (atol + rtol * np.abs(b))
  if excess.size and np.max(excess) > 0:
    i = np.unravel_index(np.argmax(excess), excess.shape)
    raise AssertionError(f"{what}: {int(np.sum(excess > 0))} of {excess.size} entries differ "
                         f"beyond atol={atol:.3g} + rtol={rtol:.3g} * |ref|; worst at "
                         f"{tuple(int(k) for k in i)}: {a[i]!r} vs reference {b[i]!r}")


def assert_matches(a, b, tol, what=""):
  """A backend's result a against the reference b: rel_err(a, b) <= tol, and per entry
  |a - b| <= tol |b| + 1e-6 max|b|, so that an error in a small entry cannot hide behind
  the largest one (1e-6: float32 rounding of sums and of exp/log/tanh implementations)."""
  err = rel_err(a, b)
  assert err <= tol, f"{what}: rel_err {err:.3g} > {tol}"
  b64 = np.asarray(b, np.float64)
  finite = b64[np.isfinite(b64)]
  scale = float(np.max(np.abs(finite))) if finite.size else 0.0
  assert_close(a, b, rtol=tol, atol=1e-6 * scale, what=what)


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


def denormal_and_zero_gradients():
  """(g_denormal, g_zero): denormal gradients of both signs (1e-45 up to just below FLT_MIN)
  and, at the same places, zeros of the same signs; both also hold FLT_MIN (normal: not
  flushed) and two ordinary gradients. Under the denormal policy both step identically."""
  tiny = [1e-45, 1e-40, FLT_MIN / 2, float(np.nextafter(np.float32(FLT_MIN), np.float32(0)))]
  ordinary = [FLT_MIN, -FLT_MIN, 0.5, -3.0]
  denormal = [s * t for t in tiny for s in (1.0, -1.0)] + ordinary
  zero = [s * 0.0 for t in tiny for s in (1.0, -1.0)] + ordinary
  return jnp.array(denormal, jnp.float32), jnp.array(zero, jnp.float32)


def assert_same_bits(a, b, what=""):
  """Bitwise equality of float32 arrays: signed zeros and NaN payloads included."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  assert a.shape == b.shape, (what, a.shape, b.shape)
  differ = np.argwhere(a.view(np.uint32) != b.view(np.uint32))
  if differ.size:
    first = tuple(differ[0])
    raise AssertionError(f"{what}: bits differ at {differ[:5].tolist()}: {a[first]!r} vs "
                         f"{b[first]!r}")


def assert_zeros_match(a, b, what=""):
  """Where the reference b is exactly zero, a is a zero of the same sign."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  zero = b == 0
  np.testing.assert_array_equal(a[zero], 0.0, err_msg=f"{what}: not zero where the reference is")
  np.testing.assert_array_equal(np.signbit(a[zero]), np.signbit(b[zero]),
                                err_msg=f"{what}: zero of the other sign")


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


def scanned_meta_gradients(rule, backend, size=60, hidden_dtype="float32"):
  """(grad from `backend`, grad from the reference, flatten) of a loss after M = 4 updates of
  a weighted quadratic through the optax API: the meta-gradient path of Section 2.2."""
  target = {"w": jnp.linspace(-1.0, 1.0, size).reshape(6, -1),
            "b": jnp.full((7,), 0.5)}
  params0 = jax.tree.map(jnp.zeros_like, target)
  meta = optim4rl.init_meta_params(jax.random.key(3), rule)

  def meta_loss(meta, backend):
    tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=0.1, backend=backend,
                                    hidden_dtype=hidden_dtype)

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


@pytest.fixture(params=KERNEL_BACKENDS or ["none-for-this-platform"])
def kernel_backend(request):
  """Each kernel backend this host must have (required_kernel_backends); fails, with the
  reason, when one cannot run, instead of passing on the reference alone."""
  if request.param == "none-for-this-platform":
    pytest.fail(f"no kernel backend runs on JAX platform {jax.default_backend()!r}")
  try:
    return optim4rl.resolve_backend(request.param)
  except ValueError as e:
    pytest.fail(f"required backend {request.param!r}: {e}")
