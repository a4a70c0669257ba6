"""Peak fp32 FMA throughput of this CPU, all cores (not a test): the roofline the CPU kernel's
figures are read against.

Compiles a small C loop (independent FMA chains on `-march=native` vectors, one OpenMP thread
per core), runs it, and writes JSON with the kernel's achieved rate at the flop count of one
Optim4RL element (`FLOPS_PER_ELEMENT`, counted from the rule's shapes below).

  python benchmarks/cpu_peak.py [--core benchmarks/results/core_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

# Multiply-adds per parameter of Algorithm 1: GRU1 (in 2, hidden 8) 3*8*(2+8); MLP1 8-16-16-2;
# GRU2 (in 1, hidden 8) 3*8*(1+8); MLP2 8-16-16-1. Two flops each; the ~50 sigmoid/tanh/exp/log
# evaluations per element are not counted, so this is a lower bound on the work.
MACS = 3 * 8 * 10 + (8 * 16 + 16 * 16 + 16 * 2) + 3 * 8 * 9 + (8 * 16 + 16 * 16 + 16 * 1)
FLOPS_PER_ELEMENT = 2 * MACS

SOURCE = r"""
#include <omp.h>
#include <stdio.h>
#define CHAINS 16
typedef float vec __attribute__((vector_size(64)));
int main(void) {
  const long iters = 40000000;
  double t0 = omp_get_wtime();
  float sink = 0;
  #pragma omp parallel reduction(+:sink)
  {
    vec acc[CHAINS], a, b;
    for (int i = 0; i < 16; ++i) { a[i] = 0.999999f; b[i] = 1e-7f; }
    for (int c = 0; c < CHAINS; ++c) acc[c] = a * (float)c;
    for (long it = 0; it < iters; ++it)
      for (int c = 0; c < CHAINS; ++c) acc[c] = acc[c] * a + b;
    for (int c = 0; c < CHAINS; ++c) for (int i = 0; i < 16; ++i) sink += acc[c][i];
  }
  double secs = omp_get_wtime() - t0;
  printf("%d %.6f %g\n", omp_get_max_threads(), secs, sink);
  return 0;
}
"""


def measure() -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    src, exe = os.path.join(tmp, "peak.c"), os.path.join(tmp, "peak")
    with open(src, "w") as f:
      f.write(SOURCE)
    subprocess.run(["cc", "-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", src, "-o", exe],
                   check=True)
    threads, secs, _ = subprocess.run([exe], capture_output=True, text=True,
                                      check=True).stdout.split()
  flops = int(threads) * 40000000 * 16 * 16 * 2
  return {"threads": int(threads), "seconds": float(secs), "peak_gflops": flops / float(secs) / 1e9}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--core", default="benchmarks/results/core_cpu.json",
                      help="bench_core.py results to put against the peak")
  parser.add_argument("--out", default="benchmarks/results/cpu_peak.json")
  args = parser.parse_args()
  peak = measure()
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
