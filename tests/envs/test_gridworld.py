import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim4rl import envs
from optim4rl.envs import gridworld as gw

# Sizes and horizons of Tables 2-7.
PAPER = {"small_dense_short": (4, 6, 50), "small_dense_long": (6, 4, 500),
         "big_sparse_short": (10, 12, 50), "big_sparse_long": (12, 10, 500),
         "big_dense_short": (9, 13, 50), "big_dense_long": (13, 9, 500)}


def test_paper_worlds_and_scales():
  for name, (h, w, horizon) in PAPER.items():
    world = envs.make(name)
    assert (world.height, world.width, world.horizon) == (h, w, horizon)
    assert world.obs_shape == (world.num_objects + 1, h, w)
    assert world.reward_scale == 1.0
  # The tables' rewards are unit rewards times these scales.
  tables = {"small_dense_long": 1000, "small_dense_short": 100, "big_sparse_short": 100,
            "big_dense_short": 10, "big_sparse_long": 10, "big_dense_long": 1}
  for name, reward in tables.items():
    world = envs.make(name, "paper")
    assert max(o[0] for o in world.objects) * world.reward_scale == reward
  assert envs.make("big_dense_long").objects == ((1.0, 0.0, 0.5),) * 2 + ((-1.0, 0.5, 0.5),) * 2
  assert set(envs.WORLD_NAMES) >= set(PAPER) | {"small_sparse_short", "small_sparse_long"}


def test_bad_names_and_scales():
  with pytest.raises(ValueError, match="unknown gridworld"):
    envs.make("small_dense_medium")
  with pytest.raises(ValueError, match="reward_scale"):
    envs.make("small_dense_short", -1.0)


@pytest.mark.parametrize("name", envs.WORLD_NAMES)
def test_reset_and_observation(name):
  world = envs.make(name)
  states = jax.vmap(envs.reset, (None, 0))(world, jax.random.split(jax.random.key(0), 64))
  obs = jax.vmap(envs.observe, (None, 0))(world, states)
  assert obs.shape == (64, *world.obs_shape) and obs.dtype == jnp.float32
  np.testing.assert_array_equal(obs.sum(axis=(2, 3)), 1.0)  # every object and the agent placed
  cells = np.concatenate([np.asarray(states.objects), np.asarray(states.agent)[:, None]], 1)
  assert all(len(set(row)) == len(row) for row in cells)  # on distinct cells


def _world(objects, horizon=100):
  return gw.World("test", 3, 3, objects, horizon)


def _state(agent, objects, time=0):
  return gw.State(jnp.int32(agent), jnp.asarray(objects, jnp.int32), jnp.int32(time),
                  jnp.float32(0))


def test_moves_and_walls():
  world = _world(((1.0, 0.0, 0.0),))
  centre = _state(4, [-1])
  expected = [4, 1, 5, 7, 3, 0, 2, 6, 8]  # stay, up, right, down, left, diagonals
  for action, cell in enumerate(expected):
    s, _, _, _ = envs.step(world, centre, action, jax.random.key(0))
    assert int(s.agent) == cell
  corner = _state(0, [-1])
  for action in (1, 4, 5, 6, 7):  # every move leaving the grid from the top-left corner
    s, _, _, _ = envs.step(world, corner, action, jax.random.key(0))
    assert int(s.agent) == 0


def test_pickup_reward_termination_and_respawn():
  never_back = gw.World("test", 3, 3, ((2.0, 0.0, 0.0),), 100, reward_scale=10.0)
  s, r, done, info = envs.step(never_back, _state(4, [5]), 2, jax.random.key(0))
  assert float(r) == 20.0 and not bool(done)
  assert int(s.objects[0]) == -1 and float(s.episode_return) == 2.0  # unscaled
  obs = envs.observe(never_back, s)
  assert float(obs[0].sum()) == 0.0  # an absent object is not drawn
  always_back = _world(((1.0, 0.0, 1.0), (1.0, 0.0, 0.0)))
  s, _, _, _ = envs.step(always_back, _state(4, [5, 0]), 2, jax.random.key(3))
  assert int(s.objects[0]) not in (-1, 5, 0)  # respawned on a free cell at once
  ends = _world(((-1.0, 1.0, 0.0),))
  s, r, done, info = envs.step(ends, _state(4, [5], time=7), 2, jax.random.key(0))
  assert bool(done) and float(info.episode_return) == -1.0
  assert int(s.time) == 0 and float(s.episode_return) == 0.0  # auto-reset


def test_horizon_ends_episode():
  world = _world(((1.0, 0.0, 0.0),), horizon=3)
  s = _state(4, [-1])
  dones = []
  for t in range(7):
    s, _, done, _ = envs.step(world, s, 0, jax.random.key(t))
    dones.append(bool(done))
  assert dones == [False, False, True, False, False, True, False]


def test_objects_never_overlap_under_vmap_and_scan():
  world = envs.make("big_dense_short")
  n = 32
  states = jax.vmap(envs.reset, (None, 0))(world, jax.random.split(jax.random.key(1), n))

  @jax.jit
  def run(states, key):
    def body(s, k):
      ka, ks = jax.random.split(k)
      a = jax.random.randint(ka, (n,), 0, envs.NUM_ACTIONS)
      s, r, d, info = jax.vmap(envs.step, (None, 0, 0, 0))(world, s, a, jax.random.split(ks, n))
      return s, (s.objects, s.agent, r, d)
    return jax.lax.scan(body, states, jax.random.split(key, 200))

  _, (objects, agent, rewards, dones) = run(states, jax.random.key(2))
  objects, agent = np.asarray(objects), np.asarray(agent)
  for t in range(objects.shape[0]):
    for i in range(n):
      present = [c for c in objects[t, i] if c >= 0]
      assert len(set(present)) == len(present)
      assert agent[t, i] not in present
  assert np.any(np.asarray(rewards) != 0) and np.any(np.asarray(dones))
