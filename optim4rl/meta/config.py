"""The outer loop's settings, shared by every task plug-in (A2C on gridworlds, PPO on Brax)."""
from __future__ import annotations

import dataclasses

from optim4rl.rules import get_rule


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
  backend: str | None = None     # learned-optimizer kernel backend

  def __post_init__(self):
    get_rule(self.rule)  # raises a clear error for unknown rules
    if not 0.0 <= self.average_decay < 1.0:
      raise ValueError(f"average_decay must be in [0, 1), got {self.average_decay}")
    if self.validate_every < 0:
      raise ValueError(f"validate_every must be >= 0, got {self.validate_every}")
    for field in ("units", "envs_per_unit", "reset_interval", "inner_updates", "iterations"):
      if getattr(self, field) < 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

  @property
  def unit_life(self) -> int:
    """Agent updates between a unit's resets."""
    return self.reset_interval * self.inner_updates
