"""Files of a run directory: outputs replaced atomically, one process per directory, and
restores that fall back from a damaged checkpoint to the newest readable one.

A run killed at any moment leaves every output either as it was or as it is meant to be (a
temporary file is renamed over it), a second process started on the same directory is refused
while the first holds its lock (released by the kernel however the first ends, SIGKILL too),
and a checkpoint that cannot be read is reported in one line and skipped.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def _say(line: str) -> None:
  print(f"optim4rl: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet(logger: str = "absl") -> Iterator[None]:
  """Orbax logs a page-long traceback for every array it fails to read; the caller reports
  the failure in one line instead."""
  log = logging.getLogger(logger)
  level = log.level
  log.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    log.setLevel(level)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
  """A temporary path beside `path` (same suffix, so writers that infer the format from it
  work) that is renamed onto `path` when the block ends without an exception."""
  path = Path(path)
  tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
  try:
    yield tmp
    with open(tmp, "rb") as f:  # on disk before it replaces the old file
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def read_record(path: str | Path) -> dict:
  """A run's JSON record (config.json, identity.json); a damaged one is a clear ValueError."""
  path = Path(path)
  try:
    return json.loads(path.read_text())
  except ValueError:
    raise ValueError(f"{path} is damaged (not JSON); restore it, or move {path.parent} aside to "
                     f"start the run again") from None


def write_text(path: str | Path, text: str) -> None:
  """Replace `path` by `text` atomically."""
  with atomic_path(path) as tmp:
    tmp.write_text(text)


class RunInUse(ValueError):
  """Another process holds the run directory."""


class RunLock:
  """An exclusive lock on `directory` (its file .lock) for one holder at a time; another is
  refused with `RunInUse` naming the holder's pid. Use as a context manager."""

  def __init__(self, directory: str | Path):
    self.path = Path(directory).absolute() / ".lock"
    self._file = None

  def acquire(self) -> RunLock:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
      if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        f.close()
        raise
      f.seek(0)
      holder = f.read().strip() or "unknown"
      f.close()
      raise RunInUse(f"{self.path.parent} is in use by another optim4rl process (pid {holder}); "
                     f"wait for it to finish or use another directory") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> RunLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _reason(err: BaseException) -> str:
  """One short line of an exception (orbax and tensorstore errors run to pages)."""
  first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
  first = first.split(" See full TensorStore details")[0]
  return f"{type(err).__name__}: {first[:160]}" if first else type(err).__name__


def restore_newest(steps: Iterable[int], restore: Callable[[int], T], where: str, *,
                   fatal: tuple[type[BaseException], ...] = ()
                   ) -> tuple[int, T, list[int]] | None:
  """`(step, restore(step), newer unreadable steps)` for the newest step whose restore
  succeeds, each skipped step reported in one line; None without steps. Raises ValueError
  when no step can be restored; exceptions of the `fatal` types (a run of another plan, say)
  are not damage and propagate at once. The caller deletes the unreadable steps (they will
  be computed again), none of which is touched here."""
  steps = sorted(steps, reverse=True)
  skipped, reasons = [], []
  for step in steps:
    try:
      with _quiet():
        restored = restore(step)
    except fatal:
      raise
    except Exception as err:  # whatever a damaged checkpoint makes orbax, tensorstore or numpy raise
      reasons.append(f"{step}: {_reason(err)}")
      _say(f"{where}: checkpoint {step} is unreadable ({_reason(err)}); trying an older one")
      skipped.append(step)
      continue
    if skipped:
      _say(f"{where}: resuming from checkpoint {step}; the work after it is done again")
    return step, restored, skipped
  if steps:
    raise ValueError(f"{where}: no checkpoint can be restored ({'; '.join(reasons)}); were they "
                     f"written by another version or configuration? Move the directory aside "
                     f"to start again")
  return None
