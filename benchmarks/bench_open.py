"""OPEN's forward throughput: the whole optimizer update, reference against the kernels (not a test).

For each network (the published "breakout" weights: GRU 8, MLP 16; "multi": GRU 16, MLP 32)
and size P: `open_optimizer(...).update` on a PPO-like tree (actor and critic MLPs, two hidden
layers of equal width chosen to give about P parameters), jitted, after a warm-up call; the
backends (the reference and every OPEN kernel that runs here: cpu, or cuda and triton on a
GPU) are timed in alternation, `--repeats` calls each, and the median is reported in
parameters per second, with each kernel's ratio to the reference in the same run. For where
the time goes, also the flat step alone (`open_step` on operands already laid end to end: no
flattening, no noise, no mean).

  python benchmarks/bench_open.py [--sizes 1e5 1e6] [--nets breakout multi] [--backends ...]
                                  [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from optim4rl.backends.open_step import (OPEN_BACKENDS, PROBLEMS, open_step,
                                         resolve_open_backend)
from optim4rl.evaluation.throughput import machine_info
from optim4rl.open_optimizer import OpenPlan, open_optimizer
from optim4rl.rules.open import net_of, pretrained_open

OBS, ACTIONS = 64, 6  # observation and action sizes of the tree


def tree(size: int):
  """(params, activations) of actor and critic MLPs OBS -> w -> w -> head with about `size`
  parameters in all."""
  # 2 (OBS w + w + w^2 + w) + (w + 1)(ACTIONS + 1) = size, solved for w.
  a, b = 2.0, 2.0 * (OBS + 2) + ACTIONS + 1
  w = max(1, round((-b + math.sqrt(b * b + 4 * a * size)) / (2 * a)))
  keys = iter(jax.random.split(jax.random.key(0), 32))
  dense = lambda i, o: {"kernel": jax.random.normal(next(keys), (i, o)) / math.sqrt(i),
                        "bias": jnp.zeros((o,))}
  params, acts = {}, {}
  for net, head in (("actor", ACTIONS), ("critic", 1)):
    sizes = [(OBS, w), (w, w), (w, head)]
    params[net] = {f"Dense_{i}": dense(i_, o) for i, (i_, o) in enumerate(sizes)}
    acts[net] = {f"Dense_{i}": jnp.abs(jax.random.normal(next(keys), (o,)))
                 for i, (_, o) in enumerate(sizes)}
  return params, acts


def timed_updates(net: str, size: int, backends, repeats: int) -> dict:
  """{backend: [seconds per call]}, the backends' calls interleaved."""
  params, acts = tree(size)
  grads = jax.tree.map(lambda p: 0.01 * jax.random.normal(jax.random.key(1), p.shape), params)
  key = jax.random.key(2)
  calls = {}
  for backend in backends:
    tx = open_optimizer(pretrained_open(net), plan=OpenPlan(8, 4, 100), backend=backend)
    update, state = jax.jit(tx.update), tx.init(params)
    state = update(grads, state, params, activations=acts, key=key)[1]  # warm-up, mid-run
    jax.block_until_ready(state)
    calls[backend] = (update, state)
  times = {backend: [] for backend in backends}
  for _ in range(repeats):
    for backend, (update, state) in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(update(grads, state, params, activations=acts, key=key))
      times[backend].append(time.perf_counter() - start)
  return times


def timed_flat_steps(net: str, size: int, backends, repeats: int) -> dict:
  """{backend: [seconds per call]} of open_step alone on the same tensors, interleaved."""
  meta = pretrained_open(net)
  sizes = [x.size for x in jax.tree.leaves(tree(size)[0])]
  n, t, hidden = sum(sizes), len(sizes), net_of(meta).hidden
  segments = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
  k = jax.random.split(jax.random.key(3), 5)
  args = (jax.random.normal(k[0], (n,)), 0.01 * jax.random.normal(k[1], (n,)),
          0.01 * jax.random.normal(k[2], (6, n)), 0.1 * jax.random.normal(k[3], (hidden, n)))
  rest = (jnp.linspace(0.0, 1.0, t), jnp.asarray(np.arange(t) < t // 2, jnp.float32),
          jnp.ones((n,)), jax.random.normal(k[4], (n,)), jnp.float32(0.5), jnp.float32(0.5))
  calls = {b: jax.jit(lambda *a, b=b: open_step(meta, *a[:4], segments, *a[4:], backend=b))
           for b in backends}
  for call in calls.values():
    jax.block_until_ready(call(*args, *rest))
  times = {b: [] for b in backends}
  for _ in range(repeats):
    for b, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call(*args, *rest))
      times[b].append(time.perf_counter() - start)
  return times


def default_backends() -> tuple[str, ...]:
  """The reference and every OPEN kernel that can run here."""
  kernels = [b for b in OPEN_BACKENDS if b != "reference" and PROBLEMS[b]() is None]
  return ("reference", *kernels)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6])
  parser.add_argument("--nets", nargs="+", default=["breakout", "multi"])
  parser.add_argument("--backends", nargs="+", default=None,
                      help="default: reference and every kernel that can run here")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default="benchmarks/results/open_forward_cpu.json")
  args = parser.parse_args()
  backends = tuple(args.backends or default_backends())
  for backend in backends:
    resolve_open_backend(backend)  # a clear error for one that cannot run here
  kernels = [b for b in backends if b != "reference"]
  rows = []
  print(f"{'what':<12} {'net':<9} {'P':>10} " + " ".join(f"{b:>14}" for b in backends)
        + "".join(f" {b + '/ref':>11}" for b in kernels))
  for net in args.nets:
    for size in map(int, args.sizes):
      params = sum(x.size for x in jax.tree.leaves(tree(size)[0]))
      for what, measure in (("update", timed_updates), ("flat step", timed_flat_steps)):
        times = measure(net, size, backends, args.repeats)
        row = {"what": what, "net": net, "P": params}
        for backend in backends:
          median = statistics.median(times[backend])
          row[backend] = {"seconds": median, "params_per_s": params / median,
                          "all_seconds": times[backend]}
        if "reference" in backends:
          for backend in kernels:
            row[f"{backend}_over_reference"] = (row["reference"]["seconds"]
                                                / row[backend]["seconds"])
        rows.append(row)
        print(f"{what:<12} {net:<9} {params:>10,d} "
              + " ".join(f"{row[b]['params_per_s'] / 1e6:10.2f} M/s" for b in backends)
              + "".join(f" {row.get(f'{b}_over_reference', float('nan')):10.1f}x"
                        for b in kernels), flush=True)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"benchmark": "open_forward",
               "what": {"update": "open_optimizer(...).update on a PPO-like actor/critic tree, "
                                  "jitted, after a warm-up call; median of interleaved calls",
                        "flat step": "open_step alone on the same tensors laid end to end"},
               "units": "params/s", "machine": machine_info(), "load_average": os.getloadavg(),
               "repeats": args.repeats, "rows": rows}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
