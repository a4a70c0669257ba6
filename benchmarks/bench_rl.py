"""Environment steps/s of A2C training and seconds per meta-training iteration, with peak
memory (not a test).

A2C training: one agent in `--envs` worlds, optimizer Adam and the learned Optim4RL (fused
backend), the real `train.train` loop. Meta-training: the real meta-training loop (M = 4 inner
updates and one outer rollout per unit and iteration, Section 5.1 / Appendix C) in the main
job's setting ("main": training/main_job.sh, small_dense_short, 32 units of 16 worlds, reset
interval 64, agent lr 2e-2, meta lr 3e-4) and with n units of one `--world` each for each n in
`--units` (reset interval n). Rates exclude compilation (first chunk / first iteration). Each
measurement runs in a fresh process so its peak resident memory is its own. The A2C runs are
short, so they are repeated `--repeats` times, interleaved, and their median is reported.

`--legacy` measures meta-training with the package as it was before meta-training moved to
optim4rl/meta/ (`optim4rl.meta_train.meta_train`), so one script measures before and after:
put that checkout first on the path.

  python benchmarks/bench_rl.py [--world big_dense_long] [--units 64 512]
  python benchmarks/bench_rl.py --only meta --units 64 --out benchmarks/results/meta_cpu.json
  PYTHONPATH=OLD_CHECKOUT python benchmarks/bench_rl.py --only meta --units 64 --legacy \
      --out benchmarks/results/meta_cpu_legacy.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time

try:
  from optim4rl.evaluation.throughput import in_fresh_process, machine_info, peak_rss_gb
except ImportError:  # --legacy: the package before the reorganisation
  from optim4rl.profile import in_fresh_process, machine_info, peak_rss_gb

# training/main_job.sh's meta-training (agent lr per world, meta lr).
MAIN_JOB = dict(world="small_dense_short", units=32, envs_per_unit=16, reset_interval=64,
                agent_lr=2e-2, meta_lr=3e-4)


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


def meta_case(arg: str, world: str) -> dict:
  """"main": the main job's setting; a number n: n units of one `world` each."""
  if arg == "main":
    return MAIN_JOB
  n = int(arg)
  return dict(world=world, units=n, envs_per_unit=1, reset_interval=n, agent_lr=3e-3,
              meta_lr=1e-3)


