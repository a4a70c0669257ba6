"""PPO for gymnax tasks (MinAtar) with any optax optimizer, learned ones that take extra
arguments included.

PureJaxRL-style PPO: separate actor and critic MLPs, rollouts of `num_steps` in `num_envs`
auto-resetting envs, GAE, then `num_epochs` epochs over the whole batch, reshuffled each
epoch, in `num_minibatches` minibatches. Each minibatch step takes one gradient of the total
loss w.r.t. {"actor", "critic"} params, clips each network's gradient to global norm
`max_grad_norm` (here, before any optimizer, so every optimizer sees the same gradients), and
calls `update(grads, opt_state, params, activations=..., key=...)`: `activations` are the
per-layer mean |outputs| over the minibatch (what a learned optimizer such as OPEN reads for
dormancy), `key` a fresh PRNG key per step (for stochastic updates). Plain optax optimizers
ignore both (`optax.with_extra_args_support`).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from optim4rl.envs.gymnax_tasks import PPOSettings


class MLP(nn.Module):
  """ReLU hidden layers and a linear head, orthogonally initialised with zero biases.
  Returns (output, {"Dense_i": output of layer i}): post-ReLU for hidden layers, the head's
  raw output last; the names are those of the params."""
  hidden: Sequence[int]
  out: int
  head_scale: float

  @nn.compact
  def __call__(self, x):
    acts = {}
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, kernel_init=nn.initializers.orthogonal(math.sqrt(2.0)),
                           bias_init=nn.initializers.zeros)(x))
      acts[f"Dense_{i}"] = x
    x = nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(self.head_scale),
                 bias_init=nn.initializers.zeros)(x)
    acts[f"Dense_{len(self.hidden)}"] = x
    return x, acts


class Networks(NamedTuple):
  actor: MLP   # categorical logits
  critic: MLP  # value, shape (..., 1)


class Transition(NamedTuple):
  obs: jax.Array         # (..., obs_dim) flattened
  action: jax.Array
  log_prob: jax.Array
  value: jax.Array
  reward: jax.Array
  next_value: jax.Array  # value of the true next observation (before any auto-reset)
  terminated: jax.Array  # 1.0 where the game ended here
  done: jax.Array        # 1.0 where the episode ended here: terminated or truncated (time limit)


class Minibatch(NamedTuple):
  """What the loss reads of each sample, leading axis [samples]."""
  obs: jax.Array
  action: jax.Array
  log_prob: jax.Array
  value: jax.Array
  advantage: jax.Array
  target: jax.Array


class PPOState(NamedTuple):
  params: dict             # {"actor": flax params, "critic": flax params}
  opt_state: optax.OptState
  env_state: Any           # gymnax state of all envs
  obs: jax.Array           # (num_envs, obs_dim) last observations, flattened
  episode_return: jax.Array  # (num_envs,) return so far of each env's running episode
  key: jax.Array
  rollouts: jax.Array      # rollouts collected so far
  updates: jax.Array       # optimizer updates made so far


def make_networks(num_actions: int, s: PPOSettings) -> Networks:
  return Networks(actor=MLP(tuple(s.hidden), num_actions, 0.01),
                  critic=MLP(tuple(s.hidden), 1, 1.0))


def action_count(env, env_params) -> int:
  space = env.action_space(env_params)
  if not hasattr(space, "n"):
    raise ValueError(f"PPO here needs a discrete action space; {env.name} has "
                     f"{type(space).__name__}")
  return int(space.n)


def _flat(obs, batch_dims: int = 1):
  return obs.reshape(obs.shape[:batch_dims] + (-1,)).astype(jnp.float32)


def init_params(nets: Networks, obs_dim: int, key) -> dict:
  k_actor, k_critic = jax.random.split(key)
  dummy = jnp.zeros((1, obs_dim), jnp.float32)
  return {"actor": nets.actor.init(k_actor, dummy)["params"],
          "critic": nets.critic.init(k_critic, dummy)["params"]}


def init(env, env_params, nets: Networks, optimizer: optax.GradientTransformation, key,
         s: PPOSettings) -> PPOState:
  k_params, k_env, k_run = jax.random.split(key, 3)
  obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(k_env, s.num_envs), env_params)
  obs = _flat(obs)
  params = init_params(nets, obs.shape[-1], k_params)
  opt_state = optax.with_extra_args_support(optimizer).init(params)
  zero = jnp.zeros((), jnp.int32)
  return PPOState(params, opt_state, env_state, obs, jnp.zeros(s.num_envs, jnp.float32), k_run,
                  zero, zero)


def forward(nets: Networks, params: dict, obs):
  """(logits, values, {"actor": activations, "critic": activations})."""
  logits, actor_acts = nets.actor.apply({"params": params["actor"]}, obs)
  value, critic_acts = nets.critic.apply({"params": params["critic"]}, obs)
  return logits, value[..., 0], {"actor": actor_acts, "critic": critic_acts}


def value(nets: Networks, params: dict, obs):
  return nets.critic.apply({"params": params["critic"]}, obs)[0][..., 0]


def collect(env, env_params, nets: Networks, state: PPOState, key, s: PPOSettings):
  """`num_steps` steps in every env: ((env_state, obs, episode_return), Transition with
  leading axes [num_steps, num_envs], (return sum, episodes) of the episodes that ended)."""
  params = state.params
  step_env = jax.vmap(env.step, in_axes=(0, 0, 0, None))

  def step(carry, key):
    env_state, obs, ep_ret = carry
    k_act, k_env = jax.random.split(key)
    logits, v, _ = forward(nets, params, obs)
    action = jax.random.categorical(k_act, logits)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
    next_obs, env_state, reward, terminated, truncated, info = step_env(
        jax.random.split(k_env, obs.shape[0]), env_state, action, env_params)
    done = jnp.logical_or(terminated, truncated)
    # gymnax has already reset envs that ended; the value target needs the observation the
    # episode actually ended on.
    next_value = value(nets, params, _flat(info["final_observation"]))
    ep_ret = ep_ret + reward
    ended = (jnp.sum(jnp.where(done, ep_ret, 0.0)), jnp.sum(done))
    ep_ret = jnp.where(done, 0.0, ep_ret)
    t = Transition(obs, action, log_prob, v, reward, next_value,
                   terminated.astype(jnp.float32), done.astype(jnp.float32))
    return (env_state, _flat(next_obs), ep_ret), (t, ended)

  carry, (data, (ret, eps)) = jax.lax.scan(
      step, (state.env_state, state.obs, state.episode_return), jax.random.split(key, s.num_steps))
  return carry, jax.lax.stop_gradient(data), (jnp.sum(ret), jnp.sum(eps).astype(jnp.int32))


def gae(data: Transition, s: PPOSettings):
  """(advantages, value targets), each [num_steps, num_envs]."""
  end = data.terminated if s.bootstrap_truncated else data.done
  delta = data.reward + s.gamma * (1.0 - end) * data.next_value - data.value

  def back(adv_next, xs):
    delta, done = xs
    adv = delta + s.gamma * s.gae_lambda * (1.0 - done) * adv_next
    return adv, adv

  _, adv = jax.lax.scan(back, jnp.zeros_like(delta[0]), (delta, data.done), reverse=True)
  return adv, adv + data.value


def training_batch(data: Transition, advantages, targets) -> Minibatch:
  """A rollout's samples for the loss, [num_steps, num_envs] flattened to [samples]."""
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  return Minibatch(flat(data.obs), flat(data.action), flat(data.log_prob), flat(data.value),
                   flat(advantages), flat(targets))


