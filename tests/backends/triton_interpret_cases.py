"""The Triton kernels on the CPU: Triton's interpreter with torch tensors, against
optim4rl.rules.reference; and the JAX wiring of the "triton" backend, with jax_triton's launch
replaced by a host callback into the interpreted kernels.

Triton chooses between compiling and interpreting when a @triton.jit function is decorated,
its own library (tl.sum, ...) included, at `import triton`: these cases need a process that
had TRITON_INTERPRET=1 from the start. tests/backends/test_triton_interpret.py starts one; by hand:

  TRITON_INTERPRET=1 python -m pytest -q tests/backends/triton_interpret_cases.py
"""
import functools
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
  pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (see the docstring)",
              allow_module_level=True)
torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from optim4rl import rules  # noqa: E402
from optim4rl.backends import fused_step  # noqa: E402
from optim4rl.backends import triton_launch as triton_backend  # noqa: E402
from optim4rl.rules import reference  # noqa: E402
from optim4rl.kernels import step as kernels  # noqa: E402
from conftest import (RULE_NAMES, assert_matches, assert_same_bits,  # noqa: E402
                      assert_zeros_match, denormal_and_zero_gradients, random_problem,
                      scanned_meta_gradients, special_gradients)

# Small blocks so that small problems still span several blocks, several blocks per
# backward program, and two reduction passes (7 blocks of 16 for P = 100, 3 programs,
# rows 3 -> 2 -> 1).
SMALL = dict(forward_block=16, forward_warps=1, backward_block=16, backward_warps=1,
             backward_programs=3, reduce_rows=2, reduce_cols=32)


@pytest.fixture
def ks():
  from triton.runtime.interpreter import InterpretedFunction
  assert isinstance(kernels.forward_kernel, InterpretedFunction)
  return kernels


def torch_launch(kernel, grid, num_warps, args, out_shapes, **constexprs):
  """The plan's launch callback for numpy in, numpy out, through torch CPU tensors. Outputs
  start as NaN: an element a kernel fails to write shows up in the comparisons."""
  outs = [torch.full(s, float("nan"), dtype=torch.float32) for s in out_shapes]
  args = [torch.from_numpy(np.array(a, np.float32)) if isinstance(a, (np.ndarray, jax.Array))
          else float(a) if isinstance(a, np.floating) else a for a in args]
  kernel[grid](*args, *outs, num_warps=num_warps, **constexprs)
  return tuple(o.numpy() for o in outs)


def _reference_vjp(spec, meta, g, h, d_dir, d_h_new, clip=1.0):
  f = lambda m, h: reference.step(spec, rules.unflatten_meta(m, spec), g, h, clip)
  (d, h_new), vjp = jax.vjp(f, meta, h)
  return d, h_new, *vjp((d_dir, d_h_new))


def _cotangents(n, rows, seed=0):
  k1, k2 = jax.random.split(jax.random.key(100 + seed))
  return jax.random.normal(k1, (n,)), 0.5 * jax.random.normal(k2, (rows, n))


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("n", [1, 37, 100])
def test_forward_and_backward_match_reference(ks, rule, n):
  spec, meta, g, h = random_problem(rule, n, seed=n)
  d_dir, d_h_new = _cotangents(n, spec.hidden_rows, seed=n)
  want_d, want_h, want_dmeta, want_dh = _reference_vjp(spec, meta, g, h, d_dir, d_h_new)
  cfg = ks.Config(**SMALL)
  args = [np.asarray(x)[None] for x in (meta, g, h)]
  d, h_new = ks.forward(torch_launch, spec, *args, 1.0, 1, n, cfg)
  assert_matches(d[0], want_d, 1e-5, "direction")
  assert_matches(h_new[0], want_h, 1e-5, "hidden state")
  d_meta, d_h = ks.backward(torch_launch, spec, *args, np.asarray(d_dir)[None],
                            np.asarray(d_h_new)[None], 1.0, 1, n, cfg)
  assert np.any(d_meta != 0)
  assert_matches(d_meta[0], want_dmeta, 1e-4, "meta-gradient")
  assert_matches(d_h[0], want_dh, 1e-4, "hidden-state gradient")


