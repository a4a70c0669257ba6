"""Command line: meta-train, train, evaluate, gradients, bench.

  python -m optim4rl meta-train --worlds small_dense_short --out runs/sds
  python -m optim4rl meta-train --task ant --units 2048 --reset-interval 512 --out runs/ant
  python -m optim4rl train --world small_dense_short --optimizer adam
  python -m optim4rl evaluate --task ant --optimizers adam@3e-4 optim4rl:runs/six/meta.npz@3e-4
  python -m optim4rl evaluate --world small_dense_short --optimizers adam@3e-2 adam@5e-2:linear
  python -m optim4rl gradients --worlds big_dense_long --tasks ant humanoid
  python -m optim4rl bench --sizes 1e5 1e6
"""
from __future__ import annotations

import argparse
import hashlib
import re
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


def _task_name(text: str) -> str:
  from optim4rl.envs import brax_tasks
  try:
    brax_tasks.settings(text)
  except ValueError as err:  # unknown, or used by the paper and since removed from Brax
    raise argparse.ArgumentTypeError(str(err)) from None
  return text


def _eval_envs(args) -> int:
  """Brax evaluation envs per chunk: --eval-envs, else Brax's 128 (16 at CPU size)."""
  eval_envs = getattr(args, "eval_envs", 0)
  return (16 if args.small else 128) if eval_envs is None else eval_envs


def _trainer(args, steps: int, chunks: int | None = None):
  """(environment name, run(tx, seeds=, progress=, ...) -> Curve, optimizer updates per run)
  for --world or --task, in `chunks` scans (default: the trainer's)."""
  from optim4rl.training import a2c as train
  if args.task:
    from optim4rl.training import ppo as train_ppo
    settings = train_ppo.small(args.task) if args.small else None
    eval_envs = _eval_envs(args)
    chunks = chunks or train_ppo.CHUNKS
    run = lambda tx, **kw: train_ppo.train(args.task, tx, steps=steps, settings=settings,
                                           eval_envs=eval_envs, chunks=chunks, **kw)
    return args.task, run, train_ppo.optimizer_updates(args.task, steps, settings, chunks)
  from optim4rl import envs
  world = envs.make(args.world)
  chunks = chunks or train.CHUNKS
  run = lambda tx, **kw: train.train(world, tx, steps=steps, num_envs=args.envs, chunks=chunks,
                                     **kw)
  return args.world, run, train.optimizer_updates(steps, args.envs, chunks=chunks)


def _optimizer(spec: str, env_name: str, backend, task: bool, updates: int,
               lr: float | None = None):
  """The optax optimizer of a spec with an optional "@LR[:SCHEDULE]" ("adam@3e-3",
  "adam@5e-2:linear") over a run of `updates` optimizer updates; `lr` overrides LR, and
  without either the environment's default learning rate applies."""
  from optim4rl.evaluation import specs as ev
  name, spec_lr, schedule = ev.split_spec(spec)
  if lr is None:
    try:
      lr = float(spec_lr) if spec_lr else ev.default_learning_rate(env_name)
    except ValueError:
      raise ValueError(f"optimizer {spec!r}: {spec_lr!r} is not a learning rate") from None
  # Brax's PPO runs its optimizers unclipped; the paper's gridworld configs clip at 1.
  return ev.make_optimizer(name, lr, backend=backend, clip=None if task else 1.0,
                           schedule=schedule or "constant", updates=updates)


def _meta_file_hash(spec: str) -> str | None:
  """SHA-256 of the meta-parameter file a learned optimizer's spec names (None: classical)."""
  from optim4rl.evaluation.specs import split_spec
  _, _, path = split_spec(spec)[0].partition(":")
  return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


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