def activation_means(acts: dict) -> dict:
  """Per layer, the mean |output| over the minibatch: (width,) each."""
  return jax.tree.map(lambda a: jnp.mean(jnp.abs(a), axis=0), acts)


def loss(nets: Networks, params: dict, mb: Minibatch, s: PPOSettings):
  """PPO's total loss (clipped surrogate, clipped value loss, entropy bonus) of a minibatch:
  (total, (activation means, metrics))."""
  logits, v, acts = forward(nets, params, mb.obs)
  log_probs = jax.nn.log_softmax(logits)
  log_prob = jnp.take_along_axis(log_probs, mb.action[:, None], -1)[:, 0]
  ratio = jnp.exp(log_prob - mb.log_prob)
  adv = (mb.advantage - mb.advantage.mean()) / (mb.advantage.std() + 1e-8)
  actor_loss = -jnp.mean(jnp.minimum(ratio * adv,
                                     jnp.clip(ratio, 1 - s.clip_eps, 1 + s.clip_eps) * adv))
  v_clipped = mb.value + jnp.clip(v - mb.value, -s.clip_eps, s.clip_eps)
  value_loss = 0.5 * jnp.mean(jnp.maximum(jnp.square(v - mb.target),
                                          jnp.square(v_clipped - mb.target)))
  entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, -1))
  total = actor_loss + s.value_coef * value_loss - s.entropy_coef * entropy
  metrics = {"actor_loss": actor_loss, "value_loss": value_loss, "entropy": entropy}
  return total, (jax.lax.stop_gradient(activation_means(acts)), metrics)


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clip_per_network(grads: dict, max_norm: float) -> dict:
  """Each network's gradients scaled to global norm at most `max_norm`, independently."""
  def clip(g):
    norm = global_norm(g)
    return jax.tree.map(lambda x: x * (max_norm / jnp.maximum(norm, max_norm)), g)
  return {name: clip(g) for name, g in grads.items()}