@pytest.mark.parametrize("rule", ["optim4rl", "linear_optim"])
def test_default_config_and_batch_of_different_problems(ks, rule):
  """The production block sizes, and B = 2 problems with their own meta-parameters."""
  n = 150
  problems = [random_problem(rule, n, seed=s) for s in (1, 2)]
  spec = problems[0][0]
  cots = [_cotangents(n, spec.hidden_rows, seed=s) for s in (1, 2)]
  stack = lambda xs: np.stack([np.asarray(x) for x in xs])
  meta, g, h = (stack([p[i] for p in problems]) for i in (1, 2, 3))
  d_dir, d_h_new = stack([c[0] for c in cots]), stack([c[1] for c in cots])
  d, h_new = ks.forward(torch_launch, spec, meta, g, h, 1.0, 2, n)
  d_meta, d_h = ks.backward(torch_launch, spec, meta, g, h, d_dir, d_h_new, 1.0, 2, n)
  for b in range(2):
    want = _reference_vjp(spec, meta[b], g[b], h[b], d_dir[b], d_h_new[b])
    assert_matches(d[b], want[0], 1e-5, "direction")
    assert_matches(h_new[b], want[1], 1e-5, "hidden state")
    assert_matches(d_meta[b], want[2], 1e-4, "meta-gradient")
    assert_matches(d_h[b], want[3], 1e-4, "hidden-state gradient")


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_special_gradient_values_behave_as_reference(ks, rule):
  spec, meta, _, h = random_problem(rule, 12, seed=5)
  g = special_gradients()
  for clip in (1.0, 0.0):
    want = reference.step(spec, rules.unflatten_meta(meta, spec), g, h, clip)
    got = ks.forward(torch_launch, spec, *[np.asarray(x)[None] for x in (meta, g, h)], clip, 1,
                     12, ks.Config(**SMALL))
    assert_matches(got[0][0], want[0], 1e-5, "direction")
    assert_matches(got[1][0], want[1], 1e-5, "hidden state")
    assert_zeros_match(got[0][0], want[0], "direction")
  if rule in ("optim4rl", "optim4rl_public", "l2lgd2"):  # zero gradient: zero update
    assert got[0][0, 0] == 0.0


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_denormal_gradients_step_as_zeros_of_their_sign(ks, rule):
  """The denormal policy (reference.flush_denormal), in plain IEEE floats (the interpreter
  keeps denormals): forward and backward bit for bit those of signed zero gradients, and
  as the reference."""
  g_denormal, g_zero = denormal_and_zero_gradients()
  n = g_zero.shape[0]
  spec, meta, _, h = random_problem(rule, n, seed=11)
  d_dir, d_h_new = _cotangents(n, spec.hidden_rows, seed=11)
  cfg = ks.Config(**SMALL)
  for clip in (1.0, 0.0):
    def run(g):
      args = [np.asarray(x)[None] for x in (meta, g, h)]
      fwd = ks.forward(torch_launch, spec, *args, clip, 1, n, cfg)
      bwd = ks.backward(torch_launch, spec, *args, np.asarray(d_dir)[None],
                        np.asarray(d_h_new)[None], clip, 1, n, cfg)
      return [x[0] for x in fwd + bwd]
    got, zero = run(g_denormal), run(g_zero)
    for name, a, b in zip(("direction", "h_new", "d_meta", "d_h"), got, zero):
      assert_same_bits(a, b, name)
    want = _reference_vjp(spec, meta, g_denormal, h, d_dir, d_h_new, clip)
    assert_matches(got[0], want[0], 1e-5, "direction")
    assert_matches(got[1], want[1], 1e-5, "hidden state")
    assert_zeros_match(got[0], want[0], "direction")
    assert_matches(got[2], want[2], 1e-4, "meta-gradient")
    assert_matches(got[3], want[3], 1e-4, "hidden-state gradient")


# ----------------------------------------------------------------------------- JAX wiring

def callback_launch(kernel, grid, num_warps, args, out_shapes, **constexprs):
  """Stands in for jax_triton.triton_call: same arguments, run on the host in the
  interpreter. jax.pure_callback has no vmap rule here, so vmap must go through the
  backend's custom_vmap (as jax_triton's primitive, which has none either)."""
  scalar = lambda a: isinstance(a, (int, float, np.floating))
  arrays = [a for a in args if not scalar(a)]

  def host(*values):
    values = iter(values)
    return torch_launch(kernel, grid, num_warps,
                        [a if scalar(a) else np.asarray(next(values)) for a in args],
                        out_shapes, **constexprs)
  shapes = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes)
  return jax.pure_callback(host, shapes, *arrays)


