"""Throughput of the fused optimizer step: forward and meta path, per backend.

`measure` is shared by the CLI's `bench` command and the scripts in benchmarks/ (which add
fresh processes for peak memory, JSON and the ratios). The meta path is the gradient w.r.t.
the meta-parameters through M = 4 scanned updates of a quadratic inner loss.
"""
from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import optax

M_STEPS = 4


def time_call(fn, *args, min_time: float = 1.0, max_reps: int = 50) -> float:
  """Seconds per call after a warm-up call (compilation excluded)."""
  jax.block_until_ready(fn(*args))
  reps, start = 0, time.perf_counter()
  while True:
    jax.block_until_ready(fn(*args))
    reps += 1
    elapsed = time.perf_counter() - start
    if elapsed >= min_time or reps >= max_reps:
      return elapsed / reps


ANCHOR = "flax"  # the plain flax formulation of the authors' module (evaluation/flax_anchor.py)


def _optimizer(backend: str, rule: str, key):
  """(meta-parameters, make(meta, learning_rate) -> optax transformation) of a backend,
  "BACKEND:bfloat16" for one with the 16-bit hidden state."""
  backend, _, hidden_dtype = backend.partition(":")
  if backend == ANCHOR:
    from optim4rl.evaluation.flax_anchor import anchor_optimizer, init_anchor
    if rule != "optim4rl":
      raise ValueError(f"the flax anchor is Optim4RL's module, not {rule!r}")
    return init_anchor(key), anchor_optimizer
  from optim4rl.rules import init_meta_params
  from optim4rl.transforms import learned_optimizer
  return init_meta_params(key, rule), lambda meta, lr: learned_optimizer(
      meta, rule=rule, learning_rate=lr, backend=backend, hidden_dtype=hidden_dtype or "float32")


def meta_path(backend: str, size: int, rule: str = "optim4rl", steps: int = M_STEPS):
  """(meta-parameters, jitted meta-gradient): grad w.r.t. the meta-parameters of a quadratic
  inner loss of P = size parameters after `steps` scanned updates of the backend's optimizer."""
  meta, make = _optimizer(backend, rule, jax.random.key(0))
  target = jnp.linspace(-1.0, 1.0, size, dtype=jnp.float32)

  def inner(p):
    return 0.5 * jnp.sum(jnp.square(p - target))

  def meta_loss(meta):
    tx = make(meta, 1e-2)

    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(inner)(p), s)
      return (p + u, s), None
    p0 = jnp.zeros_like(target)
    (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps)
    return inner(p)
  return meta, jax.jit(jax.grad(meta_loss))


def meta_path_temp_bytes(backend: str, size: int, rule: str = "optim4rl",
                         steps: int = M_STEPS) -> int:
  """XLA's temporaries of `meta_path`, from its compilation (nothing runs)."""
  meta, meta_grad = meta_path(backend, size, rule, steps)
  return meta_grad.lower(meta).compile().memory_analysis().temp_size_in_bytes


def measure(kind: str, backend: str, size: int, rule: str = "optim4rl") -> dict:
  """{"seconds", "rate"}: kind "forward" (params/s) or "meta" (param-steps/s);
  backend a fused-step backend, "flax" (the anchor) or "optax.adam" (forward only)."""
  key = jax.random.key(0)
  g = (jax.random.normal(key, (size,)) * 1e-3).astype(jnp.float32)
  if backend == "optax.adam":
    if kind != "forward":
      raise ValueError("optax.adam has no meta path")
    tx = optax.adam(1e-3)
    seconds = time_call(jax.jit(tx.update), g, tx.init(g))
    return {"seconds": seconds, "rate": size / seconds}
  if kind == "forward":
    meta, make = _optimizer(backend, rule, key)
    tx = make(meta, 1e-3)
    seconds = time_call(jax.jit(tx.update), g, tx.init(g))
    return {"seconds": seconds, "rate": size / seconds}
  if kind != "meta":
    raise ValueError(f"unknown measurement {kind!r}; expected 'forward' or 'meta'")
  meta, meta_grad = meta_path(backend, size, rule)
  memory = meta_grad.lower(meta).compile().memory_analysis()
  seconds = time_call(meta_grad, meta, min_time=2.0, max_reps=5)
  # XLA's working memory of the meta path (temporaries: residuals of the 4 updates and
  # everything else alive at once), per parameter-step; the process's baseline excluded.
  temp = memory.temp_size_in_bytes if memory is not None else float("nan")
  return {"seconds": seconds, "rate": M_STEPS * size / seconds,
          "xla_temp_bytes_per_param_step": temp / (M_STEPS * size)}


