"""The outer loop's settings, shared by every task plug-in (A2C on gridworlds, PPO on Brax)."""
from __future__ import annotations

import dataclasses
import math
import numbers

from optim4rl.backends import resolve_backend
from optim4rl.backends.registry import HIDDEN_DTYPE_NAMES
from optim4rl.rules import get_rule


def check_int(name: str, value, minimum: int) -> None:
  """A whole number (not a bool or a float such as 2.7) of at least `minimum`."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_number(name: str, value, *, positive: bool = False) -> None:
  """A finite real number (> 0 if `positive`)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number, got {value!r}")
  if positive and not value > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  """Pipeline training (Section 5.1) and the meta-optimizer; a plug-in's own settings (worlds,
  a Brax task, agent learning rates) are in its config. The paper's Ant run: units 2048,
  reset_interval 512 or 1024, meta_lr 3e-4."""
  rule: str = "optim4rl"
  units: int = 512               # training units n per task
  envs_per_unit: int = 1         # environments each unit's agent acts in
  reset_interval: int = 256      # m, in iterations
  inner_updates: int = 4         # M
  iterations: int = 1000
  meta_lr: float = 1e-3
  meta_grad_clip: float = 1.0    # clip of the meta-gradient's global norm (<= 0: none)
  max_norm: float = -1.0         # > 0: rescale each task's meta-gradient to this norm
  average_decay: float = 0.0     # > 0: also keep an exponential moving average of the meta-params
  validate_every: int = 0        # > 0: score the meta-parameters every this many iterations
  clip: float = 1.0              # gradient clip c of the learned optimizer
  seed: int = 0
  backend: str | None = None     # learned-optimizer kernel backend; None: this host's best,
  #                                recorded as the name it resolves to
  hidden_dtype: str = "float32"  # the units' optimizer hidden state: float32 or bfloat16

  def __post_init__(self):
    """Every field checked, so a run is refused before it writes anything."""
    get_rule(self.rule)  # raises a clear error for unknown rules
    for field in ("units", "envs_per_unit", "reset_interval", "inner_updates", "iterations"):
      check_int(field, getattr(self, field), 1)
    check_int("validate_every", self.validate_every, 0)
    check_int("seed", self.seed, -2**63)
    check_number("meta_lr", self.meta_lr, positive=True)
    for field in ("meta_grad_clip", "max_norm", "average_decay", "clip"):
      check_number(field, getattr(self, field))
    if not 0.0 <= self.average_decay < 1.0:
      raise ValueError(f"average_decay must be in [0, 1), got {self.average_decay}")
    if self.hidden_dtype not in HIDDEN_DTYPE_NAMES:
      raise ValueError(f"hidden_dtype must be one of {HIDDEN_DTYPE_NAMES}, got "
                       f"{self.hidden_dtype!r}")
    if self.clip < 0:
      raise ValueError(f"clip must be >= 0 (0: no clipping), got {self.clip}")
    # Unknown or unavailable backends are refused here; the default is stored by name, so a
    # run started without one and resumed with the one it chose is the same run.
    object.__setattr__(self, "backend", resolve_backend(self.backend))

  @property
  def unit_life(self) -> int:
    """Agent updates between a unit's resets."""
    return self.reset_interval * self.inner_updates
