"""Peak fp32 FMA throughput of this CPU, all cores (not a test): the roofline the CPU kernel's
figures are read against.

Compiles a small C loop (independent FMA chains on `-march=native` vectors, one OpenMP thread
per core; optim4rl/evaluation/roofline.py), runs it, and writes JSON with the kernel's achieved
rate at the flop count of one Optim4RL element (`FLOPS_PER_ELEMENT`, counted from the rule's
shapes). `python -m optim4rl bench` prints the same reading for every backend.

  python benchmarks/cpu_peak.py [--core benchmarks/results/core_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os

from optim4rl.evaluation.roofline import cpu_fma_peak, flops_per_element

FLOPS_PER_ELEMENT = flops_per_element("optim4rl")  # 2544: Algorithm 1's multiply-adds x 2


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--core", default="benchmarks/results/core_cpu.json",
                      help="bench_core.py results to put against the peak")
  parser.add_argument("--out", default="benchmarks/results/cpu_peak.json")
  args = parser.parse_args()
  peak = cpu_fma_peak()
  print(f"peak fp32 FMA: {peak['peak_gflops']:.1f} GFLOP/s on {peak['threads']} threads; one "
        f"Optim4RL element is >= {FLOPS_PER_ELEMENT} flops, so at most "
        f"{peak['peak_gflops'] * 1e9 / FLOPS_PER_ELEMENT / 1e6:.0f} M params/s")
  rows = []
  if os.path.exists(args.core):
    for r in json.load(open(args.core))["rows"]:
      if r["kind"] == "forward" and r["backend"] != "optax.adam":
        gflops = r["rate"] * FLOPS_PER_ELEMENT / 1e9
        rows.append({"backend": r["backend"], "P": r["P"], "params_per_s": r["rate"],
                     "gflops": gflops, "fraction_of_peak": gflops / peak["peak_gflops"]})
        print(f"  forward {r['backend']:9s} P={r['P']:>9,d}  {gflops:6.1f} GFLOP/s "
              f"({100 * rows[-1]['fraction_of_peak']:.0f}% of peak)")
  from optim4rl.evaluation.throughput import machine_info
  with open(args.out, "w") as f:
    json.dump({"benchmark": "cpu_peak", "flops_per_element": FLOPS_PER_ELEMENT,
               "machine": machine_info(), **peak, "forward": rows}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
