"""GPU backends ("cuda": the CUDA FFI library, "triton": the Triton kernels through jax_triton)
against the pure-JAX reference on the same GPU: forward and VJP under jit, vmap, and the
meta-gradient through four scanned updates. Skipped unless JAX's default backend is a GPU.

  python -m pytest -q tests/backends/test_gpu.py            # everything, ~45 GB GPU memory
  python -m pytest -q tests/backends/test_gpu.py -m "not slow"
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optim4rl
from optim4rl import rules
from optim4rl.rules import reference
from optim4rl.backends import fused_step
from conftest import RULE_NAMES, assert_matches, random_problem, rel_err, rl_like_gradients

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason=f"needs a GPU; JAX's backend is {jax.default_backend()}")

GPU_BACKENDS = ("cuda", "triton")
SIZES = (1, 1000, 10**6)  # 1000: not a multiple of any block size


@pytest.fixture(params=GPU_BACKENDS)
def backend(request):
  # On a GPU both must work: a missing build or jax_triton is a failure, with its reason.
  try:
    return optim4rl.resolve_backend(request.param)
  except ValueError as e:
    pytest.fail(str(e))


def _vjp_tolerance(n):
  # float32 sums over n parameters in different orders (XLA's vs the kernels' blocks).
  return 1e-4 if n <= 1000 else 1e-3


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("n", SIZES)
def test_forward_and_vjp_match_reference(backend, rule, n):
  spec, meta, g, h = random_problem(rule, n, seed=n % 97)
  weights = jnp.cos(jnp.arange(n, dtype=jnp.float32))

  def loss(meta, h, backend):
    d, h_new = fused_step(spec, meta, g, h, backend=backend)
    return jnp.sum(weights * d) + 0.3 * jnp.sum(jnp.sin(h_new))
  step = jax.jit(lambda m, h, b: fused_step(spec, m, g, h, backend=b), static_argnums=2)
  want, got = step(meta, h, "reference"), step(meta, h, backend)
  assert_matches(got[0], want[0], 1e-5, "direction")  # elementwise math: per entry too
  assert_matches(got[1], want[1], 1e-5, "hidden state")
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  want, got = grad(meta, h, "reference"), grad(meta, h, backend)
  assert rel_err(got[0], want[0]) <= _vjp_tolerance(n)
  assert rel_err(got[1], want[1]) <= _vjp_tolerance(n)


@pytest.mark.parametrize("rule", ["optim4rl", "linear_optim"])
def test_vmap_matches_loop_and_reference(backend, rule):
  problems = [random_problem(rule, 1000, seed=s) for s in range(3)]
  spec = problems[0][0]
  metas, gs, hs = (jnp.stack([p[i] for p in problems]) for i in (1, 2, 3))
  step = lambda b: lambda m, g, h: fused_step(spec, m, g, h, backend=b)
  batched = jax.jit(jax.vmap(step(backend)))(metas, gs, hs)
  shared = jax.jit(jax.vmap(step(backend), in_axes=(None, 0, 0)))(metas[0], gs, hs)
  want = jax.vmap(step("reference"))(metas, gs, hs)
  want_shared = jax.vmap(step("reference"), in_axes=(None, 0, 0))(metas[0], gs, hs)
  for i in range(3):
    loop = step(backend)(metas[i], gs[i], hs[i])
    assert rel_err(batched[0][i], loop[0]) <= 1e-6 and rel_err(batched[1][i], loop[1]) <= 1e-6
  assert rel_err(batched[0], want[0]) <= 1e-5 and rel_err(shared[0], want_shared[0]) <= 1e-5
  loss = lambda m, b: jnp.sum(jax.vmap(lambda g, h: step(b)(m, g, h)[0])(gs, hs))
  assert rel_err(jax.jit(jax.grad(loss), static_argnums=1)(metas[0], backend),
                 jax.grad(loss)(metas[0], "reference")) <= 1e-4


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("n", [1000, 10**6])
def test_grad_through_four_scanned_updates(backend, rule, n):
  """The meta-gradient path: grad w.r.t. meta of a quadratic loss after 4 inner updates."""
  target = jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32)
  meta = optim4rl.init_meta_params(jax.random.key(3), rule)

  def meta_loss(meta, backend):
    tx = optim4rl.learned_optimizer(meta, rule=rule, learning_rate=0.1, backend=backend)
    inner = lambda p: jnp.sum(jnp.square(p - target) * (1 + jnp.abs(target)))

    def body(carry, _):
      p, state = carry
      u, state = tx.update(jax.grad(inner)(p), state)
      return (p + u, state), None
    p0 = jnp.zeros_like(target)
    (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=4)
    return inner(p)
  grad = jax.jit(jax.grad(meta_loss), static_argnums=1)
  want, got = grad(meta, "reference"), grad(meta, backend)
  flat = lambda m: rules.flatten_meta(m, rule)
  assert np.any(np.asarray(flat(want)) != 0)
  assert rel_err(flat(got), flat(want)) <= _vjp_tolerance(n)


def test_backward_is_deterministic(backend):
  spec, meta, g, h = random_problem("optim4rl", 10**6, seed=7)
  f = jax.jit(jax.grad(lambda m: jnp.sum(fused_step(spec, m, g, h, backend=backend)[0])))
  np.testing.assert_array_equal(np.asarray(f(meta)), np.asarray(f(meta)))


# Special gradient values and the denormal policy: tests/backends/test_primitive.py, whose
# kernel_backend fixture runs them for cuda and triton on a GPU host.


def test_gpu_backends_are_listed_on_gpu():
  available = optim4rl.available_backends()
  for name in ("cuda", "triton"):
    assert name in available, optim4rl.backends.registry.BACKENDS[name].unavailable("gpu")


@pytest.mark.slow
def test_hidden_rows_times_params_beyond_2_to_the_31(backend):
  """16 rows x P > 2^31 hidden-state elements: 64-bit offsets. The kernels run on all of
  P; every parameter is independent, so the reference runs on a subsample only. Cotangents
  are zero off the subsample, so the meta gradient is the subsample's too."""
  spec = rules.get_rule("optim4rl")
  n = 2**31 // spec.hidden_rows + 1000
  meta = rules.flatten_meta(optim4rl.init_meta_params(jax.random.key(0), spec.name), spec)
  g = rl_like_gradients(jax.random.key(1), n)
  h = jax.jit(lambda: 0.5 * jnp.sin(
      0.37 * jax.lax.broadcasted_iota(jnp.float32, (spec.hidden_rows, n), 0)
      + 1e-3 * jax.lax.broadcasted_iota(jnp.float32, (spec.hidden_rows, n), 1)))()
  # The end of P (row 15 of it lies past 2^31), both sides of the first block boundaries,
  # and spread indices.
  idx = jnp.asarray(np.unique(np.concatenate([
      np.arange(n - 300, n), np.arange(0, 70), np.linspace(0, n - 1, 500).astype(np.int64)])))
  d_dir = jnp.zeros((n,), jnp.float32).at[idx].set(jnp.cos(idx.astype(jnp.float32)))
  d_h_new = jnp.zeros((spec.hidden_rows, n), jnp.float32).at[:, idx].set(0.1)

  @jax.jit
  def run(meta, g, h, d_dir, d_h_new):
    (d, h_new), vjp = jax.vjp(lambda m, h: fused_step(spec, m, g, h, backend=backend), meta, h)
    d_meta, d_h = vjp((d_dir, d_h_new))
    untouched = jnp.max(jnp.abs(d_h.at[:, idx].set(0.0)))  # zero cotangent -> zero d_h
    return d[idx], h_new[:, idx], d_meta, d_h[:, idx], untouched
  d, h_new, d_meta, d_h, untouched = run(meta, g, h, d_dir, d_h_new)
  sub = lambda m, h: reference.step(spec, rules.unflatten_meta(m, spec), g[idx], h, 1.0)
  (want_d, want_h), vjp = jax.vjp(sub, meta, h[:, idx])
  want_meta, want_dh = vjp((d_dir[idx], d_h_new[:, idx]))
  assert rel_err(d, want_d) <= 1e-5 and rel_err(h_new, want_h) <= 1e-5
  assert rel_err(d_meta, want_meta) <= 1e-4 and rel_err(d_h, want_dh) <= 1e-4
  assert float(untouched) == 0.0


