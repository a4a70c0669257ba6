"""Environment steps/s of A2C training and of meta-training, with peak memory (not a test).

A2C training: one agent in `--envs` worlds, optimizer Adam and the learned Optim4RL (fused
backend), the real `train.train` loop. Meta-training: the real `meta_train` loop (n units of one
world each, M = 4 inner updates and one outer rollout per iteration, Section 5.1 / Appendix C)
at each n in `--units`. Rates exclude compilation (first chunk / first iteration). Each
measurement runs in a fresh process so its peak resident memory is its own. The A2C runs are
short, so they are repeated `--repeats` times, interleaved, and their median is reported.

  python benchmarks/bench_rl.py [--world big_dense_long] [--units 64 512]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time

from optim4rl.evaluation.throughput import in_fresh_process, machine_info, peak_rss_gb


def a2c_rate(world_name: str, optimizer: str, envs: int, updates: int, backend: str | None) -> dict:
  import jax
  import optax
  from optim4rl.envs import gridworld as gw
  from optim4rl.rules import init_meta_params
  from optim4rl.training.a2c import train
  from optim4rl.transforms import optim4rl
  world = gw.make(world_name)
  tx = (optax.adam(3e-3) if optimizer == "adam"
        else optim4rl(init_meta_params(jax.random.key(0), "optim4rl"), 3e-3, backend=backend))
  stamps = []
  steps_per_chunk = envs * 20 * max(1, updates // 4)
  train(world, tx, steps=4 * steps_per_chunk, num_envs=envs, chunks=4,
        progress=lambda c, s, r: stamps.append((time.perf_counter(), s)))
  (t0, s0), (t1, s1) = stamps[0], stamps[-1]  # chunk 0 includes compilation
  return {"env_steps_per_s": (s1 - s0) / (t1 - t0), "peak_rss_gb": peak_rss_gb()}


def meta_rate(world_name: str, units: int, iterations: int, backend: str | None) -> dict:
  from optim4rl.meta.a2c import MetaConfig
  from optim4rl.meta.loop import meta_train
  cfg = MetaConfig(worlds=(world_name,), agent_lrs=(3e-3,), units=units, envs_per_unit=1,
                   reset_interval=units, iterations=iterations, backend=backend)
  with tempfile.TemporaryDirectory() as run_dir:
    meta_train(cfg, run_dir, checkpoint_every=10**9)
    with open(os.path.join(run_dir, "log.csv")) as f:
      rows = list(csv.DictReader(f))
  first, last = rows[0], rows[-1]  # iteration 1 includes compilation
  seconds = float(last["seconds"]) - float(first["seconds"])
  steps = int(last["env_steps"]) - int(first["env_steps"])
  return {"env_steps_per_s": steps / seconds, "seconds_per_iteration": seconds / (len(rows) - 1),
          "compile_and_first_iteration_s": float(first["seconds"]), "peak_rss_gb": peak_rss_gb()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--world", default="big_dense_long")
  parser.add_argument("--units", nargs="+", type=int, default=[64, 512])
  parser.add_argument("--envs", type=int, default=512, help="worlds of the A2C agent")
  parser.add_argument("--updates", type=int, default=40, help="A2C updates timed")
  parser.add_argument("--iterations", type=int, default=6, help="meta iterations (first untimed)")
  parser.add_argument("--repeats", type=int, default=3, help="A2C measurements per optimizer")
  parser.add_argument("--backend", default=None, help="fused backend (default: the platform's)")
  parser.add_argument("--out", default="benchmarks/results/rl_cpu.json")
  parser.add_argument("--one", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    kind, arg = args.one
    row = (a2c_rate(args.world, arg, args.envs, args.updates, args.backend) if kind == "a2c"
           else meta_rate(args.world, int(arg), args.iterations, args.backend))
    print(json.dumps(row))
    return

  a2c_jobs = [("a2c", "adam"), ("a2c", "optim4rl")]
  jobs = a2c_jobs * args.repeats + [("meta", str(n)) for n in args.units]
  common = ["--world", args.world, "--envs", str(args.envs), "--updates", str(args.updates),
            "--iterations", str(args.iterations)] + (["--backend", args.backend] if args.backend else [])
  samples = {}
  for kind, arg in jobs:  # A2C repeats interleaved, so slow spells of the machine hit both
    print(f"  measuring {kind} {arg} ...", file=sys.stderr, flush=True)
    samples.setdefault((kind, arg), []).append(in_fresh_process(__file__, kind, arg, *common))
  rows = []
  print(f"{args.world}: environment steps/s (compilation excluded), peak resident memory")
  for (kind, arg), runs in samples.items():
    label = (f"A2C training, {arg}, {args.envs} worlds" if kind == "a2c"
             else f"meta-training, n = {arg} units")
    good = [r for r in runs if "error" not in r]
    if not good:  # e.g. killed for memory: recorded, keep going
      rows.append({"kind": kind, "arg": arg, "label": label, **runs[0]})
      print(f"  {label:40s} failed ({runs[0]['error'][:40]})", flush=True)
      continue
    rates = sorted(r["env_steps_per_s"] for r in good)
    row = {"kind": kind, "arg": arg, "label": label, **good[0],
           "env_steps_per_s": rates[len(rates) // 2],
           "peak_rss_gb": max(r["peak_rss_gb"] for r in good)}
    if len(runs) > 1:
      row["env_steps_per_s_samples"] = [r.get("env_steps_per_s") for r in runs]
    rows.append(row)
    spread = f"  (of {', '.join(f'{x / 1e3:.1f}' for x in rates)})" if len(rates) > 1 else ""
    print(f"  {label:40s} {row['env_steps_per_s'] / 1e3:9.1f} k steps/s   peak "
          f"{row['peak_rss_gb']:.2f} GB{spread}", flush=True)

  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"benchmark": "rl", "world": args.world, "backend": args.backend or "default",
               "units": {"env_steps_per_s": "environment steps per second, all worlds",
                         "peak_rss_gb": "peak resident memory of the measuring process"},
               "machine": machine_info(), "rows": rows}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
