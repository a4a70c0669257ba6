"""OPEN's flat step: the fused C++ kernel against the pure-JAX reference, the reference against
the specification's tensor_step tensor by tensor, traced offsets, vmap, the optax transform
on either backend, and clear errors for wrong input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim4rl.backends import open_step as flat
from optim4rl.open_optimizer import OpenPlan, open_optimizer
from optim4rl.rules import open as spec
from conftest import rel_err
from open_cases import NETS, SIZES, assert_kernel_matches, problem



@pytest.fixture(scope="module", autouse=True)
def cpu_kernel():
  """The kernel is required on a CPU host (never a vacuous pass); other platforms skip."""
  if jax.default_backend() != "cpu":
    pytest.skip("the OPEN kernel runs on CPU")
  why = flat.cpu_problem()
  if why is not None:
    pytest.fail(f"OPEN's cpu backend cannot run: {why}")


def run(backend, meta, args, traced_segments=False):
  """open_step under jit; the offsets are a constant unless traced_segments."""
  if traced_segments:
    return jax.jit(lambda meta, *a: flat.open_step(meta, *a, backend=backend))(meta, *args)
  static = args[4]
  step = lambda meta, *a: flat.open_step(meta, *a[:4], static, *a[4:], backend=backend)
  return jax.jit(step)(meta, *args[:4], *args[5:])


@pytest.mark.parametrize("name", NETS)
def test_cpu_matches_reference(name):
  meta, args = problem(name)
  got, want = run("cpu", meta, args), run("reference", meta, args)
  assert got[0].shape == (sum(SIZES),) and got[2].shape == args[3].shape
  assert_kernel_matches(got, want, args[4], name)


def test_critic_ignores_noise_and_actor_uses_it():
  meta, args = problem("breakout")
  noisy = list(args)
  noisy[8] = args[8].at[:].set(jnp.nan)  # read anywhere: NaN there
  actor_only = jnp.repeat(args[6], np.diff(args[4]), total_repeat_length=sum(SIZES)) > 0
  for backend in ("reference", "cpu"):
    u = np.asarray(run(backend, meta, noisy)[0])
    assert np.all(np.isnan(u[actor_only])) and np.all(np.isfinite(u[~actor_only])), backend


def test_reference_is_the_specification_tensor_by_tensor():
  meta, (p, g, m, c, segments, layer, actor, dormancy, noise, training, batch) = problem(
      "multi", sizes=(33, 0, 1, 130))
  u, m_new, c_new = run("reference", meta, (p, g, m, c, segments, layer, actor, dormancy,
                                             noise, training, batch))
  tensor_step = jax.jit(spec.tensor_step, static_argnames="actor")
  for t, (s, e) in enumerate(zip(segments[:-1], segments[1:])):
    if e == s:
      continue
    want = tensor_step(meta, p[s:e], g[s:e], m[:, s:e], c[:, s:e].T, training=training,
                       layer=layer[t], batch=batch, dormancy=dormancy[s:e], noise=noise[s:e],
                       actor=bool(actor[t]))
    for got_x, want_x in zip((u[s:e], m_new[:, s:e], c_new[:, s:e].T), want):
      assert rel_err(got_x, want_x) <= 1e-6, t


def test_traced_segments_match_static_ones():
  """Offsets known only at run time: the reference's segment sums keep a large tensor's mean
  as accurate as the static path's reduction."""
  meta, args = problem("breakout", sizes=(5, 17, 0, 150000))
  for backend in ("reference", "cpu"):
    got, want = run(backend, meta, args, traced_segments=True), run(backend, meta, args)
    for a, b in zip(got, want):
      assert rel_err(a, b) <= 1e-6, backend


