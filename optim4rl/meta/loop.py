"""The host side of meta-training: iterations, logs, validation and resumable checkpoints.

The loop knows no agent or environment: a task plug-in (a `TaskConfig`, e.g.
`meta.a2c.GridworldConfig` or `meta.ppo.BraxConfig`) builds the tasks, and every iteration is
one jitted call (meta/iteration.py). The host dispatches iterations without waiting for them
and reads their metrics only every `log_every` iterations (and after the first, at validations,
checkpoints and the end), in one transfer.

A run directory holds config.json (the `MetaConfig` and the plug-in's config), log.csv (one row
per iteration; `seconds` is measured when the metrics are read and spread evenly over the
iterations read together), meta.npz (the latest meta-parameters, loadable by
`optim4rl.load_meta_params`), meta_avg.npz (their exponential moving average, if
`average_decay` > 0), with validation (`validate_every` > 0) validation.csv (the score of each
validated iteration) and meta_best.npz (the best-scoring meta-parameters so far; their moving
average is what is scored when one is kept), checkpoints/ (orbax, the whole `MetaState`) and
.lock (held while a process runs it). Starting a run in a directory with a checkpoint resumes
it from the newest readable one, and writes the .npz outputs again from it: they are replaced
atomically and never older than the checkpoint.
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
import orbax.checkpoint as ocp

from optim4rl.backends import resolve_backend
from optim4rl.meta import pipeline
from optim4rl.meta.config import MetaConfig
from optim4rl.meta.iteration import MetaState, Metrics, initial_state, make_iteration
from optim4rl.meta.tasks import TaskConfig, Tasks
from optim4rl.rules import save_meta_params
from optim4rl.training.files import (RunLock, atomic_path, read_record, restore_newest,
                                     write_text)

LOG_FIELDS = ("iteration", "seconds", "env_steps", "meta_grad_norm")


def _identity(cfg: MetaConfig, task: TaskConfig) -> dict:
  """What a run depends on, as config.json records it."""
  return {"meta": dataclasses.asdict(cfg), "plugin": type(task).__name__,
          "tasks": dataclasses.asdict(task)}


def _comparable(section: dict, config) -> dict:
  """`section` of a stored config.json as `config`'s fields: JSON lists as tuples, fields added
  since the run started at their defaults, `iterations` left out (a run may be extended), and
  a backend left to the default (runs of earlier versions) as the one it resolves to here."""
  fields = {f.name: f.default for f in dataclasses.fields(config)}
  out = {k: (tuple(v) if isinstance(v, list) else v)
         for k, v in {**fields, **section}.items() if k != "iterations"}
  if "backend" in out and out["backend"] is None:
    out["backend"] = resolve_backend(None)
  return out


def _describe(identity: dict) -> str:
  """The task of a stored run, in words: "A2C on small_dense_short", "PPO on ant"."""
  tasks = identity.get("tasks", {})
  if "worlds" in tasks:
    return f"A2C on {'+'.join(tasks['worlds'])}"
  if "task" in tasks:
    return f"PPO on {tasks['task']}"
  return f"a {identity.get('plugin', 'unknown')} run"


def _check_config(run_dir: Path, cfg: MetaConfig, task: TaskConfig):
  """Refuse to resume a run of another configuration; record this one when the run is new or
  extended (a smaller `iterations` leaves the record as it is)."""
  path = run_dir / "config.json"
  mine = _identity(cfg, task)
  if path.exists():
    theirs = read_record(path)
    if "meta" not in theirs or "plugin" not in theirs:
      raise ValueError(f"{run_dir} holds a run in an older format (its config.json has no "
                       f"'meta' and 'plugin' sections); use a new directory")
    if theirs["plugin"] != mine["plugin"]:
      raise ValueError(f"{run_dir} holds another task's run ({_describe(theirs)}), not "
                       f"{_describe(mine)}; use a new directory")
    diff = {}
    for section, config in (("meta", cfg), ("tasks", task)):
      stored = _comparable(theirs[section], config)
      given = _comparable(mine[section], config)
      diff.update({k: (stored.get(k), v) for k, v in given.items() if stored.get(k) != v})
    if diff:
      raise ValueError(f"{run_dir} holds a run of {_describe(theirs)} with another "
                       f"configuration (stored, given): {diff}; use a new directory")
    if theirs["meta"].get("iterations", 0) >= cfg.iterations:
      return
  write_text(path, json.dumps(mine, indent=1))


def _read_rows(path: Path, iteration: int) -> list[dict]:
  """The complete rows of a CSV log up to `iteration` (those after it will be run again; a row
  torn by a kill is dropped)."""
  if not path.exists():
    return []
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    rows = []
    for r in reader:
      if None in r or any(v in (None, "") for v in r.values()):
        continue
      try:
        if int(r["iteration"]) <= iteration:
          rows.append(r)
      except ValueError:
        continue
    return rows


def _truncate_csv(path: Path, iteration: int) -> list[dict]:
  """Keep the complete rows of `path` up to `iteration`, replacing it atomically; returns
  them."""
  rows = _read_rows(path, iteration)
  if not rows:
    path.unlink(missing_ok=True)
    return []
  with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
    log = csv.DictWriter(f, fieldnames=list(rows[0]))
    log.writeheader()
    log.writerows(rows)
  return rows


def _write_outputs(run_dir: Path, state: MetaState, cfg: MetaConfig):
  """meta.npz, meta_avg.npz and meta_best.npz of `state` (each replaced atomically): after
  every checkpoint, and again from the checkpoint a run resumes from, so a kill between the
  two never leaves them stale or missing."""
  save_meta_params(run_dir / "meta.npz", state.meta, cfg.rule)
  if cfg.average_decay > 0:
    save_meta_params(run_dir / "meta_avg.npz", state.meta_avg, cfg.rule)
  if cfg.validate_every > 0 and np.isfinite(float(state.best_score)):
    save_meta_params(run_dir / "meta_best.npz", state.best_meta, cfg.rule)


def _append_row(path: Path, row: dict):
  new = not path.exists()
  with open(path, "a", newline="") as f:
    out = csv.DictWriter(f, fieldnames=list(row))
    if new:
      out.writeheader()
    out.writerow(row)


def _validate(tasks: Tasks, state: MetaState, run_dir: Path, cfg: MetaConfig
              ) -> tuple[MetaState, float]:
  """Score the meta-parameters (their moving average, if one is kept); keep them as the best
  if they beat the best so far."""
  meta = state.meta_avg if cfg.average_decay > 0 else state.meta
  finals = np.asarray(tasks.validate(meta))
  score = float(finals.mean())
  se = float(finals.std(ddof=1) / np.sqrt(len(finals))) if len(finals) > 1 else float("nan")
  _append_row(run_dir / "validation.csv", {"iteration": int(state.iteration),
                                           "final_return": score, "stderr": se})
  if score > float(state.best_score):
    # A copy: the state is donated to the next iteration, and a buffer cannot be donated twice.
    state = state._replace(best_score=jnp.float32(score), best_meta=jax.tree.map(jnp.copy, meta))
    save_meta_params(run_dir / "meta_best.npz", meta, cfg.rule)
  return state, score


class _Log:
  """log.csv and the progress callback, fed with the metrics of several iterations at once."""

  def __init__(self, path: Path, names: list[str], env_steps: int, seconds_before: float,
               progress: Callable[[int, dict], None] | None):
    self.names, self.env_steps, self.progress = names, env_steps, progress
    self.t0 = time.time() - seconds_before  # the run's time up to the checkpoint resumed from
    self.last = seconds_before
    new = not path.exists()
    self.file = open(path, "a", newline="")
    self.csv = csv.DictWriter(self.file, fieldnames=[*LOG_FIELDS,
                                                     *(f"return_{n}" for n in names)])
    if new:
      self.csv.writeheader()

  def write(self, pending: list[tuple[int, Metrics]], run_dir: Path) -> dict:
    """Read the pending iterations' metrics from the device (one transfer) and log them; the
    first non-finite meta-gradient stops the run, before anything after it is saved. Returns
    the last row."""
    metrics = jax.device_get([m for _, m in pending])
    now = time.time() - self.t0
    row = {}
    for j, ((done, _), m) in enumerate(zip(pending, metrics)):
      if not (np.isfinite(m.meta_grad_norm) and m.meta_finite):
        self.flush()
        what = ("the meta-gradient of iteration {} is" if not np.isfinite(m.meta_grad_norm)
                else "the meta-parameters after iteration {} are").format(done)
        raise FloatingPointError(f"{what} not finite (is the "
                                 f"meta learning rate too large?); stopped, the last checkpoint "
                                 f"in {run_dir} is intact")
      row = {"iteration": done,
             "seconds": round(self.last + (now - self.last) * (j + 1) / len(pending), 3),
             "env_steps": done * self.env_steps, "meta_grad_norm": float(m.meta_grad_norm)}
      for name, ret, eps in zip(self.names, m.return_sums, m.episodes):
        eps = float(eps)
        row[f"return_{name}"] = float(ret) / eps if eps > 0 else float("nan")
      self.csv.writerow(row)
      if self.progress is not None and j + 1 < len(pending):
        self.progress(done, row)
    self.last = now
    return row  # its progress call is left to the caller, which may add the validation score

  def flush(self):
    self.file.flush()

  def restart_clock(self):
    """After the host's own work (validation, checkpoint): the next iterations start now."""
    self.last = time.time() - self.t0

  def close(self):
    self.file.close()


