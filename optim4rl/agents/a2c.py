"""A2C for the gridworlds (Appendix C): networks, rollouts and losses.

Feature net: MLP(32) for small worlds; Conv(16 features, kernel 2) then MLP(32) for big ones;
a policy head over the 9 actions and a value head. Targets are lambda-returns (lambda 0.95,
discount 0.995) over rollouts of 20 steps; loss = actor + 0.5 critic + 0.01 entropy. The
meta-training outer loss is the actor part alone (Appendix C).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from optim4rl.envs import gridworld as gw


@dataclasses.dataclass(frozen=True)
class A2CConfig:
  rollout: int = 20
  discount: float = 0.995
  gae_lambda: float = 0.95
  critic_weight: float = 0.5
  entropy_weight: float = 0.01


def patches_2x2(x):
  """(B, H, W, C) -> (B, H-1, W-1, 4C): every 2x2 window, so a Dense layer on it is a
  VALID 2x2 convolution (as a matrix product, which XLA runs far faster on CPU)."""
  return jnp.concatenate([x[:, :-1, :-1], x[:, :-1, 1:], x[:, 1:, :-1], x[:, 1:, 1:]], axis=-1)


class ActorCritic(nn.Module):
  """Observations (..., N+1, H, W) -> (logits (..., 9), value (...))."""
  conv: bool

  @nn.compact
  def __call__(self, obs):
    batch = obs.shape[:-3]
    x = obs.reshape((-1,) + obs.shape[-3:])
    if self.conv:
      x = nn.relu(nn.Dense(16, name="Conv_2x2")(patches_2x2(jnp.moveaxis(x, 1, -1))))
    x = nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1))))
    logits = nn.Dense(gw.NUM_ACTIONS)(x)
    value = nn.Dense(1)(x)[:, 0]
    return logits.reshape(batch + logits.shape[1:]), value.reshape(batch)


def network(world: gw.World) -> ActorCritic:
  return ActorCritic(conv=world.is_big)


def init_params(world: gw.World, key):
  return network(world).init(key, jnp.zeros(world.obs_shape, jnp.float32))


class Rollout(NamedTuple):
  obs: jax.Array             # (T + 1, B, N+1, H, W): the T observations acted on, then the next
  actions: jax.Array         # (T, B)
  rewards: jax.Array         # (T, B) scaled rewards
  dones: jax.Array           # (T, B) an episode ended on this step
  episode_return: jax.Array  # (T, B) unscaled return of the episode that ended (else 0)


def reset_envs(world: gw.World, key, num_envs: int):
  return jax.vmap(gw.reset, (None, 0))(world, jax.random.split(key, num_envs))


def collect(world: gw.World, params, env_states, key, steps: int):
  """Act for `steps` steps in a batch of worlds with the current policy (no gradients)."""
  net = network(world)
  params = jax.lax.stop_gradient(params)
  observe = jax.vmap(gw.observe, (None, 0))
  step = jax.vmap(gw.step, (None, 0, 0, 0))

  def one(states, k):
    k_act, k_env = jax.random.split(k)
    obs = observe(world, states)
    logits, _ = net.apply(params, obs)
    action = jax.random.categorical(k_act, logits)
    states, reward, done, info = step(world, states, action,
                                      jax.random.split(k_env, action.shape[0]))
    return states, (obs, action, reward, done, info.episode_return)

  env_states, (obs, act, rew, done, ep_ret) = jax.lax.scan(
      one, env_states, jax.random.split(key, steps))
  obs = jnp.concatenate([obs, observe(world, env_states)[None]])
  return env_states, Rollout(obs, act, rew, done, ep_ret)


def lambda_returns(rewards, discounts, values, lam: float):
  """G_t = r_t + d_t ((1 - lam) v_{t+1} + lam G_{t+1}), bootstrapped with G_T = v_T.

  rewards, discounts: (T, ...); values: (T + 1, ...).
  """
  def back(g_next, x):
    r, d, v_next = x
    g = r + d * ((1.0 - lam) * v_next + lam * g_next)
    return g, g

  _, g = jax.lax.scan(back, values[-1], (rewards, discounts, values[1:]), reverse=True)
  return g


def losses(world: gw.World, params, rollout: Rollout, cfg: A2CConfig):
  """dict of the A2C loss terms (means over time and batch) and their weighted total."""
  logits, values = network(world).apply(params, rollout.obs)
  discounts = cfg.discount * (1.0 - rollout.dones.astype(jnp.float32))
  targets = jax.lax.stop_gradient(
      lambda_returns(rollout.rewards, discounts, values, cfg.gae_lambda))
  td = targets - values[:-1]
  log_probs = jax.nn.log_softmax(logits[:-1])
  taken = jnp.take_along_axis(log_probs, rollout.actions[..., None], axis=-1)[..., 0]
  actor = -jnp.mean(taken * jax.lax.stop_gradient(td))
  critic = jnp.mean(jnp.square(td))
  entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1))
  total = actor + cfg.critic_weight * critic - cfg.entropy_weight * entropy
  return {"total": total, "actor": actor, "critic": critic, "entropy": entropy}


def episode_stats(rollout: Rollout):
  """(sum of unscaled returns of the episodes that ended, how many ended)."""
  return (jnp.sum(rollout.episode_return),
          jnp.sum(rollout.dones.astype(jnp.float32)))
