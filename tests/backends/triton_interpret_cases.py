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
  tensor = lambda a: torch.from_numpy(np.ascontiguousarray(  # a copy: kernels write nothing in
      a, np.int32 if np.asarray(a).dtype == np.int32 else np.float32).copy())
  args = [tensor(a) if isinstance(a, (np.ndarray, jax.Array))
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



# ----------------------------------------------------------------------------- OPEN

@pytest.fixture
def open_ks():
  from triton.runtime.interpreter import InterpretedFunction
  from optim4rl.kernels import open_step as kernels
  assert isinstance(kernels.network_kernel, InterpretedFunction)
  return kernels


# open_cases.SIZES with a last tensor of 100 instead of 1100: the interpreter runs one
# program at a time, and 7 chunks of a tensor cross its chunk boundaries as 69 do.
INTERPRETER_SIZES = (5, 17, 1, 0, 64, 33, 100)


def _open_plan(name, seeds, block):
  """A batch of OPEN problems (one per seed, the same tensor sizes) and its chunk plan."""
  from open_cases import problem
  from optim4rl.backends import open_step as flat
  problems = [problem(name, sizes=INTERPRETER_SIZES, seed=s) for s in seeds]
  metas = [m for m, _ in problems]
  args = [np.stack([np.asarray(a[i]) for _, a in problems]) for i in range(11)]
  seg = jnp.asarray(args[4][0], jnp.int32)
  plan = flat.chunk_plan(seg, args[0].shape[1], block)
  return problems, metas, args, seg, plan


@pytest.mark.parametrize("name", ["breakout", "multi"])
def test_open_kernels_match_reference(open_ks, name):
  """Both launches through the interpreter, a batch of two problems, chunks of 16."""
  from open_cases import assert_kernel_matches
  from optim4rl.backends import open_step as flat
  from optim4rl.rules import open as spec
  cfg = open_ks.OpenConfig(block=16)
  problems, metas, args, seg, plan = _open_plan(name, (0, 1), cfg.block)
  p, g, m, c, _, layer, actor, dorm, noise, training, batch = args
  start, length, tensor = (np.broadcast_to(np.asarray(x), (2, x.shape[0])) for x in plan)
  n, chunks, tensors = p.shape[1], start.shape[1], layer.shape[1]
  m_new, partials = open_ks.moments(torch_launch, p, g, m, start, length, 2, n, chunks, cfg)
  inv = np.stack([flat.tensor_inv_rms(jnp.asarray(x), plan[2], seg) for x in partials])
  net = spec.net_of(metas[0])
  flat_meta = np.stack([np.asarray(spec.flatten_open_meta(mt)) for mt in metas])
  u, c_new = open_ks.network(torch_launch, flat_meta, p, g, m_new, c, dorm, noise, start, length,
                        tensor, inv, layer, actor, training, batch, hidden=net.hidden,
                        width=net.width, batch=2, params=n, chunks=chunks, tensors=tensors,
                        config=cfg)
  static = np.asarray(seg)
  for b, (meta, a) in enumerate(problems):
    want = jax.jit(lambda *a: flat.open_step(meta, *a[:4], static, *a[4:],
                                             backend="reference"))(*a[:4], *a[5:])
    assert_kernel_matches((u[b], m_new[b], c_new[b]), want, static, f"{name}, entry {b}")


@pytest.fixture
def open_triton_on_cpu(open_ks, monkeypatch):
  """backend="triton" runs OPEN here: the CPU stand-in launch, chunks of 16."""
  from optim4rl.backends import open_step as flat
  cfg = open_ks.OpenConfig(block=16)
  kernels = types.SimpleNamespace(moments=open_ks.moments, network=open_ks.network,
                                  DEFAULT_OPEN_CONFIG=cfg)
  monkeypatch.setattr(triton_backend, "_kernels", lambda: kernels)
  monkeypatch.setattr(triton_backend, "_launch", callback_launch)
  monkeypatch.setitem(flat.PROBLEMS, "triton", lambda platform=None: None)
  for op in (triton_backend._open_moments_op, triton_backend._open_network_op):
    op.cache_clear()
  yield flat
  for op in (triton_backend._open_moments_op, triton_backend._open_network_op):
    op.cache_clear()


def test_open_backend_under_jit_vmap_and_traced_offsets(open_triton_on_cpu):
  from open_cases import assert_kernel_matches
  flat = open_triton_on_cpu
  problems, metas, args, seg, _ = _open_plan("breakout", (0, 1, 2), 16)
  meta, static = metas[0], np.asarray(seg)
  step = lambda backend: lambda p, g, m, c, s, *rest: flat.open_step(
      meta, p, g, m, c, s, *rest, backend=backend)
  segs = np.broadcast_to(static, (3, static.size))
  got = jax.jit(jax.vmap(step("triton")))(*args[:4], segs, *args[5:])
  want = jax.jit(jax.vmap(step("reference")))(*args[:4], segs, *args[5:])
  for b in range(3):
    assert_kernel_matches(tuple(x[b] for x in got), tuple(x[b] for x in want), static,
                          f"vmap entry {b}, traced offsets")
  one = [a[0] for a in args]
  got = jax.jit(lambda *a: flat.open_step(meta, *a[:4], static, *a[4:], backend="triton"))(
      *one[:4], *one[5:])
  want = jax.jit(lambda *a: flat.open_step(meta, *a[:4], static, *a[4:],
                                           backend="reference"))(*one[:4], *one[5:])
  assert_kernel_matches(got, want, static, "static offsets")


def test_open_optimizer_on_the_triton_backend(open_triton_on_cpu):
  """The optax transform: an actor-critic tree, two updates, the same as the reference."""
  from optim4rl.open_optimizer import OpenPlan, open_optimizer
  from optim4rl.rules import open as spec
  meta = spec.pretrained_open("breakout")
  dense = lambda n_in, n_out, lo: {"kernel": jnp.linspace(lo, 1, n_in * n_out).reshape(
      n_in, n_out), "bias": jnp.full((n_out,), 0.1)}
  params = {"actor": {"Dense_0": dense(8, 5, -1.0), "Dense_1": dense(5, 4, 0.5)},
            "critic": {"Dense_0": dense(8, 3, -0.5)}}
  acts = jax.tree.map(lambda d: jnp.abs(jnp.cos(jnp.arange(d["bias"].shape[0], dtype=jnp.float32))),
                      params, is_leaf=lambda x: isinstance(x, dict) and "bias" in x)
  plan = OpenPlan(minibatches=2, epochs=2, updates=10)

  def two_updates(backend):
    tx = open_optimizer(meta, plan=plan, backend=backend)
    state, p, out = tx.init(params), params, []
    for i in range(2):
      grads = jax.tree.map(lambda x: jnp.sin(3.0 * x + i), p)
      u, state = tx.update(grads, state, p, activations=acts, key=jax.random.key(i))
      p = jax.tree.map(jnp.add, p, u)
      out.append(u)
    return out
  for got, want in zip(two_updates("triton"), two_updates("reference")):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                 atol=1e-6 * float(np.max(np.abs(np.asarray(b)))))