def meta_train(cfg: MetaConfig, task: TaskConfig, run_dir: str | Path, *,
               checkpoint_every: int = 50, log_every: int = 10,
               progress: Callable[[int, dict], None] | None = None, mesh=None,
               unit_chunk: int | str | None = "auto"):
  """Meta-train (or resume) in `run_dir`; returns the final meta-parameters.

  `task`: a plug-in's config (`meta.a2c.GridworldConfig`: A2C on gridworlds,
  `meta.ppo.BraxConfig`: PPO on Brax); `mesh`, a `pipeline.units_mesh`, splits the units over
  its devices; `unit_chunk` is how many units of a device run at once (None: all; "auto":
  all, or as many as fit in half the free memory, `pipeline.auto_unit_chunk`). It changes the
  memory a run needs, not the run (up to rounding). The device's metrics are read every
  `log_every` iterations; `progress(iteration, row)` is called once with an empty row when the run starts (validated,
  locked and restored; `iteration` is where it resumes) and then for every row of log.csv as
  it is written (with the validation score under "validation" on validated iterations).

  Nothing is written before the whole configuration is validated; a second process on the
  same `run_dir` is refused; a damaged newest checkpoint is reported and an older one used.
  """
  if checkpoint_every < 1 or log_every < 1:
    raise ValueError(f"checkpoint_every and log_every must be >= 1, got {checkpoint_every} "
                     f"and {log_every}")
  if unit_chunk != "auto":
    pipeline.check_unit_chunk(unit_chunk, pipeline.units_per_device(cfg, mesh))
  # Everything is validated (the tasks built) before anything is written.
  tasks = task.tasks(cfg)
  if cfg.validate_every > 0 and tasks.validate is None:
    raise ValueError(f"validate_every: {type(task).__name__} has no validation")
  run_dir = Path(run_dir).absolute()
  with RunLock(run_dir):
    _check_config(run_dir, cfg, task)
    return _run(cfg, tasks, run_dir, checkpoint_every, log_every, progress, mesh, unit_chunk)


