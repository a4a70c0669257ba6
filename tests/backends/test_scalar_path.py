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
import numpy as np
import pytest

from optim4rl import rules
from optim4rl.rules import reference
from conftest import (RULE_NAMES, assert_close, assert_same_bits, assert_zeros_match,
                      denormal_and_zero_gradients, random_problem, rel_err, special_gradients)

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "csrc")


@pytest.fixture(scope="module")
def scalar_step(tmp_path_factory):
  """Path of the compiled driver. A C++ compiler is required: the CPU library needs one."""
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if cxx is None:
    pytest.fail("no C++ compiler (g++/c++ or $CXX) to build the scalar path")
  exe = str(tmp_path_factory.mktemp("scalar") / "scalar_step")
  # -fno-fast-math and no -march: IEEE float semantics, denormals kept.
  out = subprocess.run([cxx, "-std=c++17", "-O1", "-fno-fast-math", "-I", CSRC,
                        os.path.join(HERE, "scalar_step.cc"), "-o", exe],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return exe


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