def test_vmap_over_a_batch_of_optimizers():
  """Evolution strategies: a population of meta-parameters, each with its own state."""
  meta, args = problem("breakout", sizes=(40, 3, 21))
  flat_meta = spec.flatten_open_meta(meta)
  rng = np.random.default_rng(0)
  metas = [spec.open_meta_from_flat(np.asarray(flat_meta) + 0.05 * rng.standard_normal(
      flat_meta.size).astype(np.float32)) for _ in range(3)]
  batched_meta = jax.tree.map(lambda *x: jnp.stack(x), *metas)
  carries = jnp.stack([args[3] * (1 + i) for i in range(3)])
  batched = lambda backend: jax.jit(jax.vmap(  # the offsets (args[4]) are a constant here
      lambda mt, c: flat.open_step(mt, *args[:3], c, *args[4:], backend=backend)))
  got = batched("cpu")(batched_meta, carries)
  want = batched("reference")(batched_meta, carries)
  for i in range(3):
    one = run("cpu", metas[i], (*args[:3], carries[i], *args[4:]))
    for a, b in zip(got, one):  # the kernel steps the batch entries one by one
      np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b))
    assert_kernel_matches([x[i] for x in got], [x[i] for x in want], args[4], f"member {i}")


def test_nothing_to_step():
  meta, args = problem("breakout", sizes=(0,))
  for backend in ("reference", "cpu"):
    u, m, c = run(backend, meta, args)
    assert u.shape == (0,) and m.shape == (6, 0) and c.shape == (8, 0)


def tree():
  k = iter(jax.random.split(jax.random.key(3), 16))
  dense = lambda i, o: {"kernel": jax.random.normal(next(k), (i, o)),
                        "bias": 0.1 * jax.random.normal(next(k), (o,))}
  return {"actor": {"Dense_0": dense(6, 21), "log_std": jnp.zeros(())},
          "critic": {"Dense_0": dense(6, 1)}}


def activations(step):
  k = jax.random.key(100 + step)
  units = {"actor": {"Dense_0": 21, "log_std": 1}, "critic": {"Dense_0": 1}}
  return {net: {layer: jnp.abs(jax.random.normal(jax.random.fold_in(k, 10 * i + j), (n,)))
                for j, (layer, n) in enumerate(layers.items())}
          for i, (net, layers) in enumerate(units.items())}


@pytest.mark.parametrize("name", NETS)
def test_optimizer_on_cpu_matches_the_per_tensor_reference(name):
  meta, plan = spec.pretrained_open(name), OpenPlan(minibatches=2, epochs=2, updates=3)
  runs = {}
  for backend in ("reference", "cpu"):
    tx = open_optimizer(meta, plan=plan, backend=backend)
    update, params = jax.jit(tx.update), tree()
    state, out = tx.init(params), []
    for i in range(3):
      grads = jax.tree.map(lambda x, i=i: 0.01 * (1 + i) * jax.random.normal(
          jax.random.key(i), jnp.shape(x)), params)
      updates, state = update(grads, state, params, activations=activations(i),
                              key=jax.random.key(50 + i))
      params = jax.tree.map(jnp.add, params, updates)
      out.append((updates, state))
    runs[backend] = out
  for (u, s), (u0, s0) in zip(runs["cpu"], runs["reference"]):
    assert jax.tree.structure(s) == jax.tree.structure(s0)
    assert rel_err(u, u0) <= 1e-5 and rel_err(s.carry, s0.carry) <= 1e-5
    assert rel_err(s.momenta, s0.momenta) <= 1e-6 and int(s.count) == int(s0.count)


def test_default_backend_is_the_kernel_here():
  assert flat.resolve_open_backend(None) == "cpu"
  # On GPUs the CUDA kernels where built with them (nvcc here), else Triton, else reference.
  gpu = "cuda" if flat.cuda_problem("gpu") is None else (
      "triton" if flat.triton_problem("gpu") is None else "reference")
  assert flat.resolve_open_backend(None, platform="gpu") == gpu
  if flat.registry.cuda_library() is not None:
    assert gpu == "cuda"
  assert flat.resolve_open_backend(None, platform="tpu") == "reference"


