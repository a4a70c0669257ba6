"""Meta-training at large unit counts: seconds per iteration and peak memory against the number
of units and the unit chunk (not a test).

For each n in `--units`: n units of one `--world` each (A2C, M = 4 inner updates, reset
interval n, as benchmarks/bench_rl.py's meta-training cases), the real jitted iteration
(optim4rl/meta/iteration.py) run `--iterations` times after one untimed first iteration
(compilation), units run `--chunk` at a time ("auto": pipeline.auto_unit_chunk's choice from
half the available memory; "all": at once). Each configuration runs in a fresh process, so its
peak resident memory is its own; a run killed for memory is reported as an error.

  python benchmarks/bench_units.py [--units 64 512 4096] [--chunk auto] [--iterations 3]
"""
from __future__ import annotations

import argparse
import json
import os
import time

from optim4rl.backends.registry import HIDDEN_DTYPE_NAMES
from optim4rl.evaluation.throughput import in_fresh_process, machine_info, peak_rss_gb


def run_one(world: str, units: int, chunk: str, iterations: int, backend: str | None,
            hidden_dtype: str) -> dict:
  import jax
  from optim4rl.meta import pipeline
  from optim4rl.meta.a2c import GridworldConfig
  from optim4rl.meta.config import MetaConfig
  from optim4rl.meta.iteration import initial_state, make_iteration
  cfg = MetaConfig(units=units, reset_interval=units, iterations=iterations + 1,
                   backend=backend, hidden_dtype=hidden_dtype)
  tasks = GridworldConfig(worlds=(world,), agent_lrs=(3e-3,)).tasks(cfg)
  state = initial_state(cfg, tasks)
  state_gb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**30
  if chunk == "auto":
    unit_chunk = pipeline.auto_unit_chunk(tasks.tasks[0], state.meta, state.units[0], units,
                                          pipeline.memory_budget())
  else:
    unit_chunk = units if chunk == "all" else int(chunk)
  iteration = make_iteration(cfg, tasks, unit_chunk=unit_chunk)
  start = time.perf_counter()
  state, metrics = iteration(state)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(iterations):
    state, metrics = iteration(state)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / iterations
  return {"world": world, "units": units, "unit_chunk": unit_chunk, "chunk_arg": chunk,
          "seconds_per_iteration": seconds, "compile_and_first_iteration_s": first,
          "state_gb": state_gb, "peak_rss_gb": peak_rss_gb(), "backend": cfg.backend,
          "hidden_dtype": hidden_dtype,
          "meta_grad_norm": float(metrics.meta_grad_norm)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--world", default="big_dense_long")
  parser.add_argument("--units", nargs="+", type=int, default=[64, 512, 4096])
  parser.add_argument("--chunk", nargs="+", default=["auto"],
                      help="units at once: auto, all, or a number (each is measured)")
  parser.add_argument("--iterations", type=int, default=3, help="timed iterations")
  parser.add_argument("--backend", default=None)
  parser.add_argument("--hidden-dtype", default="float32", choices=HIDDEN_DTYPE_NAMES)
  parser.add_argument("--out", default="benchmarks/results/units_cpu.json")
  parser.add_argument("--one", nargs=3, metavar=("UNITS", "CHUNK", "ITERATIONS"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    units, chunk, iterations = args.one
    print(json.dumps(run_one(args.world, int(units), chunk, int(iterations), args.backend,
                             args.hidden_dtype)))
    return
  rows = []
  print(f"{'units':>6} {'chunk':>6} {'s/iteration':>12} {'first (s)':>10} {'state GB':>9} "
        f"{'peak GB':>8}")
  for units in args.units:
    for chunk in args.chunk:
      extra = ["--world", args.world, "--hidden-dtype", args.hidden_dtype]
      extra += ["--backend", args.backend] if args.backend else []
      row = in_fresh_process(__file__, str(units), chunk, str(args.iterations), *extra)
      row.setdefault("units", units)
      row.setdefault("chunk_arg", chunk)
      rows.append(row)
      if "error" in row:
        print(f"{units:>6} {chunk:>6} error: {row['error'][-200:]}", flush=True)
      else:
        print(f"{units:>6} {row['unit_chunk']:>6} {row['seconds_per_iteration']:12.2f} "
              f"{row['compile_and_first_iteration_s']:10.1f} {row['state_gb']:9.2f} "
              f"{row['peak_rss_gb']:8.2f}", flush=True)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"benchmark": "meta_units", "machine": machine_info(),
               "load_average": os.getloadavg(), "iterations": args.iterations, "rows": rows},
              f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