def _meta_config(args):
  from optim4rl.evaluation.specs import default_learning_rate
  common = dict(rule=args.rule, units=args.units, envs_per_unit=args.envs_per_unit,
                reset_interval=args.reset_interval, inner_updates=args.inner_updates,
                iterations=args.iterations, meta_lr=args.meta_lr,
                meta_grad_clip=args.meta_grad_clip, max_norm=args.max_norm,
                average_decay=args.average_decay, seed=args.seed,
                backend=args.backend)
  if args.task:
    if args.validate_every:
      raise ValueError("--validate-every: validation trains A2C agents on a gridworld; it is "
                       "not available for PPO meta-training (--task)")
    if args.outer_loss != "actor":
      raise ValueError("--outer-loss chooses the A2C outer loss; PPO meta-training's outer loss "
                       "is the PPO loss (Appendix C)")
    if args.agent_schedule != "constant":
      raise ValueError("--agent-schedule applies to A2C meta-training on gridworlds")
    from optim4rl.meta.ppo import PPOMetaConfig
    if args.lrs and len(args.lrs) != 1:
      raise ValueError("PPO meta-training takes one agent learning rate")
    lr = args.lrs[0] if args.lrs else default_learning_rate(args.task)
    return PPOMetaConfig(task=args.task, agent_lr=lr, batch_size=args.batch_size, **common)
  from optim4rl.meta.a2c import MetaConfig
  lrs = tuple(args.lrs) if args.lrs else tuple(default_learning_rate(w) for w in args.worlds)
  return MetaConfig(worlds=tuple(args.worlds), agent_lrs=lrs, reward_scale=args.reward_scale,
                    outer_loss=args.outer_loss, agent_schedule=args.agent_schedule,
                    validate_every=args.validate_every,
                    validate_seeds=args.validate_seeds,
                    validate_steps=int(args.validate_steps), **common)


def cmd_meta_train(args):
  from optim4rl.meta.loop import meta_train
  cfg = _meta_config(args)
  mesh = None
  if args.devices > 1:
    import jax
    from optim4rl.meta.pipeline import units_mesh
    if args.devices > len(jax.devices()):
      raise ValueError(f"--devices {args.devices}: only {len(jax.devices())} devices are visible")
    mesh = units_mesh(jax.devices()[:args.devices])
  names = [args.task] if args.task else cfg.worlds
  bar = _bar(cfg.iterations, f"meta-train {'+'.join(names)}", "it")

  validation = {}

  def report(iteration, row):
    bar.update(iteration - bar.n)
    rets = [v for k, v in row.items() if k.startswith("return_")]
    if "validation" in row:  # the latest score stays on the bar
      validation["val"] = f"{row['validation']:.2f}"
    bar.set_postfix(ret=f"{sum(rets) / len(rets):.2f}", gnorm=f"{row['meta_grad_norm']:.2e}",
                    **validation)

  meta_train(cfg, args.out, checkpoint_every=args.checkpoint_every, progress=report, mesh=mesh)
  bar.close()
  out = Path(args.out)
  print(f"meta-parameters: {out / 'meta.npz'}  (log: {out / 'log.csv'})")
  if getattr(cfg, "validate_every", 0):
    print(f"best validated: {out / 'meta_best.npz'}  (scores: {out / 'validation.csv'})")


def cmd_train(args):
  steps = int(args.steps)
  name, run, updates = _trainer(args, steps)
  tx = _optimizer(args.optimizer, name, args.backend, bool(args.task), updates, lr=args.lr)
  curve = run(tx, seeds=(args.seed,), progress=_train_progress(steps, f"{args.optimizer} on {name}"))
  print(f"final return ({args.optimizer}, seed {args.seed}): "
        f"{curve.returns[0, -1]:.3f} after {curve.steps[-1]} steps")


def cmd_evaluate(args):
  from optim4rl.evaluation import compare, metrics, report
  from optim4rl.training.checkpoint import RunCheckpoint
  steps = int(args.steps)
  name, run, updates = _trainer(args, steps)
  # All built before any training, so a bad spec fails at once.
  optimizers = {spec: _optimizer(spec, name, args.backend, bool(args.task), updates)
                for spec in args.optimizers}
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  checkpoints = {}

  def checkpoint(spec):  # one resumable run per optimizer, named by everything it depends on
    identity = dict(environment=name, steps=steps, seeds=args.seeds, optimizer=spec,
                    backend=args.backend, meta_sha256=_meta_file_hash(spec))
    identity.update(dict(small=args.small, eval_envs=_eval_envs(args)) if args.task
                    else dict(envs=args.envs))
    slug = re.sub(r"[^A-Za-z0-9.@-]+", "_", spec)[-60:]
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    checkpoints[spec] = RunCheckpoint(out / "checkpoints" / f"{slug}-{digest}", identity)
    return checkpoints[spec]

  results = compare.evaluate(run, optimizers, seeds=args.seeds, checkpoint=checkpoint,
                        progress=lambda label: _train_progress(steps, f"{label} x{args.seeds} seeds"))
  for spec, ckpt in checkpoints.items():
    if ckpt.resumed_after:
      print(f"{spec}: resumed after chunk {ckpt.resumed_after} of {ckpt.chunks} "
            f"from {ckpt.directory}")
  report.write_csv(results, out / "curves.csv")
  agent = "PPO" if args.task else "A2C"
  report.plot(results, out / "returns.png", f"{agent} on {name}, {args.seeds} seeds")
  print(f"\n{name}, {steps:,} steps per agent")
  print(report.table(results))
  if len(metrics.best_per_optimizer(results)) < len(results):  # an optimizer in several settings
    print("\n" + report.best_table(results))
  print(f"plot: {out / 'returns.png'}  curves: {out / 'curves.csv'}")


