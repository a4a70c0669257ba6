"""Environment steps/s of PPO on Breakout-MinAtar at the OPEN paper's settings (not a test).

PPO: 64 envs, rollouts of 128 steps, 4 epochs of 8 minibatches (`gymnax_tasks`), one seed,
the real `training.ppo_gymnax.train` loop; the first chunk (compilation) is not timed, the
next `--chunks` of `--rollouts` rollouts each are. Each optimizer is measured `--repeats`
times, interleaved, and the median is reported. For context, also the rate of the bare
environment (uniformly random actions, no networks) at 64 and 256 envs.

`ppo_rate(optimizer, label)` measures any optax optimizer (OPEN too, which takes `activations`
and `key`); `optimizers()` lists those in the table and the JSON: Adam and OPEN on each backend.

  python benchmarks/bench_minatar.py [--task Breakout-MinAtar] [--out FILE]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

from optim4rl.envs import gymnax_tasks
from optim4rl.evaluation.throughput import machine_info
from optim4rl.open_optimizer import OpenPlan, open_optimizer
from optim4rl.rules.open import pretrained_open
from optim4rl.training import ppo_gymnax


def ppo_rate(optimizer: optax.GradientTransformation, label: str, *, task: str = "Breakout-MinAtar",
             rollouts: int = 4, chunks: int = 3) -> dict:
  """PPO environment steps/s of `optimizer` on `task`, compilation excluded."""
  s = gymnax_tasks.settings(task)
  per_rollout = s.num_envs * s.num_steps
  stamps = []
  start = time.perf_counter()
  ppo_gymnax.train(task, optimizer, steps=(chunks + 1) * rollouts * per_rollout,
                   chunks=chunks + 1, settings=s,
                   progress=lambda c, steps, r: stamps.append((time.perf_counter(), steps)))
  (t0, s0), (t1, s1) = stamps[0], stamps[-1]  # chunk 0 includes compilation
  return {"label": label, "env_steps_per_s": (s1 - s0) / (t1 - t0),
          "seconds_per_rollout": (t1 - t0) / (chunks * rollouts),
          "compile_and_first_chunk_s": t0 - start, "timed_env_steps": s1 - s0}


def env_rate(task: str, num_envs: int, steps: int = 128, repeats: int = 20) -> float:
  """Environment steps/s of `num_envs` envs stepped with random actions in a jitted scan."""
  env, params = gymnax_tasks.make(task)
  n = env.action_space(params).n

  @jax.jit
  def run(key):
    _, state = jax.vmap(env.reset, (0, None))(jax.random.split(key, num_envs), params)

    def step(state, key):
      k_act, k_env = jax.random.split(key)
      action = jax.random.randint(k_act, (num_envs,), 0, n)
      out = jax.vmap(env.step, (0, 0, 0, None))(jax.random.split(k_env, num_envs), state,
                                                action, params)
      return out[1], jnp.sum(out[0]) + jnp.sum(out[2])  # observations used, as an agent would
    return jax.lax.scan(step, state, jax.random.split(key, steps))[1].sum()

  jax.block_until_ready(run(jax.random.PRNGKey(0)))
  start = time.perf_counter()
  for i in range(repeats):
    jax.block_until_ready(run(jax.random.PRNGKey(i + 1)))
  return repeats * steps * num_envs / (time.perf_counter() - start)


def optimizers(s: gymnax_tasks.PPOSettings, rollouts: int) -> dict:
  """Label -> optimizer measured by `main`: Adam at the task's learning rate, constant (a
  schedule costs nothing measurable), and OPEN (the published Breakout meta-parameters) on
  each of its backends, planned for a run of `rollouts` rollouts."""
  plan = OpenPlan(minibatches=s.num_minibatches, epochs=s.num_epochs, updates=rollouts)
  meta = pretrained_open("breakout")
  return {"adam": optax.adam(s.learning_rate),
          **{f"open ({backend})": open_optimizer(meta, plan=plan, backend=backend)
             for backend in ("reference", "cpu")}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="Breakout-MinAtar")
  parser.add_argument("--rollouts", type=int, default=4, help="rollouts per timed chunk")
  parser.add_argument("--chunks", type=int, default=3, help="timed chunks per measurement")
  parser.add_argument("--repeats", type=int, default=3, help="measurements per optimizer")
  parser.add_argument("--out", default="benchmarks/results/minatar_ppo_cpu.json")
  args = parser.parse_args()
  if min(args.rollouts, args.chunks, args.repeats) < 1:
    parser.error("--rollouts, --chunks and --repeats must be at least 1")
  s = gymnax_tasks.settings(args.task)
  txs = optimizers(s, (args.chunks + 1) * args.rollouts)
  samples = {label: [] for label in txs}
  for _ in range(args.repeats):  # interleaved, so slow spells of the machine hit all alike
    for label, tx in txs.items():
      print(f"  measuring PPO with {label} ...", file=sys.stderr, flush=True)
      samples[label].append(ppo_rate(tx, label, task=args.task, rollouts=args.rollouts,
                                     chunks=args.chunks))
  env_rates = {n: env_rate(args.task, n) for n in (s.num_envs, 256)}

  print(f"{args.task}, PPO at {s.num_envs} envs x {s.num_steps} steps, {s.num_epochs} epochs x "
        f"{s.num_minibatches} minibatches, one seed; compilation excluded; median of "
        f"{args.repeats}")
  rows = []
  for label, runs in samples.items():
    rates = sorted(r["env_steps_per_s"] for r in runs)
    median = statistics.median(rates)
    row = {**runs[0], "env_steps_per_s": median, "env_steps_per_s_samples": rates,
           "seconds_per_rollout": s.num_envs * s.num_steps / median,
           "hours_per_1e7_steps": 1e7 / median / 3600}
    rows.append(row)
    print(f"  PPO, {label:20s} {median / 1e3:8.1f} k steps/s  {row['seconds_per_rollout']:.3f} "
          f"s/rollout  {row['hours_per_1e7_steps'] * 60:5.1f} min per 1e7 steps  (of "
          f"{', '.join(f'{x / 1e3:.1f}' for x in rates)})")
  for n, rate in env_rates.items():
    print(f"  bare env, {n:3d} envs, random actions {rate / 1e3:9.1f} k steps/s")

  from importlib.metadata import version
  machine = {**machine_info(), "gymnax": version("gymnax"), "flax": version("flax")}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"benchmark": "minatar_ppo", "task": args.task,
               "settings": dataclasses.asdict(s),
               "timing": {"rollouts_per_chunk": args.rollouts, "timed_chunks": args.chunks,
                          "repeats": args.repeats, "seeds": 1},
               "units": {"env_steps_per_s": "environment steps per second, all envs, PPO "
                                            "training (rollouts and updates), median",
                         "bare_env_steps_per_s": "environment alone, random actions"},
               "machine": machine, "rows": rows,
               "bare_env_steps_per_s": {str(n): r for n, r in env_rates.items()}}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
