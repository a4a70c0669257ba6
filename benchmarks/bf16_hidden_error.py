"""The error of the opt-in bfloat16 hidden state against the float32 default (not a test).

Three measurements, each float32 and bfloat16 side by side with the same inputs:
1. Meta-gradients: grad w.r.t. the meta-parameters through M = 4 scanned updates of the
   quadratic inner loss of the benchmarks (optim4rl/evaluation/throughput.py), for random and
   for meta-trained meta-parameters: relative L2 error and cosine against float32.
2. Drift: T updates of that quadratic with each state; the relative error of the direction
   and of the parameters after 1, 10, 100 and 1000 updates (the trajectories feed back).
3. Training: fresh A2C agents on small_dense_short with the meta-trained Optim4RL (the main
   job's, benchmarks/results/main_job_sds_cpu), each seed once per dtype: final returns.

  python benchmarks/bf16_hidden_error.py [--P 1e5] [--seeds 10] [--steps 3e6]
      [--meta benchmarks/results/main_job_sds_cpu/meta_best.npz] [--out benchmarks/results/bf16_hidden_error.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import optim4rl
from optim4rl.evaluation.throughput import machine_info, meta_path

DTYPES = ("float32", "bfloat16")


def _relative(a, b) -> float:
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cosine(a, b) -> float:
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def meta_gradient_error(meta, size: int) -> dict:
  """Relative error and cosine of the bfloat16 meta-gradient against float32's."""
  grads = {}
  for dtype in DTYPES:
    initial, grad = meta_path(f"cpu:{dtype}", size)
    at = initial if meta is None else meta
    grads[dtype] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad(at))])
  return {"relative_l2": _relative(grads["bfloat16"], grads["float32"]),
          "cosine": _cosine(grads["bfloat16"], grads["float32"])}


def drift(meta, size: int, checkpoints=(1, 10, 100, 1000)) -> list[dict]:
  """Direction and parameter error of bfloat16 after n updates of the quadratic."""
  target = jnp.linspace(-1.0, 1.0, size, dtype=jnp.float32)
  runs = {}
  for dtype in DTYPES:
    tx = optim4rl.learned_optimizer(meta, rule="optim4rl", learning_rate=1e-2, backend="cpu",
                                    hidden_dtype=dtype)

    @functools.partial(jax.jit, static_argnums=2)
    def advance(p, s, n):
      def body(carry, _):
        p, s, _ = carry
        u, s = tx.update(p - target, s)
        return (p + u, s, u), None
      (p, s, u), _ = jax.lax.scan(body, (p, s, jnp.zeros_like(p)), None, length=n)
      return p, s, u
    p = jnp.zeros_like(target)
    s, done, rows = tx.init(p), 0, []
    for n in checkpoints:
      p, s, u = advance(p, s, n - done)
      done = n
      rows.append((np.asarray(u), np.asarray(p)))
    runs[dtype] = rows
  return [{"updates": n, "direction_relative_l2": _relative(b[0], f[0]),
           "params_relative_l2": _relative(b[1], f[1])}
          for n, f, b in zip(checkpoints, runs["float32"], runs["bfloat16"])]


def training(meta, seeds: int, steps: int, lr: float) -> dict:
  """Final returns of A2C agents trained with each hidden-state dtype (same seeds)."""
  from optim4rl.envs import gridworld
  from optim4rl.training.a2c import train
  from optim4rl.training.curve import final_returns
  world = gridworld.make("small_dense_short")
  out = {}
  for dtype in DTYPES:
    tx = optim4rl.learned_optimizer(meta, rule="optim4rl", learning_rate=lr, backend="cpu",
                                    hidden_dtype=dtype)
    final = final_returns(train(world, tx, steps=steps, seeds=range(seeds)))
    out[dtype] = {"final_returns": final.tolist(), "mean": float(final.mean()),
                  "std": float(final.std())}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--P", type=float, default=1e5)
  parser.add_argument("--seeds", type=int, default=10)
  parser.add_argument("--steps", type=float, default=3e6)
  parser.add_argument("--lr", type=float, default=2.5e-2)
  parser.add_argument("--meta", default="benchmarks/results/main_job_sds_cpu/meta_best.npz")
  parser.add_argument("--out", default="benchmarks/results/bf16_hidden_error.json")
  args = parser.parse_args()
  size = int(args.P)
  trained, rule = optim4rl.load_meta_params(args.meta)
  if rule != "optim4rl":
    raise ValueError(f"{args.meta} holds rule {rule!r}; this compares Optim4RL")
  result = {"benchmark": "bf16_hidden_error", "P": size, "meta": args.meta,
            "machine": machine_info()}
  result["meta_gradient"] = {"random": meta_gradient_error(None, size),
                             "meta_trained": meta_gradient_error(trained, size)}
  for name, row in result["meta_gradient"].items():
    print(f"meta-gradient, {name:12s} meta: relative L2 error {row['relative_l2']:.2e}, "
          f"cosine {row['cosine']:.6f}")
  result["drift"] = drift(trained, size)
  for row in result["drift"]:
    print(f"after {row['updates']:5d} updates: direction error {row['direction_relative_l2']:.2e}, "
          f"parameters {row['params_relative_l2']:.2e}")
  result["training"] = training(trained, args.seeds, int(args.steps), args.lr)
  for dtype, row in result["training"].items():
    print(f"A2C small_dense_short, {dtype:8s}: final return {row['mean']:.2f} +- {row['std']:.2f} "
          f"({args.seeds} seeds, {args.steps:.0e} steps, lr {args.lr})")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