def _run(cfg: MetaConfig, tasks: Tasks, run_dir: Path, checkpoint_every: int, log_every: int,
         progress, mesh, unit_chunk):
  state = initial_state(cfg, tasks, mesh)
  manager = ocp.CheckpointManager(run_dir / "checkpoints",
                                  options=ocp.CheckpointManagerOptions(max_to_keep=2))
  found = restore_newest(
      manager.all_steps(),
      lambda step: manager.restore(step, args=ocp.args.StandardRestore(state)),
      str(run_dir / "checkpoints"))
  if found is not None:
    _, state, damaged = found
    for step in damaged:  # computed again below
      manager.delete(step)
    _write_outputs(run_dir, state, cfg)
  if unit_chunk == "auto":
    local, budget = pipeline.units_per_device(cfg, mesh), pipeline.memory_budget()
    unit_chunk = min(pipeline.auto_unit_chunk(task, state.meta, units, local, budget)
                     for task, units in zip(tasks.tasks, state.units))
  iteration = make_iteration(cfg, tasks, mesh, unit_chunk)
  start = int(state.iteration)
  logged = _truncate_csv(run_dir / "log.csv", start)
  _truncate_csv(run_dir / "validation.csv", start)
  log = _Log(run_dir / "log.csv", [t.name for t in tasks.tasks],
             sum(t.env_steps_per_iteration for t in tasks.tasks),
             float(logged[-1]["seconds"]) if logged else 0.0, progress)
  pending = []  # (iteration number, its metrics on the device) not logged yet
  if progress is not None:
    progress(start, {})
  try:
    for t in range(start, cfg.iterations):
      state, metrics = iteration(state)
      done = t + 1
      pending.append((done, metrics))
      validate = tasks.validate is not None and (done % cfg.validate_every == 0
                                                 or done == cfg.iterations)
      checkpoint = done % checkpoint_every == 0 or done == cfg.iterations
      if not (validate or checkpoint or done % log_every == 0 or done == start + 1):
        continue  # the first is read at once: it shows when compilation is over
      row = log.write(pending, run_dir)
      pending = []
      if validate:
        state, row["validation"] = _validate(tasks, state, run_dir, cfg)
      if checkpoint:
        log.flush()
        manager.save(done, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
        _write_outputs(run_dir, state, cfg)
      log.restart_clock()
      if progress is not None:
        progress(done, row)
  finally:
    log.close()
    manager.close()
  return state.meta
