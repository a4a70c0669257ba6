"""The gridworlds of Appendix B (after Oh et al. 2020), in pure JAX.

An H x W grid holds N objects, each [reward, p_terminate, p_respawn]. The agent has 9 actions
(stay and the 8 neighbouring cells; moves off the grid leave it in place). Picking up an object
pays its reward and ends the episode with probability p_terminate; absent objects reappear at a
random free cell with probability p_respawn per step. Episodes also end at the horizon, and
every `step` auto-resets a finished episode. Observations are {0,1}^((N+1) x H x W): one
channel per object and one for the agent.

Positions are flat cell indices (-1: object absent). Everything is jit/vmap-able: batches of
worlds are `jax.vmap(step, in_axes=(None, 0, 0, 0))`.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_ACTIONS = 9
# (row, col) offsets: stay, the 4 axis moves, the 4 diagonals.
MOVES = np.array([[0, 0], [-1, 0], [0, 1], [1, 0], [0, -1],
                  [-1, -1], [-1, 1], [1, -1], [1, 1]], np.int32)


@dataclasses.dataclass(frozen=True)
class World:
  """A gridworld's static description; hashable so it can be a jit static argument."""
  name: str
  height: int
  width: int
  objects: tuple[tuple[float, float, float], ...]  # (unit reward, p_terminate, p_respawn)
  horizon: int
  reward_scale: float = 1.0  # multiplies rewards fed to the learner; returns stay unscaled

  @property
  def num_objects(self) -> int:
    return len(self.objects)

  @property
  def num_cells(self) -> int:
    return self.height * self.width

  @property
  def obs_shape(self) -> tuple[int, int, int]:
    return (self.num_objects + 1, self.height, self.width)

  @property
  def is_big(self) -> bool:
    return self.name.startswith("big")


def _pair(good: float, bad: float, respawn: float, copies: int):
  return ((good, 0.0, respawn),) * copies + ((bad, 0.5, respawn),) * copies


# Sizes, objects and horizons of Tables 2-7 with unit rewards; the second number is the
# reward scale the tables' rewards include (used for multi-task meta-training, Sec. 6.2).
# The small_sparse pair is not in the paper's tables; it has no paper scale (1).
_SPECS = {
    "small_dense_short": (4, 6, _pair(1.0, -1.0, 0.5, 1), 50, 1e2),
    "small_dense_long": (6, 4, _pair(1.0, -1.0, 0.5, 1), 500, 1e3),
    "small_sparse_short": (3, 8, _pair(1.0, -1.0, 0.05, 1), 50, 1.0),
    "small_sparse_long": (8, 3, _pair(1.0, -1.0, 0.05, 1), 500, 1.0),
    "big_sparse_short": (10, 12, _pair(1.0, -1.0, 0.05, 2), 50, 1e2),
    "big_sparse_long": (12, 10, _pair(1.0, -1.0, 0.05, 2), 500, 1e1),
    "big_dense_short": (9, 13, _pair(1.0, -1.0, 0.5, 2), 50, 1e1),
    "big_dense_long": (13, 9, _pair(1.0, -1.0, 0.5, 2), 500, 1.0),
}
WORLD_NAMES = tuple(_SPECS)


def _check_name(name: str) -> str:
  if name not in _SPECS:
    raise ValueError(f"unknown gridworld {name!r}; expected one of {WORLD_NAMES}")
  return name


def make(name: str, reward_scale: float | str = 1.0) -> World:
  """The named world. reward_scale: a number, or "paper" for the tables' scale."""
  h, w, objects, horizon, paper_scale = _SPECS[_check_name(name)]
  try:
    scale = paper_scale if reward_scale == "paper" else float(reward_scale)
  except (TypeError, ValueError):
    scale = float("nan")
  if not 0 < scale < float("inf"):
    raise ValueError(f"reward_scale must be a finite number > 0 or 'paper', got {reward_scale!r}")
  return World(name, h, w, objects, horizon, scale)