def test_wrong_inputs_are_clear_errors():
  meta, args = problem("breakout", sizes=(5, 3))
  call = lambda *a, backend="cpu": flat.open_step(meta, *a, backend=backend)
  with pytest.raises(ValueError, match="unknown backend 'gpu'"):
    call(*args, backend="gpu")
  with pytest.raises(ValueError, match="cannot run here"):
    flat.resolve_open_backend("cpu", platform="gpu")
  with pytest.raises(TypeError, match="gradients must be float32"):
    call(args[0], args[1].astype(jnp.bfloat16), *args[2:])
  with pytest.raises(ValueError, match=r"carry must have shape \(8, 8\)"):
    call(*args[:3], jnp.zeros((16, 8)), *args[4:])
  with pytest.raises(ValueError, match=r"actor flags must have shape \(2,\)"):
    call(*args[:6], jnp.ones(3), *args[7:])
  with pytest.raises(ValueError, match="rise from 0 to P = 8"):
    call(*args[:4], np.array([0, 6, 5], np.int32), *args[5:])
  with pytest.raises(ValueError, match="rise from 0 to P = 8"):
    call(*args[:4], np.array([0, 5, 9], np.int32), *args[5:])
  with pytest.raises(ValueError, match="integer vector"):
    call(*args[:4], np.array([0.0, 5.0, 8.0]), *args[5:])
  with pytest.raises(TypeError, match="traced segments must be int32"):
    jax.jit(lambda s: call(*args[:4], s, *args[5:]))(jnp.array([0.0, 5.0, 8.0]))
  with pytest.raises(Exception, match="segments must run from 0 to P"):  # checked when run
    jax.jit(lambda s: call(*args[:4], s, *args[5:]))(jnp.array([0, 5, 7], jnp.int32))
  with pytest.raises(ValueError, match="OpenMeta"):
    flat.open_step(spec.OpenMeta(meta.gru, {}), *args, backend="cpu")
  with pytest.raises(ValueError, match="unknown backend"):
    open_optimizer(meta, plan=OpenPlan(1, 1, 1), backend="tpu")


@pytest.mark.skipif(flat.registry.cuda_library() is None,
                    reason="CUDA library not built (no nvcc at install time)")
@pytest.mark.parametrize("name", NETS)
def test_cuda_stages_lower_for_cuda(name):
  """The cuda backend's two launches become its FFI custom calls, with the network's sizes and
  the chunk size, when lowered for CUDA (no GPU needed), under vmap too."""
  meta, args = problem(name, sizes=(5, 17, 300))
  net = spec.net_of(meta)
  step = lambda flat_meta, carry: flat.staged(
      flat.GPU_STAGES["cuda"], net, flat_meta, *args[:3], carry,
      jnp.asarray(args[4], jnp.int32), *args[5:], checked=True)
  flat_meta = spec.flatten_open_meta(meta)
  for f, carry in ((step, args[3]), (jax.vmap(step), jnp.stack([args[3]] * 2))):
    text = jax.jit(f).trace(flat_meta if f is step else jnp.stack([flat_meta] * 2),
                            carry).lower(lowering_platforms=("cuda",)).as_text()
    assert "optim4rl_cuda_open_moments" in text and "optim4rl_cuda_open_network" in text
    assert f"hidden = {net.hidden} : i32" in text and f"width = {net.width} : i32" in text
    assert f"block = {flat.CUDA_BLOCK} : i32" in text


def test_gpu_backends_are_refused_off_gpu_with_a_clear_error():
  meta, args = problem("breakout", sizes=(5,))
  for backend in ("cuda", "triton"):
    with pytest.raises(ValueError, match=f"'{backend}' cannot run here: .*GPU"):
      flat.open_step(meta, *args, backend=backend)
    with pytest.raises(ValueError, match=f"'{backend}' cannot run here"):
      open_optimizer(meta, plan=OpenPlan(1, 1, 1), backend=backend)
