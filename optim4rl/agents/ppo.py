"""PPO for Brax with any optax optimizer, learned ones included.

Brax's own pieces do the parts they already do well: its policy/value networks, running
observation statistics, rollouts (`acting.generate_unroll`) and the PPO loss (clipped
surrogate, GAE, reward scaling, advantage normalisation, entropy bonus). Brax's trainer
itself is not used: it hard-codes `optax.adam` and calls `update(grads, state)` without
params, so it cannot run a learned optimizer. The loop here mirrors it: collect
`batch_size * num_minibatches` trajectories of `unroll_length` steps, update the observation
statistics, then `num_updates_per_batch` epochs of shuffled minibatch steps.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from brax.training import acting
from brax.training import types as brax_types
from brax.training.acme import running_statistics, specs
from brax.training.agents.ppo import losses as ppo_losses
from brax.training.agents.ppo import networks as ppo_networks

from optim4rl.envs.brax_tasks import PPOSettings

Params = ppo_losses.PPONetworkParams
_EXTRA_FIELDS = ("truncation", "episode_metrics", "episode_done")


class PPOState(NamedTuple):
  params: Params
  opt_state: optax.OptState
  normalizer: Any      # running_statistics.RunningStatisticsState
  env_state: Any       # brax State of all envs
  key: jax.Array


def check_settings(s: PPOSettings, num_envs: int):
  trajectories = s.batch_size * s.num_minibatches
  if num_envs < 1 or trajectories % num_envs:
    raise ValueError(f"batch_size * num_minibatches ({trajectories}) must be a multiple of the "
                     f"number of envs ({num_envs})")


def make_networks(env, s: PPOSettings) -> ppo_networks.PPONetworks:
  preprocess = (running_statistics.normalize if s.normalize_observations
                else brax_types.identity_observation_preprocessor)
  return ppo_networks.make_ppo_networks(env.observation_size, env.action_size,
                                        preprocess_observations_fn=preprocess,
                                        policy_hidden_layer_sizes=s.policy_hidden,
                                        value_hidden_layer_sizes=s.value_hidden)


def init_params(nets: ppo_networks.PPONetworks, key) -> Params:
  k_pol, k_val = jax.random.split(key)
  return Params(policy=nets.policy_network.init(k_pol), value=nets.value_network.init(k_val))


def init(env, nets, optimizer: optax.GradientTransformation, key, num_envs: int) -> PPOState:
  k_params, k_env, k_run = jax.random.split(key, 3)
  params = init_params(nets, k_params)
  normalizer = running_statistics.init_state(
      specs.Array((env.observation_size,), jnp.dtype("float32")))
  env_state = env.reset(_env_keys(k_env, num_envs))
  return PPOState(params, optimizer.init(params), normalizer, env_state, k_run)


def _env_keys(key, num_envs: int):
  """`num_envs` keys for `env.reset`: Brax wants raw uint32 keys, not typed ones."""
  keys = jax.random.split(key, num_envs)
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return keys


def collect(env, nets, params: Params, normalizer, env_state, key, s: PPOSettings):
  """`batch_size * num_minibatches` trajectories of `unroll_length` steps, as
  (env_state, Transition with leading axes [trajectories, unroll_length])."""
  num_envs = env_state.done.shape[0]
  policy = ppo_networks.make_inference_fn(nets)((normalizer, params.policy, params.value))

  def unroll(carry, _):
    state, key = carry
    key, k_unroll = jax.random.split(key)
    state, data = acting.generate_unroll(env, state, policy, k_unroll, s.unroll_length,
                                         extra_fields=_EXTRA_FIELDS)
    return (state, key), data

  (env_state, _), data = jax.lax.scan(unroll, (env_state, key), None,
                                      length=s.batch_size * s.num_minibatches // num_envs)
  # [unrolls, T, envs, ...] -> [unrolls * envs, T, ...]
  data = jax.tree.map(lambda x: jnp.swapaxes(x, 1, 2).reshape((-1,) + x.shape[1:2] + x.shape[3:]),
                      data)
  return env_state, jax.lax.stop_gradient(data)


def loss(nets, params: Params, normalizer, data, key, s: PPOSettings):
  """Brax's PPO loss: (total, metrics)."""
  return ppo_losses.compute_ppo_loss(
      params, normalizer, data, key, nets, entropy_cost=s.entropy_cost, discounting=s.discounting,
      reward_scaling=s.reward_scaling, gae_lambda=s.gae_lambda,
      clipping_epsilon=s.clipping_epsilon, normalize_advantage=True)