def cmd_gradients(args):
  """Agent-gradient distributions per task and stage, and how much the worlds cover the tasks."""
  import numpy as np
  from optim4rl.evaluation import gradients as G
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  hists = {}
  jobs = [("world", w, int(args.world_steps)) for w in args.worlds]
  jobs += [("task", t, int(args.task_steps)) for t in args.tasks]
  for kind, name, steps in jobs:
    ns = argparse.Namespace(world=name if kind == "world" else None,
                            task=name if kind == "task" else None, small=args.small, envs=args.envs)
    _, run, updates = _trainer(ns, steps, chunks=12)
    tx = _optimizer(args.optimizer, name, args.backend, kind == "task", updates)
    curve = run(tx, seeds=(args.seed,), grad_stat=G.log_histogram,
                progress=_train_progress(steps, f"gradients of {name}"))
    for stage, counts in zip(("early", "middle", "late"), G.stages(curve.stats)):
      hists[f"{name}/{stage}"] = counts
  np.savez(out / "histograms.npz", edges=G.EDGES, **hists)
  total = lambda name: sum(v for k, v in hists.items() if k.startswith(name + "/"))
  worlds = np.stack([total(w) for w in args.worlds]) if args.worlds else None
  lines = []
  for name in args.tasks or args.worlds:
    curves = {f"{name}, {k.split('/')[1]}": v for k, v in hists.items() if k.startswith(name + "/")}
    if worlds is not None and name not in args.worlds:
      curves["all gridworlds"] = (worlds / worlds.sum(1, keepdims=True)).mean(0)  # equal weights
      lines.append(f"{name:<26} {G.coverage(total(name), worlds):8.3f}  " + "  ".join(
          f"{G.coverage(total(name), total(w)):.3f}" for w in args.worlds))
    G.plot(curves, out / f"gradients_{name}.png", f"agent-gradients ({args.optimizer})")
  if lines:
    print(f"\nshare of each task's agent-gradients inside the support of the gridworlds' "
          f"(all; {', '.join(args.worlds)})")
    print("\n".join(lines))
  print(f"histograms: {out / 'histograms.npz'}  plots: {out}/gradients_*.png")


def cmd_bench(args):
  from optim4rl.evaluation.throughput import throughput_table
  print(throughput_table([int(float(p)) for p in args.sizes], args.backends, args.rule))


