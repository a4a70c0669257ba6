"""Where a learned rule falls short of Adam in real A2C training (not a test).

1. Step sizes: one agent (512 worlds) per optimizer; for each layer, the RMS of a step in units
   of the learning rate, in the first, middle and last tenth of training. Adam's steps shrink
   as the gradients turn to noise; a rule that does not anneal keeps stepping as far.
2. Layer swap (--swap): 10 agents each with the learned rule on one group of layers (torso,
   policy head, value head) and Adam on the rest; final return as evaluation reports it.
3. Imposed annealing (--decay): 10 agents per optimizer (Adam and each rule) with every step
   scaled by a factor falling linearly from 1 to 0 over training.

  python benchmarks/layer_study.py RULE:PATH@LR [...] [--adam-lr 3e-2] [--swap] [--decay]
"""
from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim4rl.agents import a2c
from optim4rl.envs import gridworld as gw
from optim4rl.evaluation.compare import evaluate
from optim4rl.evaluation.specs import make_optimizer
from optim4rl.evaluation.throughput import machine_info
from optim4rl.training.a2c import init_agent, optimizer_updates, train, update

# ActorCritic's Dense layers on a small world: the torso, then the policy and value heads.
GROUPS = {"Dense_0": "torso", "Dense_1": "policy", "Dense_2": "value"}
ENVS = 512  # worlds per agent, as evaluation trains them


def layer_group(path) -> str:
  name = jax.tree_util.keystr(path)
  return next(group for layer, group in GROUPS.items() if f"'{layer}'" in name)


def step_sizes(world: gw.World, tx, lr: float, steps: int, stages: int = 10):
  """{group: [step RMS / lr in each tenth of training]} for one agent (seed 0)."""
  cfg = a2c.A2CConfig()
  per_stage = max(1, steps // (ENVS * cfg.rollout * stages))

  def one(state, _):
    new, _ = update(world, tx, cfg, state)
    sq = jax.tree_util.tree_map(lambda a, b: jnp.sum((a - b) ** 2), new.params, state.params)
    return new, sq

  stage = jax.jit(lambda s: jax.lax.scan(one, s, length=per_stage))
  state = init_agent(world, tx, jax.random.PRNGKey(0), ENVS)
  counts = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    counts[layer_group(path)] = counts.get(layer_group(path), 0) + leaf.size
  rms = {group: [] for group in counts}
  for _ in range(stages):
    state, sq = stage(state)
    total = {group: 0.0 for group in counts}
    for path, leaf in jax.tree_util.tree_leaves_with_path(sq):
      total[layer_group(path)] += float(jnp.sum(leaf))
    for group in counts:
      rms[group].append(float(np.sqrt(total[group] / (counts[group] * per_stage))) / lr)
  return rms


def swapped(spec: str, lr: float, adam_lr: float, group: str):
  """The learned rule on `group`'s layers, Adam on the others."""
  labels = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: "learned" if layer_group(path) == group else "adam", params)
  return optax.multi_transform({"learned": make_optimizer(spec, lr),
                                "adam": make_optimizer("adam", adam_lr)}, labels)


def final_return(world: gw.World, tx, steps: int) -> dict:
  """Mean and s.e. of 10 agents' final returns, as evaluation reports them."""
  (result,) = evaluate(functools.partial(train, world, steps=steps, num_envs=ENVS), {"": tx},
                       seeds=10)
  return {"final_return_mean": result.mean, "final_return_se": result.stderr}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("rules", nargs="+", help="learned optimizers as RULE:PATH@LR")
  ap.add_argument("--world", default="small_dense_short")
  ap.add_argument("--adam-lr", type=float, default=3e-2)
  ap.add_argument("--steps", type=float, default=3e6)
  ap.add_argument("--swap", action="store_true", help="also run the layer swap (10 agents each)")
  ap.add_argument("--decay", action="store_true",
                  help="also train with steps decayed linearly to 0 (10 agents each)")
  ap.add_argument("--out", default="benchmarks/results/layer_study_cpu.json")
  args = ap.parse_args()
  world, steps = gw.make(args.world), int(args.steps)
  if world.is_big:
    raise SystemExit("layer_study: the layer groups are those of a small world's network")
  runs = [("adam", args.adam_lr)]
  for rule in args.rules:
    spec, _, lr = rule.rpartition("@")
    runs.append((spec, float(lr)))

  rows = []
  print("step RMS / lr in the first, middle and last tenth of training")
  for spec, lr in runs:
    rms = step_sizes(world, make_optimizer(spec, lr), lr, steps)
    rows.append({"optimizer": spec, "lr": lr, "step_rms_over_lr": rms})
    for group, r in rms.items():
      print(f"{spec:<70} {group:<7} {r[0]:6.3f} {r[len(r) // 2]:6.3f} {r[-1]:6.3f}")

  swaps = []
  if args.swap:
    print("final return (10 agents) with the learned rule on one group, Adam on the rest")
    for spec, lr in runs[1:]:
      for group in GROUPS.values():
        swaps.append({"optimizer": spec, "lr": lr, "learned_on": group,
                      **final_return(world, swapped(spec, lr, args.adam_lr, group), steps)})
        print(f"{spec:<70} {group:<7} {swaps[-1]['final_return_mean']:7.3f} "
              f"+- {swaps[-1]['final_return_se']:.3f}")

  decayed = []
  if args.decay:
    print("final return (10 agents) with steps decayed linearly to 0 over training")
    for spec, lr in runs:
      decayed.append({"optimizer": spec, "lr": lr,
                      **final_return(world, make_optimizer(spec, lr, schedule="linear",
                                                           updates=optimizer_updates(steps, ENVS)),
                                     steps)})
      print(f"{spec:<70} lr {lr:<7g} {decayed[-1]['final_return_mean']:7.3f} "
            f"+- {decayed[-1]['final_return_se']:.3f}")

  with open(args.out, "w") as f:
    json.dump({"benchmark": "layer_study", "machine": machine_info(), "world": args.world,
               "steps": steps, "adam_lr": args.adam_lr, "step_sizes": rows,
               "layer_swap": swaps, "linear_decay": decayed}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
