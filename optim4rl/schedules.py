"""Schedules that scale every step of an optimizer over a run, alike for every optimizer."""
from __future__ import annotations

import optax

# Factors on every step: constant, or falling linearly from 1 to 0 over training (annealing
# that the learned rules do not do by themselves; see benchmarks/layer_study.py).
SCHEDULES = ("constant", "linear")


def scheduled(tx: optax.GradientTransformation, schedule: str,
              updates: int | None) -> optax.GradientTransformation:
  """`tx` with its steps scaled by `schedule` over `updates` optimizer updates."""
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {list(SCHEDULES)}")
  if schedule == "constant":
    return tx
  if not updates or updates < 1:
    raise ValueError(f"schedule {schedule!r} needs the run's number of optimizer updates")
  return optax.chain(tx, optax.scale_by_schedule(optax.linear_schedule(1.0, 0.0, updates)))
