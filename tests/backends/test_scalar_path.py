"""The CUDA backend's per-element code path without a GPU: Step<float, ScalarMath, RULE> of
csrc/optim4rl_math.h + csrc/scalar_math.h (exactly what cuda_ffi.cu runs per thread),
compiled for the host by scalar_step.cc, against the reference: forward, VJP, special
gradient values and the denormal policy. Plain IEEE floats here, no denormals-are-zero mode:
this is where the header's explicit flush_denormal is what makes denormals step as zeros
(the CPU backend runs with DAZ, which would hide its absence)."""
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim4rl import rules
from optim4rl.rules import reference
from conftest import (RULE_NAMES, assert_close, assert_same_bits, assert_zeros_match,
                      denormal_and_zero_gradients, random_problem, rel_err, special_gradients)

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "csrc")


def build_driver(tmp_path_factory, name: str) -> str:
  """Path of the compiled driver tests/backends/NAME.cc. A C++ compiler is required: the CPU
  library needs one."""
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    pytest.fail("no C++ compiler (g++/c++ or $CXX) to build the scalar path")
  exe = str(tmp_path_factory.mktemp(name) / name)
  # -fno-fast-math and no -march: IEEE float semantics, denormals kept.
  out = subprocess.run([cxx, "-std=c++17", "-O1", "-fno-fast-math", "-I", CSRC,
                        os.path.join(HERE, f"{name}.cc"), "-o", exe],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return exe


@pytest.fixture(scope="module")
def scalar_step(tmp_path_factory):
  return build_driver(tmp_path_factory, "scalar_step")


def run_scalar(exe, tmp_path, spec, meta, g, h, d_dir, d_h_new, clip=1.0):
  """(direction, h_new, d_meta, d_h) of the scalar path."""
  n, rows, k = g.shape[0], spec.hidden_rows, spec.meta_size
  src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
  with open(src, "wb") as f:
    f.write(np.int32(spec.kernel_id).tobytes() + np.float32(clip).tobytes()
            + np.int64(n).tobytes())
    for x in (meta, g, h, d_dir, d_h_new):
      f.write(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes())
  out = subprocess.run([exe, str(src), str(dst)], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, (out.returncode, out.stderr)
  flat = np.fromfile(dst, np.float32)
  sizes = np.cumsum([n, rows * n, k])
  d, h_new, d_meta, d_h = np.split(flat, sizes)
  return d, h_new.reshape(rows, n), d_meta, d_h.reshape(rows, n)


def reference_vjp(spec, meta, g, h, d_dir, d_h_new, clip=1.0):
  f = lambda m, h: reference.step(spec, rules.unflatten_meta(m, spec), g, h, clip)
  (d, h_new), vjp = jax.vjp(f, meta, h)
  return (d, h_new, *vjp((d_dir, d_h_new)))


def cotangents(n, rows, seed=0):
  k1, k2 = jax.random.split(jax.random.key(100 + seed))
  return jax.random.normal(k1, (n,)), 0.5 * jax.random.normal(k2, (rows, n))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_forward_and_vjp_match_reference(scalar_step, tmp_path, rule):
  n = 300
  spec, meta, g, h = random_problem(rule, n, seed=3)
  d_dir, d_h_new = cotangents(n, spec.hidden_rows, seed=3)
  got = run_scalar(scalar_step, tmp_path, spec, meta, g, h, d_dir, d_h_new)
  want = reference_vjp(spec, meta, g, h, d_dir, d_h_new)
  for name, a, b in zip(("direction", "h_new"), got[:2], want[:2]):
    assert rel_err(a, b) <= 1e-5, name
    assert_close(a, b, rtol=1e-4, atol=1e-6 * float(np.max(np.abs(b))), what=name)
  for name, a, b in zip(("d_meta", "d_h"), got[2:], want[2:]):
    assert rel_err(a, b) <= 1e-4, name


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_special_and_denormal_gradients(scalar_step, tmp_path, rule, clip):
  """Special values as the reference; denormal gradients bit for bit as zeros of their
  sign, forward and backward."""
  g_denormal, g_zero = denormal_and_zero_gradients()
  g_special = special_gradients()
  for g in (g_special, g_denormal):
    spec, meta, _, h = random_problem(rule, g.shape[0], seed=5)
    d_dir, d_h_new = cotangents(g.shape[0], spec.hidden_rows, seed=5)
    got = run_scalar(scalar_step, tmp_path, spec, meta, g, h, d_dir, d_h_new, clip)
    want = reference_vjp(spec, meta, g, h, d_dir, d_h_new, clip)
    assert rel_err(got[0], want[0]) <= 1e-5 and rel_err(got[1], want[1]) <= 1e-5
    assert_zeros_match(got[0], want[0], "direction")
  zero = run_scalar(scalar_step, tmp_path, spec, meta, g_zero, h, d_dir, d_h_new, clip)
  for name, a, b in zip(("direction", "h_new", "d_meta", "d_h"), got, zero):
    assert_same_bits(a, b, name)


# ----------------------------------------------------------------------------- OPEN

@pytest.fixture(scope="module")
def open_scalar_step(tmp_path_factory):
  """The host build of the CUDA backend's OPEN functions (open_scalar_step.cc)."""
  return build_driver(tmp_path_factory, "open_scalar_step")


def _run_open(exe, tmp_path, mode, header, arrays, sizes):
  """Run one stage; header: (numpy scalars), arrays: written in order; returns the outputs
  split by `sizes`."""
  src, dst = tmp_path / f"{mode}.in", tmp_path / f"{mode}.out"
  with open(src, "wb") as f:
    for x in header:
      f.write(x.tobytes())
    for x in arrays:
      x = np.asarray(x)
      f.write(np.ascontiguousarray(x, np.int32 if x.dtype == np.int32 else np.float32).tobytes())
  out = subprocess.run([exe, mode, str(src), str(dst)], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, (out.returncode, out.stderr)
  return np.split(np.fromfile(dst, np.float32), np.cumsum(sizes)[:-1])


def open_host_stages(exe, tmp_path):
  """The GPU plan's stages (optim4rl/backends/open_step.py: Stages) run by the host build,
  one batch entry, outside jit."""
  from optim4rl.backends import open_step as flat

  def moments(p, g, momenta, start, length, block):
    n, c = p.shape[0], start.shape[0]
    m, partials = _run_open(exe, tmp_path, "moments", (np.int64(n), np.int64(c)),
                            (p, g, momenta, start, length), (6 * n, 16 * c))
    return m.reshape(6, n), partials.reshape(c, 16)

  def network(meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor, inv_rms,
              layer, actor, training, batch, hidden, width, block):
    n, c, t = p.shape[0], start.shape[0], layer.shape[0]
    u, carry_new = _run_open(
        exe, tmp_path, "network",
        (np.int32(hidden), np.int32(width), np.int64(n), np.int64(c), np.int64(t)),
        (meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor, inv_rms, layer,
         actor, training, batch), (n, hidden * n))
    return u, carry_new.reshape(hidden, n)
  return flat.Stages(lambda: flat.CUDA_BLOCK, moments, network)


@pytest.mark.parametrize("name", ["breakout", "multi"])
@pytest.mark.parametrize("block", [128, 16])  # CUDA's chunks; small ones: many per tensor
def test_open_gpu_plan_matches_reference(open_scalar_step, tmp_path, name, block):
  from open_cases import assert_kernel_matches, problem
  from optim4rl.backends import open_step as flat
  from optim4rl.rules import open as spec
  meta, args = problem(name)
  stages = open_host_stages(open_scalar_step, tmp_path)._replace(block=lambda: block)
  seg = jnp.asarray(args[4], jnp.int32)
  got = flat.staged(stages, spec.net_of(meta), spec.flatten_open_meta(meta), *args[:4], seg,
                    *args[5:], checked=True)
  static = args[4]
  want = jax.jit(lambda *a: flat.open_step(meta, *a[:4], static, *a[4:],
                                           backend="reference"))(*args[:4], *args[5:])
  assert_kernel_matches(got, want, static, name)


def test_open_gpu_plan_refuses_bad_traced_offsets(open_scalar_step, tmp_path):
  """Offsets only known when the step runs cannot raise; decreasing ones give NaN updates."""
  from open_cases import problem
  from optim4rl.backends import open_step as flat
  from optim4rl.rules import open as spec
  meta, args = problem("breakout", sizes=(5, 17, 9))
  stages = open_host_stages(open_scalar_step, tmp_path)
  bad = jnp.asarray([0, 20, 17, 31], jnp.int32)
  u, _, _ = flat.staged(stages, spec.net_of(meta), spec.flatten_open_meta(meta), *args[:4],
                        bad, *args[5:], checked=False)
  assert np.all(np.isnan(u))
