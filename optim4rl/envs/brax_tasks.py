"""Brax tasks for PPO: the installed Brax environments and the PPO settings of Brax's examples.

The paper (Section 6.2, Figures 5-7) also used `ur5e`, `grasp` and `fetch`, which current Brax no
longer ships; asking for them raises an error that says so. Settings follow the PPO
hyperparameters Brax published for each environment (its training notebook); hopper and
walker2d have none there and take halfcheetah's.
"""
from __future__ import annotations

import dataclasses
import warnings

REMOVED = ("ur5e", "grasp", "fetch")


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  num_timesteps: int = 50_000_000
  num_envs: int = 2048
  batch_size: int = 1024          # trajectories per minibatch
  num_minibatches: int = 32
  unroll_length: int = 5
  num_updates_per_batch: int = 4  # epochs over each batch
  discounting: float = 0.97
  gae_lambda: float = 0.95
  clipping_epsilon: float = 0.3
  entropy_cost: float = 1e-2
  reward_scaling: float = 10.0
  learning_rate: float = 3e-4
  episode_length: int = 1000
  action_repeat: int = 1
  normalize_observations: bool = True
  policy_hidden: tuple[int, ...] = (32, 32, 32, 32)
  value_hidden: tuple[int, ...] = (256, 256, 256, 256, 256)


_CHEETAH = dict(reward_scaling=1.0, unroll_length=20, num_updates_per_batch=8, discounting=0.95,
                entropy_cost=1e-3, batch_size=512)

TASKS: dict[str, PPOSettings] = {
    "ant": PPOSettings(num_envs=4096, batch_size=2048),
    "humanoid": PPOSettings(reward_scaling=0.1, unroll_length=10, num_updates_per_batch=8,
                            entropy_cost=1e-3),
    "humanoidstandup": PPOSettings(num_timesteps=100_000_000, reward_scaling=0.1,
                                   unroll_length=15, num_updates_per_batch=8,
                                   learning_rate=6e-4),
    "halfcheetah": PPOSettings(**_CHEETAH),
    "hopper": PPOSettings(**_CHEETAH),
    "walker2d": PPOSettings(**_CHEETAH),
    "inverted_pendulum": PPOSettings(num_timesteps=2_000_000),
    "inverted_double_pendulum": PPOSettings(num_timesteps=20_000_000),
    "reacher": PPOSettings(reward_scaling=5.0, action_repeat=4, unroll_length=50,
                           num_updates_per_batch=8, discounting=0.95, entropy_cost=1e-3,
                           batch_size=256),
    "pusher": PPOSettings(reward_scaling=5.0, unroll_length=30, num_minibatches=16,
                          num_updates_per_batch=8, discounting=0.95, batch_size=512),
}


def settings(name: str) -> PPOSettings:
  if name in REMOVED:
    raise ValueError(f"Brax task {name!r} was used by the paper but is no longer part of Brax; "
                     f"available: {sorted(TASKS)}")
  if name not in TASKS:
    raise ValueError(f"unknown Brax task {name!r}; available: {sorted(TASKS)}")
  return TASKS[name]


def make(name: str, *, episode_length: int | None = None, action_repeat: int | None = None,
         backend: str | None = None):
  """The Brax environment `name`, wrapped for training (vmap over a batch of envs, episode
  length/truncation, auto-reset). `backend`: Brax physics pipeline (default: Brax's)."""
  from brax import envs
  s = settings(name)
  kwargs = {"backend": backend} if backend else {}
  with warnings.catch_warnings():  # Brax's notice that its own envs are no longer maintained
    warnings.filterwarnings("ignore", message="Brax System, piplines and environments")
    env = envs.get_environment(name, **kwargs)
  return envs.training.wrap(env, episode_length=episode_length or s.episode_length,
                            action_repeat=action_repeat or s.action_repeat)