def _add_environment(p):
  where = p.add_mutually_exclusive_group()
  where.add_argument("--world", type=_world_name, default="small_dense_short")
  where.add_argument("--task", type=_task_name, help="a Brax task (PPO) instead of a gridworld")
  p.add_argument("--envs", type=_positive_int, default=512, help="gridworld envs per agent")
  p.add_argument("--small", action="store_true",
                 help="Brax: CPU-size PPO settings (64 envs, 4 minibatches of 64, 2 epochs)")
  p.add_argument("--eval-envs", type=int, default=None,
                 help="Brax: score each chunk by deterministic episodes in this many envs, as "
                      "Brax does (default 128, 16 with --small; 0: returns of the training "
                      "episodes)")


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="optim4rl", description="Learned optimizers for RL.")
  sub = ap.add_subparsers(dest="command", required=True)

  p = sub.add_parser("meta-train", help="meta-train a learned optimizer: A2C on gridworlds "
                     "(--worlds) or PPO on a Brax task (--task)")
  where = p.add_mutually_exclusive_group()
  where.add_argument("--worlds", nargs="+", type=_world_name, default=["small_dense_short"])
  where.add_argument("--task", type=_task_name, help="a Brax task: PPO meta-training")
  p.add_argument("--batch-size", type=_positive_int, default=8,
                 help="PPO: trajectories per minibatch per unit")
  p.add_argument("--devices", type=_positive_int, default=1,
                 help="split the units over this many devices")
  p.add_argument("--lrs", nargs="+", type=float, help="agent learning rate(s), one per world")
  p.add_argument("--rule", default="optim4rl")
  p.add_argument("--units", type=_positive_int, default=512)
  p.add_argument("--envs-per-unit", type=_positive_int, default=1)
  p.add_argument("--reset-interval", type=_positive_int, default=256)
  p.add_argument("--inner-updates", type=_positive_int, default=4)
  p.add_argument("--outer-loss", default="actor",
                 help="A2C outer loss: actor (the actor loss, Appendix C) or total (the whole "
                      "A2C loss)")
  p.add_argument("--agent-schedule", default="constant",
                 help="A2C agents' steps: constant, or linear (decayed to 0 over each unit's "
                      "life of reset-interval x inner-updates updates, and over validation runs)")
  p.add_argument("--iterations", type=_positive_int, default=600)
  p.add_argument("--meta-lr", type=float, default=1e-3)
  p.add_argument("--meta-grad-clip", type=float, default=1.0)
  p.add_argument("--max-norm", type=float, default=-1.0)
  p.add_argument("--average-decay", type=float, default=0.0,
                 help="> 0: also save an exponential moving average of the meta-parameters "
                      "(meta_avg.npz) with this decay per iteration")
  p.add_argument("--validate-every", type=int, default=0,
                 help="> 0: every this many iterations, train fresh A2C agents on the first "
                      "world with the current meta-parameters (their moving average with "
                      "--average-decay; validation seeds, apart from evaluation's) and keep "
                      "the best as meta_best.npz")
  p.add_argument("--validate-seeds", type=_positive_int, default=4)
  p.add_argument("--validate-steps", type=float, default=3e6)
  p.add_argument("--reward-scale", default="auto")
  p.add_argument("--checkpoint-every", type=_positive_int, default=50)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--backend", default=None)
  p.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint)")
  p.set_defaults(run=cmd_meta_train)

  p = sub.add_parser("train", help="train one agent (A2C on a gridworld, PPO on a Brax task)")
  _add_environment(p)
  p.add_argument("--optimizer", default="adam",
                 help="adam | rmsprop | sgd | RULE:PATH, optionally @LR[:SCHEDULE]")
  p.add_argument("--lr", type=float)
  p.add_argument("--steps", type=float, default=3e6)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--backend", default=None)
  p.set_defaults(run=cmd_train)

  p = sub.add_parser("evaluate", help="compare optimizers over seeds: table, CSV and plot")
  _add_environment(p)
  p.add_argument("--optimizers", nargs="+", default=["adam"],
                 help="specs, optionally with a learning rate and schedule (constant, linear): "
                      "adam@1e-2 adam@5e-2:linear optim4rl:meta.npz@5e-2:linear")
  p.add_argument("--seeds", type=_positive_int, default=10)
  p.add_argument("--steps", type=float, default=3e6)
  p.add_argument("--backend", default=None)
  p.add_argument("--out", default="runs/evaluate")
  p.set_defaults(run=cmd_evaluate)

  p = sub.add_parser("gradients", help="agent-gradient distributions of gridworlds and Brax "
                     "tasks, and how much the worlds' cover the tasks'")
  p.add_argument("--worlds", nargs="*", type=_world_name, default=["big_dense_long"])
  p.add_argument("--tasks", nargs="*", type=_task_name, default=["ant", "humanoid"])
  p.add_argument("--optimizer", default="adam", help="a spec, optionally @LR[:SCHEDULE]")
  p.add_argument("--world-steps", type=float, default=3e6)
  p.add_argument("--task-steps", type=float, default=1e7)
  p.add_argument("--envs", type=_positive_int, default=512, help="gridworld envs per agent")
  p.add_argument("--small", action="store_true", help="CPU-size PPO settings")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--backend", default=None)
  p.add_argument("--out", default="runs/gradients")
  p.set_defaults(run=cmd_gradients)

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
