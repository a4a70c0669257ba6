"""Resumable training runs: `training.loop.run_chunks` saves the agents' state (orbax) and the curve so
far after chunks, so a killed run (an evaluation of many seeds and optimizers, say) continues
where it stopped and ends with the same curve as an uninterrupted one.

A directory holds one run: identity.json (what the run is: a directory of another run is
refused), state/ (orbax, the latest two saves) and history.npz (the curve up to the newest
save, written after it).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np


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
    if path.exists() and json.loads(path.read_text()) != identity:
      raise ValueError(f"{self.directory} holds another run ({json.loads(path.read_text())}, "
                       f"not {identity}); use a new directory")
    path.write_text(json.dumps(identity, indent=1))
    self._manager = None
    self._last_save = time.monotonic()
    self.resumed_after = 0  # chunks the newest save had done when the run was restored
    self.chunks = 0  # chunks of the whole run, once restored

  def _state_manager(self):
    if self._manager is None:
      import orbax.checkpoint as ocp
      self._manager = ocp.CheckpointManager(
          self.directory / "state", options=ocp.CheckpointManagerOptions(max_to_keep=2))
    return self._manager

  def restore(self, state, per_chunk: int, chunks: int):
    """(state, chunks done, returns, losses, stats: per-chunk lists) of the newest save, or
    the given fresh `state` and nothing done if there is none."""
    path = self.directory / "history.npz"
    history = np.load(path) if path.exists() else None
    done = int(history["done"]) if history is not None else 0
    self.chunks = chunks
    manager = self._state_manager()
    for step in manager.all_steps():  # saved after the history was last written: run again
      if step > done:
        manager.delete(step)
    if history is None:
      return state, 0, [], [], []
    if (int(history["per_chunk"]), int(history["chunks"])) != (per_chunk, chunks):
      raise ValueError(f"{self.directory} holds a run of {int(history['chunks'])} chunks of "
                       f"{int(history['per_chunk'])} updates, not {chunks} of {per_chunk}")
    import orbax.checkpoint as ocp
    state = manager.restore(done, args=ocp.args.StandardRestore(state))
    self.resumed_after = done
    per_chunk_list = lambda name: list(np.moveaxis(history[name], 1, 0))
    stats = per_chunk_list("stats") if "stats" in history.files else [None] * done
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
    tmp = self.directory / "history.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, self.directory / "history.npz")  # the history never runs ahead of the state
    self._last_save = time.monotonic()

  def close(self):
    if self._manager is not None:
      self._manager.close()
      self._manager = None
