"""What the meta-training loop needs from a kind of meta-training (a task plug-in)."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Tasks(NamedTuple):
  """What the loop needs from a kind of meta-training (A2C on gridworlds, PPO on Brax)."""
  names: list[str]
  init_units: Callable        # key -> (key, tuple of unit batches, one per task)
  steps: list[Callable]       # per task, jitted: (meta, units, t, key) -> (grads, units, (ret, eps))
  env_steps_per_iteration: int
  mesh: Any = None            # units split over this mesh; the rest of the state replicated on it
  validate: Callable | None = None  # meta -> per-agent final returns of fresh agents trained with it
