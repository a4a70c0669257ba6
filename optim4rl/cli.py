"""Command line: meta-train, train, evaluate, bench.

  python -m optim4rl meta-train --worlds small_dense_short --out runs/sds
  python -m optim4rl train --world small_dense_short --optimizer adam
  python -m optim4rl evaluate --world small_dense_short --optimizers adam optim4rl:runs/sds/meta.npz
  python -m optim4rl bench --sizes 1e5 1e6
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm


def _positive_int(text: str) -> int:
  value = int(float(text))
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
  return value


def _world_name(text: str) -> str:
  from optim4rl.envs.gridworld import WORLD_NAMES
  if text not in WORLD_NAMES:
    raise argparse.ArgumentTypeError(f"unknown gridworld {text!r}; choose from {', '.join(WORLD_NAMES)}")
  return text


def _bar(total: int, desc: str, unit: str):
  return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
              file=sys.stderr)


def _train_progress(total_steps: int, desc: str):
  bar = _bar(total_steps, desc, "step")

  def report(chunk, env_steps, mean_return):
    bar.update(env_steps - bar.n)
    bar.set_postfix(ret=f"{mean_return:.2f}")
    if env_steps >= bar.total:
      bar.close()
  return report


def cmd_meta_train(args):
  from optim4rl.meta import MetaConfig
  from optim4rl.meta_train import meta_train
  lrs = tuple(args.lrs) if args.lrs else (None,)
  if lrs == (None,):
    from optim4rl.evaluate import default_learning_rate
    lrs = tuple(default_learning_rate(w) for w in args.worlds)
  cfg = MetaConfig(worlds=tuple(args.worlds), agent_lrs=lrs, rule=args.rule, units=args.units,
                   envs_per_unit=args.envs_per_unit, reset_interval=args.reset_interval,
                   inner_updates=args.inner_updates, iterations=args.iterations,
                   meta_lr=args.meta_lr, meta_grad_clip=args.meta_grad_clip,
                   max_norm=args.max_norm, reward_scale=args.reward_scale, seed=args.seed,
                   backend=args.backend)
  bar = _bar(cfg.iterations, f"meta-train {'+'.join(cfg.worlds)}", "it")

  def report(iteration, row):
    bar.update(iteration - bar.n)
    rets = [v for k, v in row.items() if k.startswith("return_")]
    bar.set_postfix(ret=f"{sum(rets) / len(rets):.2f}", gnorm=f"{row['meta_grad_norm']:.2e}")

  meta_train(cfg, args.out, checkpoint_every=args.checkpoint_every, progress=report)
  bar.close()
  print(f"meta-parameters: {Path(args.out) / 'meta.npz'}  (log: {Path(args.out) / 'log.csv'})")


def cmd_train(args):
  from optim4rl import envs
  from optim4rl.evaluate import default_learning_rate, make_optimizer
  from optim4rl.train import train
  world = envs.make(args.world)
  lr = args.lr if args.lr is not None else default_learning_rate(args.world)
  tx = make_optimizer(args.optimizer, lr, backend=args.backend)
  curve = train(world, tx, steps=args.steps, num_envs=args.envs, seeds=(args.seed,),
                progress=_train_progress(int(args.steps), f"{args.optimizer} on {args.world}"))
  print(f"final return ({args.optimizer}, lr {lr:g}, seed {args.seed}): "
        f"{curve.returns[0, -1]:.3f} after {curve.steps[-1]} steps")


def cmd_evaluate(args):
  from optim4rl import envs
  from optim4rl import evaluate as ev
  world = envs.make(args.world)
  optimizers = {}  # built before any training, so a bad spec fails at once
  for spec in args.optimizers:
    name, _, lr = spec.rpartition("@") if "@" in spec else (spec, "", "")  # "adam@3e-3": its lr
    lr = float(lr) if lr else ev.default_learning_rate(args.world)
    optimizers[spec] = ev.make_optimizer(name, lr, backend=args.backend)
  results = ev.evaluate(world, optimizers, seeds=args.seeds, steps=int(args.steps),
                        num_envs=args.envs,
                        progress=lambda label: _train_progress(
                            int(args.steps), f"{label} x{args.seeds} seeds"))
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  ev.write_csv(results, out / "curves.csv")
  ev.plot(results, out / "returns.png", f"A2C on {args.world}, {args.seeds} seeds")
  print(f"\n{args.world}, {int(args.steps):,} steps per agent")
  print(ev.table(results))
  print(f"plot: {out / 'returns.png'}  curves: {out / 'curves.csv'}")


def cmd_bench(args):
  from optim4rl.profile import throughput_table
  print(throughput_table([int(float(p)) for p in args.sizes], args.backends, args.rule))


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="optim4rl", description="Learned optimizers for RL.")
  sub = ap.add_subparsers(dest="command", required=True)

  p = sub.add_parser("meta-train", help="meta-train a learned optimizer on A2C in gridworlds")
  p.add_argument("--worlds", nargs="+", type=_world_name, default=["small_dense_short"])
  p.add_argument("--lrs", nargs="+", type=float, help="agent learning rate(s), one per world")
  p.add_argument("--rule", default="optim4rl")
  p.add_argument("--units", type=_positive_int, default=512)
  p.add_argument("--envs-per-unit", type=_positive_int, default=1)
  p.add_argument("--reset-interval", type=_positive_int, default=256)
  p.add_argument("--inner-updates", type=_positive_int, default=4)
  p.add_argument("--iterations", type=_positive_int, default=600)
  p.add_argument("--meta-lr", type=float, default=1e-3)
  p.add_argument("--meta-grad-clip", type=float, default=1.0)
  p.add_argument("--max-norm", type=float, default=-1.0)
  p.add_argument("--reward-scale", default="auto")
  p.add_argument("--checkpoint-every", type=_positive_int, default=50)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--backend", default=None)
  p.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint)")
  p.set_defaults(run=cmd_meta_train)

  p = sub.add_parser("train", help="train one A2C agent with an optimizer")
  p.add_argument("--world", type=_world_name, default="small_dense_short")
  p.add_argument("--optimizer", default="adam", help="adam | rmsprop | sgd | RULE:PATH")
  p.add_argument("--lr", type=float)
  p.add_argument("--steps", type=float, default=3e6)
  p.add_argument("--envs", type=_positive_int, default=512)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--backend", default=None)
  p.set_defaults(run=cmd_train)

  p = sub.add_parser("evaluate", help="compare optimizers over seeds: table, CSV and plot")
  p.add_argument("--world", type=_world_name, default="small_dense_short")
  p.add_argument("--optimizers", nargs="+", default=["adam"],
                 help="specs, optionally with a learning rate: adam@1e-2 optim4rl:meta.npz")
  p.add_argument("--seeds", type=_positive_int, default=10)
  p.add_argument("--steps", type=float, default=3e6)
  p.add_argument("--envs", type=_positive_int, default=512)
  p.add_argument("--backend", default=None)
  p.add_argument("--out", default="runs/evaluate")
  p.set_defaults(run=cmd_evaluate)

  p = sub.add_parser("bench", help="throughput of the fused optimizer step per backend")
  p.add_argument("--sizes", nargs="+", default=["1e5", "1e6"])
  p.add_argument("--backends", nargs="+", default=None)
  p.add_argument("--rule", default="optim4rl")
  p.set_defaults(run=cmd_bench)
  return ap


def main(argv=None):
  args = parser().parse_args(argv)
  try:
    args.run(args)
  except (ValueError, TypeError, FileNotFoundError) as err:
    print(f"optim4rl {args.command}: error: {err}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
