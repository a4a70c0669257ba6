"""Runs tests/backends/triton_interpret_cases.py (the Triton kernels in Triton's CPU interpreter,
with torch tensors) in a fresh pytest process with TRITON_INTERPRET=1: triton reads it when it is
imported, and this process may already hold compiled-mode triton (test_triton_compile.py,
the GPU backends). Also: the "triton" backend is refused off GPUs with a clear error."""
import os
import subprocess
import sys

import jax
import pytest

import optim4rl

CASES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_interpret_cases.py")


def test_kernels_in_the_triton_interpreter():
  pytest.importorskip("torch")
  pytest.importorskip("triton")
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
       "ignore::RuntimeWarning", CASES],
      env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(CASES))), timeout=900)
  summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "(no output)"
  print(f"interpreter cases: {summary}")
  assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
  assert " passed" in summary and "skipped" not in summary, summary


def test_triton_backend_is_refused_off_gpu_with_a_clear_error():
  assert "triton" not in optim4rl.available_backends("cpu")
  meta = optim4rl.init_meta_params(jax.random.key(0))
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="cannot run here.*GPU"):
      optim4rl.optim4rl(meta, 1e-3, backend="triton")