def minibatches(data, key, count: int):
  """Shuffle trajectories and split them into `count` minibatches (leading axis)."""
  return jax.tree.map(lambda x: jax.random.permutation(key, x).reshape((count, -1) + x.shape[1:]),
                      data)


def episode_stats(data):
  """(sum of returns of the episodes that ended in `data`, number of them)."""
  done = data.extras["state_extras"]["episode_done"]
  ret = data.extras["state_extras"]["episode_metrics"]["sum_reward"]
  return jnp.sum(ret * done), jnp.sum(done)


def observe(normalizer, data, s: PPOSettings):
  if not s.normalize_observations:
    return normalizer
  return running_statistics.update(normalizer, data.observation)


def update(env, nets, optimizer: optax.GradientTransformation, s: PPOSettings, state: PPOState,
           grad_stat=None):
  """One PPO training step: (new state, (return sum, episodes, mean loss)), plus the sum of
  `grad_stat(grads)` over the step's minibatch updates as a fourth output if given (e.g. a
  histogram of the agent-gradients), as `train.update` does for A2C.
  """
  key, k_roll, k_sgd = jax.random.split(state.key, 3)
  env_state, data = collect(env, nets, state.params, state.normalizer, state.env_state, k_roll, s)
  normalizer = observe(state.normalizer, data, s)
  grad_fn = jax.grad(lambda p, mb, k: loss(nets, p, normalizer, mb, k, s), has_aux=True)

  def minibatch_step(carry, mb):
    params, opt_state, key = carry
    key, k_loss = jax.random.split(key)
    grads, metrics = grad_fn(params, mb, k_loss)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    stat = grad_stat(grads) if grad_stat is not None else None
    return (optax.apply_updates(params, updates), opt_state, key), (metrics["total_loss"], stat)

  def epoch(carry, _):
    params, opt_state, key = carry
    key, k_perm = jax.random.split(key)
    carry, out = jax.lax.scan(minibatch_step, (params, opt_state, key),
                              minibatches(data, k_perm, s.num_minibatches))
    return carry, out

  (params, opt_state, _), (losses, stats) = jax.lax.scan(
      epoch, (state.params, state.opt_state, k_sgd), None, length=s.num_updates_per_batch)
  out = (*episode_stats(data), jnp.mean(losses))
  if grad_stat is not None:
    out += (jnp.sum(stats, axis=(0, 1)),)
  return PPOState(params, opt_state, normalizer, env_state, key), out


def evaluate(env, nets, state: PPOState, key, num_envs: int, s: PPOSettings):
  """Mean return of one full episode in each of `num_envs` fresh envs with the deterministic
  policy (the policy's mode), as Brax's evaluator scores its PPO agents."""
  policy = ppo_networks.make_inference_fn(nets)(
      (state.normalizer, state.params.policy, state.params.value), deterministic=True)

  def act(carry, _):
    env_state, total, alive = carry
    action, _ = policy(env_state.obs, None)
    env_state = env.step(env_state, action)
    total = total + alive * env_state.reward
    return (env_state, total, alive * (1.0 - env_state.done)), None

  start = (env.reset(_env_keys(key, num_envs)), jnp.zeros(num_envs), jnp.ones(num_envs))
  (_, total, _), _ = jax.lax.scan(act, start, None, length=-(-s.episode_length // s.action_repeat))
  return jnp.mean(total)


def env_steps_per_update(s: PPOSettings) -> int:
  return s.batch_size * s.num_minibatches * s.unroll_length * s.action_repeat
