"""XLA's working memory of the meta path against the number of inner updates M (not a test).

The meta path (grad w.r.t. the meta-parameters through M scanned updates of a quadratic inner
loss, as optim4rl/evaluation/throughput.py) keeps, per update, the residuals of the fused step
(the gradient and the hidden state: 4 + 64 bytes per parameter for Optim4RL) and, once, the
loop's carries. Fitting temp(M) = per_step M + fixed tells the two apart, so a target in bytes
per parameter-step can be read against its floor.

  python benchmarks/meta_memory.py [--backend cpu] [--P 1e6] [--out benchmarks/results/meta_memory_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import os

from optim4rl.evaluation.throughput import machine_info, meta_path_temp_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backend", default="cpu")
  parser.add_argument("--P", type=float, default=1e6)
  parser.add_argument("--steps", nargs="+", type=int, default=[2, 4, 8, 16])
  parser.add_argument("--out", default="benchmarks/results/meta_memory_cpu.json")
  args = parser.parse_args()
  size = int(args.P)
  rows = [{"M": m, "temp_bytes_per_param": meta_path_temp_bytes(args.backend, size, steps=m) / size}
          for m in args.steps]
  for r in rows:
    r["temp_bytes_per_param_step"] = r["temp_bytes_per_param"] / r["M"]
  (m0, t0), (m1, t1) = [(r["M"], r["temp_bytes_per_param"]) for r in rows[-2:]]
  per_step = (t1 - t0) / (m1 - m0)
  fit = {"per_step_bytes_per_param": per_step, "fixed_bytes_per_param": t1 - per_step * m1}
  print(f"{args.backend}, P = {size:,d}: XLA temporaries of the meta path")
  print(f"{'M':>4} {'B/param':>10} {'B/param-step':>13}")
  for r in rows:
    print(f"{r['M']:>4} {r['temp_bytes_per_param']:10.1f} {r['temp_bytes_per_param_step']:13.1f}")
  print(f"per update {fit['per_step_bytes_per_param']:.1f} B/param (residuals), "
        f"fixed {fit['fixed_bytes_per_param']:.1f} B/param (carries)")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"benchmark": "meta_memory", "backend": args.backend, "P": size,
               "machine": machine_info(), "rows": rows, "fit": fit}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