def peak_rss_gb() -> float:
  """Peak resident memory of this process so far, in GiB (Linux reports KiB)."""
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def in_fresh_process(script: str, *args: str) -> dict:
  """Run `python script --one ARGS...` (a benchmark measuring one thing and printing a JSON
  line last), so its peak memory is its own; a failure (e.g. killed for memory) comes back as
  {"error": ...} instead of stopping the benchmark."""
  import json
  import subprocess
  import sys
  out = subprocess.run([sys.executable, script, "--one", *args], capture_output=True, text=True)
  if out.returncode != 0:
    return {"error": f"exit {out.returncode}: {out.stderr[-500:]}"}
  return json.loads(out.stdout.splitlines()[-1])


def machine_info() -> dict:
  import jaxlib
  cpu = "unknown"
  if os.path.exists("/proc/cpuinfo"):
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
          "device": str(jax.devices()[0]), "platform": jax.default_backend(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "optax": optax.__version__,
          "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
          "cpu_kernel_simd_lanes": _cpu_simd_lanes()}


def _cpu_simd_lanes() -> int | None:
  """The SIMD width the cpu backend was compiled for (it decides which code path ran)."""
  try:
    from optim4rl import _cpu
  except ImportError:
    return None
  return _cpu.simd_lanes()


def throughput_table(sizes, backends=None, rule: str = "optim4rl") -> str:
  """A text table of forward and meta-path rates for each size and backend (plus Adam and,
  for Optim4RL, the flax anchor), read against the machine's limits (evaluation/roofline.py):
  achieved GFLOP/s and their share of the CPU's measured FMA peak, bytes moved per parameter
  and GB/s."""
  from optim4rl.backends import available_backends
  from optim4rl.evaluation.roofline import cpu_fma_peak, roofline_row
  backends = list(backends or available_backends())
  if rule == "optim4rl" and ANCHOR not in backends:
    backends.append(ANCHOR)
  peak = cpu_fma_peak() if jax.default_backend() == "cpu" else None
  peak_gflops = peak["peak_gflops"] if peak else None
  peak_text = (f"measured fp32 FMA peak {peak_gflops:.0f} GFLOP/s on {peak['threads']} threads"
               if peak else "no FMA peak measured (CPU only)")
  lines = [f"{machine_info()['device']}, rule {rule}; forward in params/s, meta in "
           f"param-steps/s (grad through {M_STEPS} updates); {peak_text}",
           f"{'P':>10}  {'backend':<13} {'kind':<8} {'rate':>12} {'GFLOP/s':>8} {'of peak':>8} "
           f"{'B/param':>8} {'GB/s':>7}"]
  share = lambda x: "-" if x is None else f"{100 * x:.1f}%"
  for size in sizes:
    for backend in backends + ["optax.adam"]:
      for kind in ("forward",) if backend == "optax.adam" else ("forward", "meta"):
        rate = measure(kind, backend, size, rule)["rate"]
        r = roofline_row(kind, backend, rule, rate, peak_gflops)
        moved = (f"{r['bytes_per_param']:>8d} {r['gb_per_s']:7.1f}" if "bytes_per_param" in r
                 else f"{'-':>8} {'-':>7}")
        lines.append(f"{size:>10,d}  {backend:<13} {kind:<8} {rate / 1e6:8.2f} M/s "
                     f"{r['gflops']:8.1f} {share(r['share_of_peak']):>8} {moved}")
  return "\n".join(lines)
