"""Gymnax tasks for PPO: the MinAtar games of the OPEN paper (and CartPole for quick runs), with
their PPO settings.

Settings follow the PPO configuration of the OPEN paper's code (PureJaxRL's MinAtar PPO):
64 envs, rollouts of 128 steps, 4 epochs of 8 minibatches, separate actor and critic MLPs of
two hidden layers of 64 with ReLU, 1e7 environment steps. The learning rate is PureJaxRL's
MinAtar default; callers build the optimizer (and any schedule) from it.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  num_timesteps: int = 10_000_000
  num_envs: int = 64
  num_steps: int = 128             # rollout length per env
  num_epochs: int = 4              # epochs over each rollout's batch
  num_minibatches: int = 8         # per epoch; the whole batch reshuffled every epoch
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip_eps: float = 0.2            # policy ratio and value clip
  value_coef: float = 0.5
  entropy_coef: float = 0.01
  max_grad_norm: float = 0.5       # global-norm clip, applied to actor and critic separately
  learning_rate: float = 5e-3      # for the caller's optimizer; PureJaxRL MinAtar, annealed
  hidden: tuple[int, ...] = (64, 64)
  # Gymnax >= 1.0 tells time limits (truncated) from game overs (terminated): bootstrap from
  # the value of the last observation at a time limit. False treats time limits as game overs,
  # as the OPEN paper's code (older gymnax) did.
  bootstrap_truncated: bool = True

  def __post_init__(self):
    for name in ("num_timesteps", "num_envs", "num_steps", "num_epochs", "num_minibatches"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"PPO setting {name} must be a positive integer, got {value!r}")
    batch = self.num_envs * self.num_steps
    if batch % self.num_minibatches:
      raise ValueError(f"num_envs * num_steps ({batch}) must be a multiple of num_minibatches "
                       f"({self.num_minibatches})")
    if not self.hidden or any(not isinstance(w, int) or w < 1 for w in self.hidden):
      raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {self.hidden!r}")
    for name in ("gamma", "gae_lambda"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"PPO setting {name} must lie in [0, 1], got {getattr(self, name)!r}")
    for name in ("clip_eps", "value_coef", "entropy_coef", "max_grad_norm", "learning_rate"):
      value = getattr(self, name)
      if not value >= 0.0 or value == float("inf"):  # NaN fails too
        raise ValueError(f"PPO setting {name} must be finite and non-negative, got {value!r}")


MINATAR = ("Breakout-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")

TASKS: dict[str, PPOSettings] = {
    **{name: PPOSettings() for name in MINATAR},
    # Not in the paper; gymnax has it and it runs with the same code.
    "Seaquest-MinAtar": PPOSettings(),
    # PureJaxRL's CartPole PPO (ReLU here): a task that learns in seconds, for tests.
    "CartPole-v1": PPOSettings(num_timesteps=500_000, num_envs=4, num_minibatches=4,
                               learning_rate=2.5e-4),
}

# Final returns of Adam-PPO the OPEN paper normalises its MinAtar results by.
ADAM_REFERENCE_RETURNS = {"Breakout-MinAtar": 50.08, "Asterix-MinAtar": 15.04,
                          "Freeway-MinAtar": 61.84, "SpaceInvaders-MinAtar": 167.09}


def settings(name: str) -> PPOSettings:
  if name not in TASKS:
    raise ValueError(f"unknown gymnax task {name!r}; available: {sorted(TASKS)}")
  return TASKS[name]


def make(name: str):
  """(env, env_params): the gymnax environment `name` (it auto-resets in `step`)."""
  import gymnax
  settings(name)
  return gymnax.make(name)
