"""GPU throughput, bandwidth and memory of the fused learned-optimizer step (not a test).

For each P and backend (reference, triton, cuda; optax.adam for scale): forward params/s (one
optimizer update, hidden state included) and the meta path (grad w.r.t. the meta-parameters
through 4 scanned updates of a quadratic inner loss, param-steps/s), both as measured by
optim4rl.evaluation.throughput.measure. Each configuration runs in a fresh process, so the device's
peak_bytes_in_use is that configuration's alone.

Bandwidth counts the bytes a forward step must move at least, divided by its time:
learned rules read g and h and write the direction and h_new, (2 + 2 * rows) * 4 bytes per
parameter (136 for Optim4RL's 16 hidden rows); optax.adam reads g, mu, nu and writes
updates, mu, nu, 24 bytes. The fraction is of the device's peak HBM bandwidth.

  python benchmarks/bench_gpu.py [--sizes 1e6 1e7 1e8] [--out benchmarks/results/gpu_<device>.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

BACKENDS = ("reference", "triton", "cuda")
PEAK_HBM = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12))  # bytes/s, by name


def peak_bandwidth(device_kind: str) -> float | None:
  for name, peak in PEAK_HBM:
    if name.lower() in device_kind.lower():
      return peak
  return None


def bytes_per_param(backend: str, rule: str) -> int:
  if backend == "optax.adam":
    return 6 * 4
  from optim4rl.rules import get_rule
  return (2 + 2 * get_rule(rule).hidden_rows) * 4


def run_one(kind: str, backend: str, size: int, rule: str) -> dict:
  """One measurement in this process (a fresh subprocess per configuration)."""
  import jax
  from optim4rl.evaluation.throughput import measure
  row = measure(kind, backend, size, rule)
  stats = jax.devices()[0].memory_stats() or {}
  row["peak_gb"] = stats.get("peak_bytes_in_use", float("nan")) / 1e9
  return row


def versions() -> dict:
  import platform
  import jax
  import jaxlib
  import optax
  import optim4rl
  found = {"python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": jaxlib.__version__, "optax": optax.__version__,
           "optim4rl": optim4rl.__version__}
  for module in ("triton", "jax_triton"):
    try:
      found[module] = __import__(module).__version__
    except Exception as e:  # jax_triton raises more than ImportError where it cannot run
      found[module] = f"unavailable ({type(e).__name__})"
  return found


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
  parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
  parser.add_argument("--rule", default="optim4rl")
  parser.add_argument("--out", default=None, help="default benchmarks/results/gpu_<device>.json")
  parser.add_argument("--one", nargs=3, metavar=("KIND", "BACKEND", "P"), help=argparse.SUPPRESS)
  args = parser.parse_args()

  import jax
  if jax.default_backend() != "gpu":
    sys.exit(f"bench_gpu.py measures GPUs; JAX's default backend here is "
             f"{jax.default_backend()!r}. For CPUs use benchmarks/bench_core.py.")
  if args.one:
    print(json.dumps(run_one(args.one[0], args.one[1], int(args.one[2]), args.rule)))
    return

  from optim4rl.backends import available_backends
  device = jax.devices()[0].device_kind
  peak = peak_bandwidth(device)
  missing = [b for b in args.backends if b not in available_backends()]
  if missing:
    print(f"not available here, skipped: {missing} (available: {available_backends()})")
  backends = [b for b in args.backends if b not in missing]
  env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # peak = what it needed
  rows = []
  print(f"{device}; rule {args.rule}; forward params/s with bandwidth vs a peak of "
        f"{peak / 1e12 if peak else float('nan'):.2f} TB/s; meta path param-steps/s")
  print(f"{'kind':8s} {'backend':11s} {'P':>12s} {'rate':>12s} {'GB/s':>8s} {'of peak':>8s}"
        f" {'peak mem':>9s}")
  for size in map(int, args.sizes):
    jobs = [("forward", b) for b in backends + ["optax.adam"]] + [("meta", b) for b in backends]
    for kind, backend in jobs:
      out = subprocess.run([sys.executable, __file__, "--rule", args.rule, "--one", kind,
                            backend, str(size)], capture_output=True, text=True, env=env)
      row = {"kind": kind, "backend": backend, "P": size}
      if out.returncode != 0:  # e.g. out of memory: record it, keep going
        row.update(rate=float("nan"), error=f"exit {out.returncode}: {out.stderr[-800:]}")
        print(f"{kind:8s} {backend:11s} {size:>12,d}  failed (exit {out.returncode})", flush=True)
        rows.append(row)
        continue
      row.update(json.loads(out.stdout.splitlines()[-1]))
      if kind == "forward":
        row["bytes_per_param"] = bytes_per_param(backend, args.rule)
        row["bandwidth_gbs"] = row["rate"] * row["bytes_per_param"] / 1e9
        row["fraction_of_peak"] = row["bandwidth_gbs"] * 1e9 / peak if peak else None
      rows.append(row)
      bw = (f"{row['bandwidth_gbs']:8.0f} {row['fraction_of_peak'] or float('nan'):8.1%}"
            if kind == "forward" else f"{'':8s} {'':8s}")
      print(f"{kind:8s} {backend:11s} {size:>12,d} {row['rate'] / 1e6:8.1f} M/s {bw}"
            f" {row['peak_gb']:7.2f} GB", flush=True)

  out_path = args.out or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      "gpu_" + re.sub(r"[^a-z0-9]+", "_", device.lower()).strip("_") + ".json")
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  with open(out_path, "w") as f:
    json.dump({"benchmark": "gpu", "device": device, "peak_hbm_bytes_per_s": peak,
               "rule": args.rule, "versions": versions(),
               "units": {"forward": "params/s", "meta": "param-steps/s (grad w.r.t. meta "
                         "through 4 scanned updates)", "bandwidth_gbs": "1e9 bytes/s",
                         "peak_gb": "1e9 bytes, device peak_bytes_in_use"},
               "bytes_per_param": "forward: g + h read, direction + h_new written "
                                  "((2 + 2 rows) * 4); optax.adam: 6 * 4",
               "rows": rows}, f, indent=1)
  print(f"wrote {out_path}")


if __name__ == "__main__":
  main()