class State(NamedTuple):
  agent: jax.Array         # int32 cell index
  objects: jax.Array       # (N,) int32 cell index, -1 while absent
  time: jax.Array          # int32 steps taken in this episode
  episode_return: jax.Array  # float32 unscaled return so far in this episode


class StepInfo(NamedTuple):
  episode_done: jax.Array    # bool: an episode ended on this step
  episode_return: jax.Array  # its unscaled return (0 where no episode ended)


def _occupancy(world: World, cells):
  """Boolean (cells,) mask of the given cell indices; -1 entries mark nothing."""
  hits = cells[:, None] == jnp.arange(world.num_cells)[None, :]
  return jnp.any(hits, axis=0)


def _place(keys_u, occupied, want):
  """Cells for the entries of `want` in order, uniformly among the cells still free.

  One uniform draw per cell serves every placement: taking the free cell with the largest
  draw, marking it occupied and repeating samples without replacement, uniformly.
  Returns the chosen cells (-1 where not wanted) and the new occupancy.
  """
  cells = []
  for wanted in want:
    cell = jnp.argmax(jnp.where(occupied, -1.0, keys_u)).astype(jnp.int32)
    cells.append(jnp.where(wanted, cell, -1))
    occupied = occupied | ((jnp.arange(occupied.shape[0]) == cell) & wanted)
  return jnp.stack(cells), occupied


def reset(world: World, key) -> State:
  """Agent and objects at distinct random cells."""
  u = jax.random.uniform(key, (world.num_cells,))
  cells, _ = _place(u, jnp.zeros(world.num_cells, bool), [True] * (world.num_objects + 1))
  return State(cells[0], cells[1:], jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32))


def observe(world: World, state: State):
  """(N+1, H, W) float32 {0, 1}: object channels, then the agent channel."""
  cells = jnp.concatenate([state.objects, state.agent[None]])
  planes = cells[:, None] == jnp.arange(world.num_cells)[None, :]
  return planes.astype(jnp.float32).reshape(world.obs_shape)


def step(world: World, state: State, action, key):
  """(next state, scaled reward, done, StepInfo); finished episodes are reset in place."""
  k_term, k_spawn, k_where, k_reset = jax.random.split(key, 4)
  obj = jnp.asarray(world.objects, jnp.float32)
  # Move; a move off the grid leaves the agent where it is.
  row, col = state.agent // world.width, state.agent % world.width
  delta = jnp.asarray(MOVES)[action]
  new_row, new_col = row + delta[0], col + delta[1]
  inside = (new_row >= 0) & (new_row < world.height) & (new_col >= 0) & (new_col < world.width)
  agent = jnp.where(inside, new_row * world.width + new_col, state.agent).astype(jnp.int32)
  # Pick up every object on the agent's cell.
  collected = state.objects == agent
  reward = jnp.sum(jnp.where(collected, obj[:, 0], 0.0))
  terminated = jnp.any(collected & (jax.random.uniform(k_term, collected.shape) < obj[:, 1]))
  objects = jnp.where(collected, -1, state.objects)
  # Absent objects (including those just taken) respawn with their probability on free
  # cells, never two on the same cell.
  spawn = (objects < 0) & (jax.random.uniform(k_spawn, collected.shape) < obj[:, 2])
  occupied = _occupancy(world, jnp.concatenate([objects, agent[None]]))
  cells, _ = _place(jax.random.uniform(k_where, (world.num_cells,)), occupied, list(spawn))
  objects = jnp.where(spawn, cells, objects)
  time = state.time + 1
  episode_return = state.episode_return + reward
  done = terminated | (time >= world.horizon)
  fresh = reset(world, k_reset)
  stepped = State(agent, objects, time, episode_return)
  next_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, stepped)
  info = StepInfo(done, jnp.where(done, episode_return, 0.0))
  return next_state, reward * world.reward_scale, done, info