@pytest.fixture
def triton_on_cpu(ks, monkeypatch):
  """backend="triton" runs here: CPU stand-in launch, small blocks, and the optax API's
  backend resolution lets "triton" through (off GPU it refuses it)."""
  from optim4rl import transforms as transform
  cfg = ks.Config(**SMALL)
  kernels = types.SimpleNamespace(forward=functools.partial(ks.forward, config=cfg),
                                  backward=functools.partial(ks.backward, config=cfg))
  monkeypatch.setattr(triton_backend, "_kernels", lambda: kernels)
  monkeypatch.setattr(triton_backend, "_launch", callback_launch)
  resolve = transform.resolve_backend
  monkeypatch.setattr(transform, "resolve_backend", lambda b: b if b == "triton" else resolve(b))
  triton_backend._forward_op.cache_clear()
  triton_backend._backward_op.cache_clear()
  yield
  triton_backend._forward_op.cache_clear()
  triton_backend._backward_op.cache_clear()


def test_jit_vmap_and_nested_vmap(triton_on_cpu):
  problems = [random_problem("optim4rl", 40, seed=s) for s in range(3)]
  spec = problems[0][0]
  metas, gs, hs = (jnp.stack([p[i] for p in problems]) for i in (1, 2, 3))
  step = lambda backend: lambda m, g, h: fused_step(spec, m, g, h, backend=backend)
  cases = [((0, 0, 0), (metas, gs, hs)),      # a batch of problems
           ((None, 0, 0), (metas[0], gs, hs)),  # shared meta-parameters
           ((0, None, 0), (metas, gs[0], hs))]  # shared gradients
  for in_axes, args in cases:
    got = jax.jit(jax.vmap(step("triton"), in_axes=in_axes))(*args)
    want = jax.vmap(step("reference"), in_axes=in_axes)(*args)
    assert_matches(got[0], want[0], 1e-5, f"direction, in_axes={in_axes}")
    assert_matches(got[1], want[1], 1e-5, f"hidden state, in_axes={in_axes}")
  nested = jax.jit(jax.vmap(jax.vmap(step("triton"), in_axes=(None, 0, 0))))
  got = nested(metas, gs.reshape(3, 1, 40), hs.reshape(3, 1, *hs.shape[1:]))
  want = jax.vmap(step("reference"))(metas, gs, hs)
  assert_matches(got[0].reshape(3, 40), want[0], 1e-5, "nested vmap: direction")
  assert_matches(got[1].reshape(hs.shape), want[1], 1e-5, "nested vmap: hidden state")


def test_grad_of_vmapped_loss_and_of_hidden_state(triton_on_cpu):
  spec, meta, g, h = random_problem("l2lgd2", 30, seed=8)
  gs = jnp.stack([g, -0.5 * g])
  hs = jnp.stack([h, 0.3 * h])

  def loss(meta, hs, backend):
    d, h_new = jax.vmap(lambda g, h: fused_step(spec, meta, g, h, backend=backend))(gs, hs)
    return jnp.sum(jnp.cos(jnp.arange(30.0)) * d) + 0.3 * jnp.sum(jnp.sin(h_new))
  got = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(meta, hs, "triton")
  want = jax.grad(loss, argnums=(0, 1))(meta, hs, "reference")
  assert_matches(got[0], want[0], 1e-4, "meta-gradient")
  assert_matches(got[1], want[1], 1e-4, "hidden-state gradient")


@pytest.mark.parametrize("rule", ["optim4rl", "linear_optim"])
def test_grad_through_four_scanned_updates(triton_on_cpu, rule):
  """The meta-gradient path through the optax API, as in test_fused.py."""
  got, want, flat = scanned_meta_gradients(rule, "triton", size=24)
  assert np.any(np.asarray(flat(want)) != 0)
  assert_matches(flat(got), flat(want), 1e-4, "meta-gradient")


def test_empty_problem_skips_the_kernels(triton_on_cpu):
  spec, meta, _, _ = random_problem("optim4rl", 1)
  g, h = jnp.zeros((0,), jnp.float32), jnp.zeros((16, 0), jnp.float32)
  d, h_new = fused_step(spec, meta, g, h, backend="triton")
  assert d.shape == (0,) and h_new.shape == (16, 0)
  grad = jax.grad(lambda m: jnp.sum(fused_step(spec, m, g, h, backend="triton")[0]))(meta)
  assert grad.shape == meta.shape and not np.any(np.asarray(grad))
