"""Throughput and memory of the fused learned-optimizer step (not a test).

For each P and backend: forward params/s (one update of P parameters, hidden state
included) and the meta path: grad w.r.t. the meta-parameters through M = 4 scanned updates
of a quadratic inner loss, in parameter-steps/s, with the peak resident memory of a fresh
process running it (also per parameter-step). optax.adam's update on the same P runs in the
same session. The anchor, "flax", is Optim4RL written as its authors' code writes it
(optim4rl/evaluation/flax_anchor.py); the cpu backend's ratios to it and to the reference
are of the same run.

  python benchmarks/bench_core.py [--sizes 1e5 1e6 4e6] [--out benchmarks/results/core.json]
"""
from __future__ import annotations

import argparse
import json
import os

from optim4rl.evaluation.throughput import (ANCHOR, M_STEPS, in_fresh_process, machine_info,
                                            measure, peak_rss_gb)


def run_one(kind: str, backend: str, size: int) -> dict:
  """One measurement in this process (called in a fresh subprocess for clean peak memory)."""
  row = measure(kind, backend, size)
  if kind == "meta":
    row["peak_rss_gb"] = peak_rss_gb()
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 4e6])
  parser.add_argument("--backends", nargs="+", default=["reference", "cpu", ANCHOR])
  parser.add_argument("--out", default="benchmarks/results/core_cpu.json")
  parser.add_argument("--one", nargs=3, metavar=("KIND", "BACKEND", "P"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(run_one(args.one[0], args.one[1], int(args.one[2]))))
    return

  rows = []
  for size in map(int, args.sizes):
    jobs = [("forward", b) for b in args.backends] + [("forward", "optax.adam")]
    jobs += [("meta", b) for b in args.backends]
    for kind, backend in jobs:
      row = {"kind": kind, "backend": backend, "P": size,
             **in_fresh_process(__file__, kind, backend, str(size))}
      rows.append(row)
      if "error" in row:  # e.g. killed for memory: recorded, keep going
        row["rate"] = float("nan")
        print(f"{kind:8s} {backend:13s} P={size:>9,d}  failed ({row['error'][:40]})", flush=True)
        continue
      print(f"{kind:8s} {backend:13s} P={size:>9,d}  {row['rate'] / 1e6:10.2f} M/s"
            + (f"  peak {row['peak_rss_gb']:.2f} GB" if "peak_rss_gb" in row else ""), flush=True)

  def rate(kind, backend, size):
    return next(r["rate"] for r in rows if (r["kind"], r["backend"], r["P"]) == (kind, backend, size))
  for r in rows:  # the meta path's peak memory per parameter-step
    if r["kind"] == "meta" and "peak_rss_gb" in r:
      r["bytes_per_param_step"] = r["peak_rss_gb"] * 2**30 / (M_STEPS * r["P"])
  ratios = []
  fused = [b for b in args.backends if b.partition(":")[0] == "cpu"]  # cpu, cpu:bfloat16
  for size in map(int, args.sizes):
    ratio = {"P": size}
    for ours in fused:
      for other in ("reference", ANCHOR):
        if other in args.backends:
          for kind in ("forward", "meta"):
            ratio[f"{kind}_{ours}_over_{other}"] = (rate(kind, ours, size)
                                                    / rate(kind, other, size))
      ratio[f"forward_{ours}_over_adam"] = (rate("forward", ours, size)
                                            / rate("forward", "optax.adam", size))
    ratios.append(ratio)
  print("\nratios of the same run")
  for r in ratios:
    for k, v in r.items():
      if k != "P":
        print(f"  P={r['P']:>9,d}  {k:<40} {v:7.2f}x")
  print("\nmeta path, memory per parameter-step (bytes): peak resident (the process's baseline "
        "included) and XLA's temporaries")
  for r in rows:
    if "bytes_per_param_step" in r:
      print(f"  {r['backend']:13s} P={r['P']:>9,d}  {r['bytes_per_param_step']:8.1f} "
            f"{r.get('xla_temp_bytes_per_param_step', float('nan')):8.1f}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"benchmark": "core", "units": {"forward": "params/s", "meta": "param-steps/s "
               f"(grad w.r.t. meta through {M_STEPS} scanned updates)"},
               "machine": machine_info(), "rows": rows, "ratios": ratios}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