def meta_rate(case: dict, iterations: int, backend: str | None, legacy: bool) -> dict:
  outer = dict(units=case["units"], envs_per_unit=case["envs_per_unit"],
               reset_interval=case["reset_interval"], iterations=iterations,
               meta_lr=case["meta_lr"], backend=backend)
  plugin = dict(worlds=(case["world"],), agent_lrs=(case["agent_lr"],))
  with tempfile.TemporaryDirectory() as run_dir:
    if legacy:
      from optim4rl.meta import MetaConfig
      from optim4rl.meta_train import meta_train
      meta_train(MetaConfig(**plugin, **outer), run_dir, checkpoint_every=10**9)
    else:
      from optim4rl.meta.a2c import GridworldConfig
      from optim4rl.meta.config import MetaConfig
      from optim4rl.meta.loop import meta_train
      meta_train(MetaConfig(**outer), GridworldConfig(**plugin), run_dir, checkpoint_every=10**9)
    with open(os.path.join(run_dir, "log.csv")) as f:
      rows = list(csv.DictReader(f))
  # Iteration 1 includes compilation. The new loop reads the device's metrics after it and at
  # the end (spreading the time between reads evenly), so both timestamps are measured.
  first, last = rows[0], rows[-1]
  seconds = float(last["seconds"]) - float(first["seconds"])
  steps = int(last["env_steps"]) - int(first["env_steps"])
  return {"env_steps_per_s": steps / seconds, "seconds_per_iteration": seconds / (len(rows) - 1),
          "iterations_per_s": (len(rows) - 1) / seconds,
          "compile_and_first_iteration_s": float(first["seconds"]), "peak_rss_gb": peak_rss_gb(),
          "setting": case, "code": "legacy" if legacy else "current"}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--world", default="big_dense_long")
  parser.add_argument("--units", nargs="+", type=int, default=[64, 512],
                      help="meta-training with n units of one --world each, for each n")
  parser.add_argument("--no-main-job", action="store_true",
                      help="skip meta-training in the main job's setting")
  parser.add_argument("--only", choices=("a2c", "meta"), help="measure only these")
  parser.add_argument("--legacy", action="store_true",
                      help="meta-training with the package before its reorganisation "
                           "(optim4rl.meta_train); implies --only meta")
  parser.add_argument("--envs", type=int, default=512, help="worlds of the A2C agent")
  parser.add_argument("--updates", type=int, default=40, help="A2C updates timed")
  parser.add_argument("--iterations", type=int, default=11,
                      help="meta iterations (the first untimed)")
  parser.add_argument("--repeats", type=int, default=3, help="A2C measurements per optimizer")
  parser.add_argument("--backend", default=None, help="fused backend (default: the platform's)")
  parser.add_argument("--out", default="benchmarks/results/rl_cpu.json")
  parser.add_argument("--one", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.iterations < 2:
    parser.error("--iterations: at least 2 (the first includes compilation)")
  if args.one:
    kind, arg = args.one
    row = (a2c_rate(args.world, arg, args.envs, args.updates, args.backend) if kind == "a2c"
           else meta_rate(meta_case(arg, args.world), args.iterations, args.backend,
                          args.legacy))
    print(json.dumps(row))
    return

  jobs = []
  if args.only != "meta" and not args.legacy:
    jobs += [("a2c", "adam"), ("a2c", "optim4rl")] * args.repeats
  if args.only != "a2c":
    jobs += [("meta", "main")] * (not args.no_main_job) + [("meta", str(n)) for n in args.units]
  common = ["--world", args.world, "--envs", str(args.envs), "--updates", str(args.updates),
            "--iterations", str(args.iterations)] + (["--backend", args.backend] if args.backend
                                                     else []) + (["--legacy"] * args.legacy)
  samples = {}
  for kind, arg in jobs:  # A2C repeats interleaved, so slow spells of the machine hit both
    print(f"  measuring {kind} {arg} ...", file=sys.stderr, flush=True)
    samples.setdefault((kind, arg), []).append(in_fresh_process(__file__, kind, arg, *common))
  rows = []
  code = " (legacy code)" if args.legacy else ""
  print(f"A2C: environment steps/s; meta-training{code}: seconds per iteration; compilation "
        f"excluded; peak resident memory")
  for (kind, arg), runs in samples.items():
    if kind == "a2c":
      label = f"A2C training, {arg}, {args.envs} worlds of {args.world}"
    else:
      case = meta_case(arg, args.world)
      label = (f"meta-training, {'main job, ' if arg == 'main' else ''}{case['world']}, "
               f"n = {case['units']} x {case['envs_per_unit']}")
    good = [r for r in runs if "error" not in r]
    if not good:  # e.g. killed for memory: recorded, keep going
      rows.append({"kind": kind, "arg": arg, "label": label, **runs[0]})
      print(f"  {label:52s} failed ({runs[0]['error'][:40]})", flush=True)
      continue
    rates = sorted(r["env_steps_per_s"] for r in good)
    row = {"kind": kind, "arg": arg, "label": label, **good[0],
           "env_steps_per_s": rates[len(rates) // 2],
           "peak_rss_gb": max(r["peak_rss_gb"] for r in good)}
    if len(runs) > 1:
      row["env_steps_per_s_samples"] = [r.get("env_steps_per_s") for r in runs]
    rows.append(row)
    if kind == "meta":
      print(f"  {label:52s} {row['seconds_per_iteration']:8.3f} s/it ({row['iterations_per_s']:.2f}"
            f" it/s, {row['env_steps_per_s'] / 1e3:.1f} k steps/s)   first "
            f"{row['compile_and_first_iteration_s']:.1f} s   peak {row['peak_rss_gb']:.2f} GB",
            flush=True)
      continue
    spread = f"  (of {', '.join(f'{x / 1e3:.1f}' for x in rates)})" if len(rates) > 1 else ""
    print(f"  {label:52s} {row['env_steps_per_s'] / 1e3:9.1f} k steps/s   peak "
          f"{row['peak_rss_gb']:.2f} GB{spread}", flush=True)

  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"benchmark": "rl", "world": args.world, "backend": args.backend or "default",
               "code": "legacy" if args.legacy else "current",
               "units": {"env_steps_per_s": "environment steps per second, all worlds",
                         "seconds_per_iteration": "meta-training, compilation excluded",
                         "peak_rss_gb": "peak resident memory of the measuring process"},
               "machine": machine_info(), "rows": rows}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
