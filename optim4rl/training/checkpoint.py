"""Resumable training runs: `training.loop.run_chunks` saves the agents' state (orbax) and the curve so
far after chunks, so a killed run (an evaluation of many seeds and optimizers, say) continues
where it stopped and ends with the same curve as an uninterrupted one.

A directory holds one run: identity.json (what the run is: a directory of another run is
refused), state/ (orbax, the latest two saves) and history/STEP.npz (the curve up to each
save, written after it). A save is complete when both exist; restore takes the newest complete
save that can be read, reports and deletes a damaged newer one, and runs the rest again.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from optim4rl.training.files import atomic_path, read_record, restore_newest, write_text


class RunMismatch(ValueError):
  """The directory holds a run of another plan."""


class RunCheckpoint:
  """Checkpoints of one run in `directory`, saved at most every `every_seconds` (and after the
  last chunk); `identity` (JSON-able) names the run, and a directory that holds another is
  refused with a ValueError."""

  def __init__(self, directory: str | Path, identity: dict, every_seconds: float = 30.0):
    self.directory = Path(directory).absolute()
    self.every_seconds = every_seconds
    self.directory.mkdir(parents=True, exist_ok=True)
    path = self.directory / "identity.json"
    identity = json.loads(json.dumps(identity))  # as it reads back (tuples become lists)
    if path.exists():
      stored = read_record(path)
      if stored != identity:
        raise ValueError(f"{self.directory} holds another run ({stored}, not {identity}); use a "
                         f"new directory")
    else:
      write_text(path, json.dumps(identity, indent=1))
    self._manager = None
    self._last_save = time.monotonic()
    self.resumed_after = 0  # chunks the newest save had done when the run was restored
    self.chunks = 0  # chunks of the whole run, once restored

  @property
  def _history_dir(self) -> Path:
    return self.directory / "history"

  def _history_path(self, step: int) -> Path:
    return self._history_dir / f"{step}.npz"

  def _state_manager(self):
    if self._manager is None:
      import orbax.checkpoint as ocp
      self._manager = ocp.CheckpointManager(
          self.directory / "state", options=ocp.CheckpointManagerOptions(max_to_keep=2))
    return self._manager

  def _adopt_legacy_history(self):
    """Runs of earlier versions kept one history.npz, that of their newest save."""
    legacy = self.directory / "history.npz"
    if legacy.exists():
      try:
        with np.load(legacy) as h:
          done = int(h["done"])
        self._history_dir.mkdir(exist_ok=True)
        legacy.replace(self._history_path(done))
      except Exception:  # unreadable: its save counts as incomplete and runs again
        legacy.unlink()

  def restore(self, state, per_chunk: int, chunks: int):
    """(state, chunks done, returns, losses, stats: per-chunk lists) of the newest readable
    save, or the given fresh `state` and nothing done if there is none."""
    import orbax.checkpoint as ocp
    self.chunks = chunks
    manager = self._state_manager()
    self._adopt_legacy_history()
    for step in manager.all_steps():  # killed after the state's save, before its history's
      if not self._history_path(step).exists():
        manager.delete(step)

    def load(step):
      with np.load(self._history_path(step)) as h:
        history = {k: h[k] for k in h.files}
      if (int(history["per_chunk"]), int(history["chunks"])) != (per_chunk, chunks):
        raise RunMismatch(f"{self.directory} holds a run of {int(history['chunks'])} chunks of "
                          f"{int(history['per_chunk'])} updates, not {chunks} of {per_chunk}")
      return manager.restore(step, args=ocp.args.StandardRestore(state)), history

    found = restore_newest(manager.all_steps(), load, str(self.directory), fatal=(RunMismatch,))
    self._prune()
    if found is None:
      return state, 0, [], [], []
    done, (state, history), damaged = found
    for step in damaged:
      manager.delete(step)
      self._history_path(step).unlink(missing_ok=True)
    self.resumed_after = done
    per_chunk_list = lambda name: list(np.moveaxis(history[name], 1, 0))
    stats = per_chunk_list("stats") if "stats" in history else [None] * done
    return state, done, per_chunk_list("returns"), per_chunk_list("losses"), stats

  def save(self, done: int, state, returns: list, losses: list, stats: list, *, per_chunk: int,
           chunks: int):
    """Save after chunk `done` (1-based) if `every_seconds` have passed or it is the last."""
    if done < chunks and time.monotonic() - self._last_save < self.every_seconds:
      return
    import orbax.checkpoint as ocp
    manager = self._state_manager()
    manager.save(done, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    arrays = dict(done=done, per_chunk=per_chunk, chunks=chunks,
                  returns=np.stack(returns, 1), losses=np.stack(losses, 1))
    if stats[0] is not None:
      arrays["stats"] = np.stack(stats, 1)
    self._history_dir.mkdir(exist_ok=True)
    with atomic_path(self._history_path(done)) as tmp:  # the save is complete once it exists
      np.savez(tmp, **arrays)
    self._prune()
    self._last_save = time.monotonic()

  def _prune(self):
    """Histories of the saves orbax no longer keeps."""
    kept = set(self._state_manager().all_steps())
    for path in self._history_dir.glob("*.npz") if self._history_dir.exists() else ():
      if path.stem.isdigit() and int(path.stem) not in kept:
        path.unlink()

  def close(self):
    if self._manager is not None:
      self._manager.close()
      self._manager = None
