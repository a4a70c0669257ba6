"""The meta-training loop: iterations over tasks, meta-updates, logs and resumable checkpoints.

A run directory holds config.json, log.csv (one row per iteration), meta.npz (the latest
meta-parameters, loadable by `optim4rl.load_meta_params`), meta_avg.npz (their exponential
moving average, if `average_decay` > 0), with validation (`validate_every` > 0) validation.csv
(the score of each validated iteration) and meta_best.npz (the best-scoring meta-parameters
so far; their moving average is what is scored when one is kept), and checkpoints/ (orbax,
the full state: meta-parameters, meta-optimizer state, every unit's agent, optimizer state and
worlds, the iteration, the PRNG key and the best validation score). Starting a run in a
directory with a checkpoint resumes it.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from optim4rl.meta import pipeline
from optim4rl.meta.a2c import MetaConfig, gridworld_tasks
from optim4rl.meta.tasks import Tasks
from optim4rl.rules import init_meta_params, save_meta_params

LOG_FIELDS = ("iteration", "seconds", "env_steps", "meta_grad_norm")


def _tasks(cfg, mesh) -> Tasks:
  if isinstance(cfg, MetaConfig):
    return gridworld_tasks(cfg, mesh)
  from optim4rl.meta import ppo as meta_ppo  # imports Brax
  if not isinstance(cfg, meta_ppo.PPOMetaConfig):
    raise TypeError(f"expected a MetaConfig or PPOMetaConfig, got {type(cfg).__name__}")
  return meta_ppo.tasks(cfg, mesh)


def _initial_state(cfg, tasks: Tasks):
  key = jax.random.PRNGKey(cfg.seed)
  k_meta, key = jax.random.split(key)
  meta = init_meta_params(k_meta, cfg.rule)
  key, units = tasks.init_units(key)
  rest = {"meta": meta, "meta_opt": pipeline.meta_optimizer(cfg).init(meta), "meta_avg": meta,
          "iteration": jnp.zeros([], jnp.int32), "key": key}
  if tasks.validate is not None:
    rest["best_score"] = jnp.float32(-jnp.inf)  # of meta_best.npz
  if tasks.mesh is not None:
    from jax.sharding import NamedSharding, PartitionSpec
    rest = jax.device_put(rest, NamedSharding(tasks.mesh, PartitionSpec()))
  return {**rest, "units": units}


def _apply_function(cfg):
  """The jitted meta-update: average the tasks' meta-gradients, one meta-optimizer step, and
  the moving average of the meta-parameters (decay cfg.average_decay)."""
  opt = pipeline.meta_optimizer(cfg)
  decay = cfg.average_decay

  @jax.jit
  def apply(meta, opt_state, avg, grads):
    grads = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), axis=0), *grads)
    updates, opt_state = opt.update(grads, opt_state, meta)
    meta = optax.apply_updates(meta, updates)
    avg = jax.tree.map(lambda a, m: decay * a + (1 - decay) * m, avg, meta)
    return meta, opt_state, avg, pipeline.global_norm(grads)

  return apply


def _check_config(run_dir: Path, cfg):
  path = run_dir / "config.json"
  mine = dataclasses.asdict(cfg)
  if path.exists():
    theirs = json.loads(path.read_text())
    resumable = {k: v for k, v in mine.items() if k != "iterations"}
    stored = {k: (tuple(v) if isinstance(v, list) else v) for k, v in theirs.items()
              if k != "iterations"}
    # Fields added since a run started take their defaults there.
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    stored = {k: stored.get(k, defaults[k]) for k in resumable}
    if stored != resumable:
      diff = {k: (stored.get(k), v) for k, v in resumable.items() if stored.get(k) != v}
      raise ValueError(f"{run_dir} holds a run with another configuration (stored, given): "
                       f"{diff}; use a new directory")
  path.write_text(json.dumps(mine, indent=1))


def _truncate_csv(path: Path, iteration: int) -> list[dict]:
  """Drop rows past the checkpoint being resumed from (they will be run again); returns the
  rows kept."""
  if not path.exists():
    return []
  with open(path, newline="") as f:
    rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= iteration]
  if not rows:
    path.unlink()
    return []
  with open(path, "w", newline="") as f:
    log = csv.DictWriter(f, fieldnames=list(rows[0]))
    log.writeheader()
    log.writerows(rows)
  return rows


def _append_row(path: Path, row: dict):
  new = not path.exists()
  with open(path, "a", newline="") as f:
    out = csv.DictWriter(f, fieldnames=list(row))
    if new:
      out.writeheader()
    out.writerow(row)


def _validate(tasks: Tasks, state: dict, run_dir: Path, cfg) -> tuple[dict, float]:
  """Score the meta-parameters (their moving average, if one is kept); keep them as the best
  if they beat the best so far."""
  meta = state["meta_avg"] if cfg.average_decay > 0 else state["meta"]
  finals = np.asarray(tasks.validate(meta))
  score = float(finals.mean())
  se = float(finals.std(ddof=1) / np.sqrt(len(finals))) if len(finals) > 1 else float("nan")
  _append_row(run_dir / "validation.csv", {"iteration": int(state["iteration"]),
                                           "final_return": score, "stderr": se})
  if score > float(state["best_score"]):
    state = {**state, "best_score": jnp.float32(score)}
    save_meta_params(run_dir / "meta_best.npz", meta, cfg.rule)
  return state, score


def meta_train(cfg, run_dir: str | Path, *, checkpoint_every: int = 50,
               progress: Callable[[int, dict], None] | None = None, mesh=None):
  """Meta-train (or resume) in `run_dir`; returns the final meta-parameters.

  `cfg`: a `meta.MetaConfig` (A2C on gridworlds) or a `meta_ppo.PPOMetaConfig` (PPO on
  Brax); `mesh`, a `meta.units_mesh`, splits the units over its devices."""
  run_dir = Path(run_dir).absolute()
  run_dir.mkdir(parents=True, exist_ok=True)
  _check_config(run_dir, cfg)
  tasks = _tasks(cfg, mesh)
  state = _initial_state(cfg, tasks)
  manager = ocp.CheckpointManager(run_dir / "checkpoints",
                                  options=ocp.CheckpointManagerOptions(max_to_keep=2))
  if manager.latest_step() is not None:
    state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(state))
  apply = _apply_function(cfg)
  log_path = run_dir / "log.csv"
  names = tasks.names
  fields = [*LOG_FIELDS, *(f"return_{n}" for n in names)]
  start = int(state["iteration"])
  logged = _truncate_csv(log_path, start)
  seconds_before = float(logged[-1]["seconds"]) if logged else 0.0  # run time up to there
  _truncate_csv(run_dir / "validation.csv", start)
  new_log = not log_path.exists()
  t0 = time.time() - seconds_before
  with open(log_path, "a", newline="") as log_file:
    log = csv.DictWriter(log_file, fieldnames=fields)
    if new_log:
      log.writeheader()
    for t in range(start, cfg.iterations):
      key, *task_keys = jax.random.split(state["key"], len(tasks.steps) + 1)
      grads, units, row = [], [], {}
      for i, task in enumerate(tasks.steps):
        g, u, (ret, eps) = task(state["meta"], state["units"][i], jnp.int32(t), task_keys[i])
        grads.append(g)
        units.append(u)
        eps = float(eps)
        row[f"return_{names[i]}"] = float(ret) / eps if eps > 0 else float("nan")
      meta, opt_state, avg, norm = apply(state["meta"], state["meta_opt"], state["meta_avg"], grads)
      if not bool(jnp.isfinite(norm)):
        raise FloatingPointError(f"meta-gradient is not finite at iteration {t}; the last "
                                 f"checkpoint in {run_dir} is intact")
      state = {**state, "meta": meta, "meta_opt": opt_state, "meta_avg": avg,
               "units": tuple(units), "iteration": jnp.int32(t + 1), "key": key}
      row.update(iteration=t + 1, seconds=round(time.time() - t0, 3),
                 env_steps=(t + 1) * tasks.env_steps_per_iteration,
                 meta_grad_norm=float(norm))
      log.writerow(row)
      if tasks.validate is not None and ((t + 1) % cfg.validate_every == 0
                                         or t + 1 == cfg.iterations):
        state, row["validation"] = _validate(tasks, state, run_dir, cfg)
      if (t + 1) % checkpoint_every == 0 or t + 1 == cfg.iterations:
        log_file.flush()
        manager.save(t + 1, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        save_meta_params(run_dir / "meta.npz", state["meta"], cfg.rule)
        if cfg.average_decay > 0:
          save_meta_params(run_dir / "meta_avg.npz", state["meta_avg"], cfg.rule)
      if progress is not None:
        progress(t + 1, row)
  manager.close()
  return state["meta"]
