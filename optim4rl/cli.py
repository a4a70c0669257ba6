"""Command line: meta-train, train, evaluate, gradients, bench.

  python -m optim4rl meta-train --worlds small_dense_short --out runs/sds
  python -m optim4rl meta-train --task ant --units 2048 --reset-interval 512 --out runs/ant
  python -m optim4rl train --world small_dense_short --optimizer adam
  python -m optim4rl evaluate --task ant --optimizers adam@3e-4 optim4rl:runs/six/meta.npz@3e-4
  python -m optim4rl evaluate --world small_dense_short --optimizers adam@3e-2 adam@5e-2:linear
  python -m optim4rl evaluate --task Breakout-MinAtar --steps 1e7 --seeds 4 \
      --optimizers open:breakout adam@5e-3:linear
  python -m optim4rl gradients --worlds big_dense_long --tasks ant humanoid
  python -m optim4rl bench --sizes 1e5 1e6

Commands parse their flags, call the library (optim4rl.evaluation, optim4rl.meta) and print.
A user's mistake (a bad flag, or a ValueError or FileNotFoundError of the library) exits 2
with one line, before anything is written; a meta-training run that diverges (non-finite
meta-gradients or meta-parameters) stops with one line and exit 1, its last checkpoint kept.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm import tqdm

from optim4rl.backends.registry import HIDDEN_DTYPE_NAMES


def _number(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
  return value


def _integer(text: str, minimum: int) -> int:
  value = _number(text)  # "3e6" is an integer too
  if value != int(value):
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
  if value < minimum:
    raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
  return int(value)


def _integer_any(text: str) -> int:
  return _integer(text, -2**63)


def _positive_int(text: str) -> int:
  return _integer(text, 1)


def _count(text: str) -> int:
  return _integer(text, 0)


def _unit_chunk(text: str) -> int | str:
  return text if text == "auto" else _positive_int(text)


def _positive_number(text: str) -> float:
  value = _number(text)
  if not value > 0:
    raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
  return value


def _world_name(text: str) -> str:
  from optim4rl.envs.gridworld import WORLD_NAMES
  if text not in WORLD_NAMES:
    raise argparse.ArgumentTypeError(f"unknown gridworld {text!r}; choose from "
                                     f"{', '.join(WORLD_NAMES)}")
  return text


def _task_name(text: str) -> str:
  from optim4rl.envs import brax_tasks
  try:
    brax_tasks.settings(text)
  except ValueError as err:  # unknown, or used by the paper and since removed from Brax
    raise argparse.ArgumentTypeError(str(err)) from None
  return text


def _any_task(text: str) -> str:
  """A Brax task or a gymnax one (MinAtar: "Breakout-MinAtar")."""
  from optim4rl.envs import gymnax_tasks
  if text in gymnax_tasks.TASKS:
    return text
  try:
    return _task_name(text)
  except argparse.ArgumentTypeError as err:
    raise argparse.ArgumentTypeError(f"{err}; gymnax tasks: {', '.join(sorted(gymnax_tasks.TASKS))}"
                                     ) from None


def _trainer(args, steps: int):
  """The trainer of --world or --task with the environment flags (evaluation.trainers)."""
  from optim4rl.evaluation import trainers
  return trainers.make_trainer(args.task or args.world, steps=steps, envs=args.envs,
                               small=args.small, eval_envs=args.eval_envs)


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
  """(the outer loop's MetaConfig, the task plug-in's config) of the meta-train flags."""
  from optim4rl.evaluation.specs import default_learning_rate
  from optim4rl.meta.config import MetaConfig
  if args.task:
    if args.validate_every:
      raise ValueError("--validate-every: validation trains A2C agents on a gridworld; it is "
                       "not available for PPO meta-training (--task)")
    if args.outer_loss != "actor":
      raise ValueError("--outer-loss chooses the A2C outer loss; PPO meta-training's outer loss "
                       "is the PPO loss (Appendix C)")
    if args.agent_schedule != "constant":
      raise ValueError("--agent-schedule applies to A2C meta-training on gridworlds")
  cfg = MetaConfig(rule=args.rule, units=args.units, envs_per_unit=args.envs_per_unit,
                   reset_interval=args.reset_interval, inner_updates=args.inner_updates,
                   iterations=args.iterations, meta_lr=args.meta_lr,
                   meta_grad_clip=args.meta_grad_clip, max_norm=args.max_norm,
                   average_decay=args.average_decay, validate_every=args.validate_every,
                   seed=args.seed, backend=args.backend, hidden_dtype=args.hidden_dtype)
  if args.task:
    from optim4rl.meta.ppo import BraxConfig
    if args.lrs and len(args.lrs) != 1:
      raise ValueError("PPO meta-training takes one agent learning rate")
    lr = args.lrs[0] if args.lrs else default_learning_rate(args.task)
    return cfg, BraxConfig(task=args.task, agent_lr=lr, batch_size=args.batch_size)
  from optim4rl.meta.a2c import GridworldConfig
  lrs = tuple(args.lrs) if args.lrs else tuple(default_learning_rate(w) for w in args.worlds)
  return cfg, GridworldConfig(worlds=tuple(args.worlds), agent_lrs=lrs,
                              reward_scale=args.reward_scale, outer_loss=args.outer_loss,
                              agent_schedule=args.agent_schedule,
                              validate_seeds=args.validate_seeds,
                              validate_steps=args.validate_steps)


def cmd_meta_train(args):
  from optim4rl.meta.loop import meta_train
  cfg, task = _meta_config(args)
  mesh = None
  if args.devices > 1:
    import jax
    from optim4rl.meta.pipeline import units_mesh
    if args.devices > len(jax.devices()):
      raise ValueError(f"--devices {args.devices}: only {len(jax.devices())} devices are visible")
    mesh = units_mesh(jax.devices()[:args.devices])
  names = [args.task] if args.task else args.worlds
  bars, validation = [], {}  # the bar opens with the first row: errors come before it

  def report(iteration, row):
    if not bars:
      bars.append(_bar(cfg.iterations, f"meta-train {'+'.join(names)}", "it"))
    bar = bars[0]
    bar.update(iteration - bar.n)
    if not row:  # the run has started (and may be resuming at `iteration`)
      return
    rets = [v for k, v in row.items() if k.startswith("return_")]
    if "validation" in row:  # the latest score stays on the bar
      validation["val"] = f"{row['validation']:.2f}"
    bar.set_postfix(ret=f"{sum(rets) / len(rets):.2f}", gnorm=f"{row['meta_grad_norm']:.2e}",
                    **validation)

  meta_train(cfg, task, args.out, checkpoint_every=args.checkpoint_every,
             log_every=args.log_every, progress=report, mesh=mesh, unit_chunk=args.unit_chunk)
  for bar in bars:
    bar.close()
  out = Path(args.out)
  print(f"meta-parameters: {out / 'meta.npz'}  (log: {out / 'log.csv'})")
  if cfg.validate_every:
    print(f"best validated: {out / 'meta_best.npz'}  (scores: {out / 'validation.csv'})")


def cmd_train(args):
  from optim4rl.evaluation import specs
  steps = args.steps
  trainer = _trainer(args, steps)
  tx = specs.optimizer_for(args.optimizer, trainer.environment, updates=trainer.updates,
                           open_plan=trainer.open_plan,
                           backend=args.backend, learning_rate=args.lr)
  curve = trainer.run(tx, seeds=(args.seed,),
                      progress=_train_progress(steps, f"{args.optimizer} on {trainer.environment}"))
  print(f"final return ({args.optimizer}, seed {args.seed}): "
        f"{curve.returns[0, -1]:.3f} after {curve.steps[-1]} steps")


def cmd_evaluate(args):
  from optim4rl.evaluation import compare, metrics, report
  steps = args.steps
  trainer = _trainer(args, steps)
  name, out = trainer.environment, Path(args.out)
  # Specs are checked before anything is written; the training holds out/.lock.
  results, checkpoints = compare.evaluate_specs(
      trainer, args.optimizers, seeds=args.seeds, directory=out, backend=args.backend,
      progress=lambda label: _train_progress(steps, f"{label} x{args.seeds} seeds"))
  for spec, ckpt in checkpoints.items():
    if ckpt.resumed_after:
      print(f"{spec}: resumed after chunk {ckpt.resumed_after} of {ckpt.chunks} "
            f"from {ckpt.directory}")
  report.write_csv(results, out / "curves.csv")
  report.plot(results, out / "returns.png", f"{trainer.agent} on {name}, {args.seeds} seeds")
  print(f"\n{name}, {steps:,} steps per agent")
  print(report.table(results))
  if len(metrics.best_per_optimizer(results)) < len(results):  # an optimizer in several settings
    print("\n" + report.best_table(results))
  print(f"plot: {out / 'returns.png'}  curves: {out / 'curves.csv'}")


def cmd_gradients(args):
  """Agent-gradient distributions per task and stage, and how much the worlds cover the tasks."""
  from optim4rl.evaluation import gradients
  study = gradients.gradient_study(
      args.worlds, args.tasks, args.out, optimizer=args.optimizer,
      world_steps=args.world_steps, task_steps=args.task_steps, envs=args.envs,
      small=args.small, seed=args.seed, backend=args.backend,
      progress=lambda name, steps: _train_progress(steps, f"gradients of {name}"))
  table = gradients.coverage_table(study)
  if table:
    print("\n" + table)
  print(f"histograms: {study.histogram_file}  plots: {Path(args.out)}/gradients_*.png")


def cmd_bench(args):
  from optim4rl.evaluation.throughput import throughput_table
  print(throughput_table([int(float(p)) for p in args.sizes], args.backends, args.rule))


def _add_environment(p):
  where = p.add_mutually_exclusive_group()
  where.add_argument("--world", type=_world_name, default="small_dense_short")
  where.add_argument("--task", type=_any_task,
                     help="a Brax task or a gymnax one (Breakout-MinAtar, ...; PPO) instead of a "
                          "gridworld")
  p.add_argument("--envs", type=_positive_int, default=512, help="gridworld envs per agent")
  p.add_argument("--small", action="store_true",
                 help="Brax: CPU-size PPO settings (64 envs, 4 minibatches of 64, 2 epochs)")
  p.add_argument("--eval-envs", type=_count, default=None,
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
  p.add_argument("--lrs", nargs="+", type=_positive_number, help="agent learning rate(s), one per world")
  p.add_argument("--rule", default="optim4rl")
  p.add_argument("--units", type=_positive_int, default=512)
  p.add_argument("--unit-chunk", type=_unit_chunk, default="auto",
                 help="units of a device run at once, their meta-gradients summed (memory "
                      "bounded by the chunk; the same run): a divisor of the device's units, or "
                      "auto (all up to 64, else as many as fit in half the free memory)")
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
  p.add_argument("--meta-lr", type=_positive_number, default=1e-3)
  p.add_argument("--meta-grad-clip", type=_number, default=1.0,
                 help="clip of the meta-gradient's global norm (<= 0: none)")
  p.add_argument("--max-norm", type=_number, default=-1.0,
                 help="> 0: rescale each task's meta-gradient to this norm")
  p.add_argument("--average-decay", type=_number, default=0.0,
                 help="> 0: also save an exponential moving average of the meta-parameters "
                      "(meta_avg.npz) with this decay per iteration")
  p.add_argument("--validate-every", type=_count, default=0,
                 help="> 0: every this many iterations, train fresh A2C agents on the first "
                      "world with the current meta-parameters (their moving average with "
                      "--average-decay; validation seeds, apart from evaluation's) and keep "
                      "the best as meta_best.npz")
  p.add_argument("--validate-seeds", type=_positive_int, default=4)
  p.add_argument("--validate-steps", type=_positive_int, default=3_000_000)
  p.add_argument("--reward-scale", default="auto")
  p.add_argument("--checkpoint-every", type=_positive_int, default=50)
  p.add_argument("--log-every", type=_positive_int, default=10,
                 help="read the device's metrics (log rows, progress) every this many "
                      "iterations; the iterations in between run without waiting for the host")
  p.add_argument("--seed", type=_integer_any, default=0)
  p.add_argument("--backend", default=None)
  p.add_argument("--hidden-dtype", default="float32", choices=HIDDEN_DTYPE_NAMES,
                 help="the units' optimizer hidden state; bfloat16 halves it and the meta "
                      "path's residuals (arithmetic stays float32; error in docs/results.md)")
  p.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint)")
  p.set_defaults(run=cmd_meta_train)

  p = sub.add_parser("train", help="train one agent (A2C on a gridworld, PPO on a Brax or "
                     "gymnax task)")
  _add_environment(p)
  p.add_argument("--optimizer", default="adam",
                 help="adam | rmsprop | sgd | RULE:PATH, optionally @LR[:SCHEDULE]; or "
                      "open:PATH / open:breakout (OPEN, gymnax tasks)")
  p.add_argument("--lr", type=_positive_number)
  p.add_argument("--steps", type=_positive_int, default=3_000_000)
  p.add_argument("--seed", type=_integer_any, default=0)
  p.add_argument("--backend", default=None)
  p.set_defaults(run=cmd_train)

  p = sub.add_parser("evaluate", help="compare optimizers over seeds: table, CSV and plot")
  _add_environment(p)
  p.add_argument("--optimizers", nargs="+", default=["adam"],
                 help="specs, optionally with a learning rate and schedule (constant, linear): "
                      "adam@1e-2 adam@5e-2:linear optim4rl:meta.npz@5e-2:linear")
  p.add_argument("--seeds", type=_positive_int, default=10)
  p.add_argument("--steps", type=_positive_int, default=3_000_000)
  p.add_argument("--backend", default=None)
  p.add_argument("--out", default="runs/evaluate")
  p.set_defaults(run=cmd_evaluate)

  p = sub.add_parser("gradients", help="agent-gradient distributions of gridworlds and Brax "
                     "tasks, and how much the worlds' cover the tasks'")
  p.add_argument("--worlds", nargs="*", type=_world_name, default=["big_dense_long"])
  p.add_argument("--tasks", nargs="*", type=_task_name, default=["ant", "humanoid"])
  p.add_argument("--optimizer", default="adam", help="a spec, optionally @LR[:SCHEDULE]")
  p.add_argument("--world-steps", type=_positive_int, default=3_000_000)
  p.add_argument("--task-steps", type=_positive_int, default=10_000_000)
  p.add_argument("--envs", type=_positive_int, default=512, help="gridworld envs per agent")
  p.add_argument("--small", action="store_true", help="CPU-size PPO settings")
  p.add_argument("--seed", type=_integer_any, default=0)
  p.add_argument("--backend", default=None)
  p.add_argument("--out", default="runs/gradients")
  p.set_defaults(run=cmd_gradients)

  p = sub.add_parser("bench", help="throughput of the fused optimizer step per backend")
  p.add_argument("--sizes", nargs="+", default=["1e5", "1e6"])
  p.add_argument("--backends", nargs="+", default=None,
                 help="fused-step backends (default: those available here), e.g. cpu "
                      "cpu:bfloat16 (the 16-bit hidden state) reference flax")
  p.add_argument("--rule", default="optim4rl")
  p.set_defaults(run=cmd_bench)
  return ap


def main(argv=None):
  args = parser().parse_args(argv)
  try:
    args.run(args)
  # The library reports a user's mistake (a bad spec, flag, configuration or file) as a
  # ValueError, a missing file as FileNotFoundError; anything else is a bug: its traceback shows.
  except (ValueError, FileNotFoundError) as err:
    print(f"optim4rl {args.command}: error: {err}", file=sys.stderr)
    return 2
  except FloatingPointError as err:  # a run that diverged; its last checkpoint is kept
    print(f"optim4rl {args.command}: stopped: {err}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