def minibatches(batch, key, count: int):
  """The batch shuffled and split into `count` minibatches (leading axis)."""
  perm = jax.random.permutation(key, jax.tree.leaves(batch)[0].shape[0])
  return jax.tree.map(lambda x: x[perm].reshape((count, -1) + x.shape[1:]), batch)


def update(env, env_params, nets: Networks, optimizer: optax.GradientTransformation,
           s: PPOSettings, state: PPOState):
  """One rollout and `num_epochs` x `num_minibatches` optimizer steps: (new state,
  (return sum, episodes ended, mean loss))."""
  tx = optax.with_extra_args_support(optimizer)
  key, k_roll, k_sgd = jax.random.split(state.key, 3)
  (env_state, obs, ep_ret), data, (ret, eps) = collect(env, env_params, nets, state, k_roll, s)
  adv, targets = gae(data, s)
  batch = training_batch(data, adv, targets)
  grad_fn = jax.value_and_grad(lambda p, mb: loss(nets, p, mb, s), has_aux=True)

  def minibatch_step(carry, mb):
    params, opt_state, key = carry
    key, k_opt = jax.random.split(key)
    (total, (acts, _)), grads = grad_fn(params, mb)
    grads = clip_per_network(grads, s.max_grad_norm)
    updates, opt_state = tx.update(grads, opt_state, params, activations=acts, key=k_opt)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, key), total

  def epoch(carry, _):
    params, opt_state, key = carry
    key, k_perm = jax.random.split(key)
    return jax.lax.scan(minibatch_step, (params, opt_state, key),
                        minibatches(batch, k_perm, s.num_minibatches))

  (params, opt_state, _), losses = jax.lax.scan(epoch, (state.params, state.opt_state, k_sgd),
                                                None, length=s.num_epochs)
  new = PPOState(params, opt_state, env_state, obs, ep_ret, key, state.rollouts + 1,
                 state.updates + s.num_epochs * s.num_minibatches)
  return new, (ret, eps, jnp.mean(losses))


def env_steps_per_update(s: PPOSettings) -> int:
  return s.num_envs * s.num_steps