# ----------------------------------------------------------------------------- OPEN

@pytest.fixture(params=GPU_BACKENDS)
def open_backend(request):
  from optim4rl.backends import open_step as flat
  try:
    return flat.resolve_open_backend(request.param)
  except ValueError as e:
    pytest.fail(str(e))


@pytest.mark.parametrize("name", ["breakout", "multi"])
@pytest.mark.parametrize("sizes", [(5, 17, 1, 0, 64, 33, 1100), (10**6, 1000, 3)])
def test_open_step_matches_reference(open_backend, name, sizes):
  from open_cases import assert_kernel_matches, problem
  from optim4rl.backends import open_step as flat
  meta, args = problem(name, sizes=sizes)
  static = args[4]
  step = lambda b: jax.jit(lambda *a: flat.open_step(meta, *a[:4], static, *a[4:], backend=b))
  got, want = step(open_backend)(*args[:4], *args[5:]), step("reference")(*args[:4], *args[5:])
  assert_kernel_matches(got, want, static, f"{open_backend} {name}", momenta_ulp=None)
  again = step(open_backend)(*args[:4], *args[5:])
  for a, b in zip(got, again):  # no atomics: the same bits every time
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_open_population_under_vmap_with_traced_offsets(open_backend):
  """Evolution strategies: a population of meta-parameters stepped at once."""
  from open_cases import assert_kernel_matches, problem
  from optim4rl.backends import open_step as flat
  from optim4rl.rules import open as spec
  meta, args = problem("breakout", sizes=(4000, 64, 300))
  base = np.asarray(spec.flatten_open_meta(meta))
  rng = np.random.default_rng(0)
  metas = [spec.open_meta_from_flat(base + 0.05 * rng.standard_normal(base.size).astype(
      np.float32)) for _ in range(4)]
  population = jax.tree.map(lambda *x: jnp.stack(x), *metas)
  run = lambda b: jax.jit(jax.vmap(
      lambda m, seg: flat.open_step(m, *args[:4], seg, *args[5:], backend=b),
      in_axes=(0, None)))(population, jnp.asarray(args[4], jnp.int32))
  got, want = run(open_backend), run("reference")
  for i in range(4):
    assert_kernel_matches([x[i] for x in got], [x[i] for x in want], args[4], f"member {i}",
                          momenta_ulp=None)
