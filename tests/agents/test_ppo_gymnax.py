"""PPO on gymnax tasks (MinAtar, CartPole) with optax optimizers and ones that take extra
arguments (activations, key), as the learned optimizer OPEN does."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim4rl.agents import ppo_gymnax as ppo
from optim4rl.envs import gymnax_tasks
from optim4rl.training import ppo_gymnax as train_ppo


def _agent(task, s, optimizer, seed=0):
  env, env_params = gymnax_tasks.make(task)
  nets = ppo.make_networks(ppo.action_count(env, env_params), s)
  state = ppo.init(env, env_params, nets, optimizer, jax.random.PRNGKey(seed), s)
  return env, env_params, nets, state


def test_unknown_tasks_and_bad_settings_are_refused():
  with pytest.raises(ValueError, match="unknown gymnax task 'Pong'.*Breakout-MinAtar"):
    gymnax_tasks.settings("Pong")
  with pytest.raises(ValueError, match="unknown gymnax task"):
    train_ppo.train("breakout", optax.adam(1e-3), steps=10)
  with pytest.raises(ValueError, match="multiple of num_minibatches"):
    train_ppo.small("CartPole-v1", num_minibatches=3)
  with pytest.raises(ValueError, match="num_envs must be a positive integer"):
    train_ppo.small("CartPole-v1", num_envs=0)
  with pytest.raises(ValueError, match="learning_rate must be finite"):
    train_ppo.small("CartPole-v1", learning_rate=float("nan"))


def test_minatar_shapes_and_activation_means():
  s = gymnax_tasks.settings("Breakout-MinAtar")  # the paper's networks: 2 x 64, ReLU
  env, env_params, nets, state = _agent("Breakout-MinAtar", s, optax.adam(s.learning_rate))
  assert state.obs.shape == (s.num_envs, 400)  # 10 x 10 x 4, flattened
  assert jax.tree.map(jnp.shape, state.params) == {
      "actor": {"Dense_0": {"kernel": (400, 64), "bias": (64,)},
                "Dense_1": {"kernel": (64, 64), "bias": (64,)},
                "Dense_2": {"kernel": (64, 3), "bias": (3,)}},
      "critic": {"Dense_0": {"kernel": (400, 64), "bias": (64,)},
                 "Dense_1": {"kernel": (64, 64), "bias": (64,)},
                 "Dense_2": {"kernel": (64, 1), "bias": (1,)}}}
  assert all(np.all(np.asarray(layer["bias"]) == 0)
             for net in state.params.values() for layer in net.values())
  for net, layer, scale in [("actor", "Dense_0", 2 ** 0.5), ("actor", "Dense_2", 0.01),
                            ("critic", "Dense_2", 1.0)]:  # orthogonal columns of this norm
    k = np.asarray(state.params[net][layer]["kernel"])
    np.testing.assert_allclose(k.T @ k, scale ** 2 * np.eye(k.shape[1]), atol=1e-5)

  (_, obs, _), data, (ret, eps) = jax.jit(
      lambda st: ppo.collect(env, env_params, nets, st, st.key, s))(state)
  assert obs.shape == (s.num_envs, 400) and data.obs.shape == (s.num_steps, s.num_envs, 400)
  assert data.value.shape == data.next_value.shape == (s.num_steps, s.num_envs)
  adv, targets = ppo.gae(data, s)
  mb = jax.tree.map(lambda x: x[:256], ppo.training_batch(data, adv, targets))
  _, (acts, _) = ppo.loss(nets, state.params, mb, s)
  assert jax.tree.map(jnp.shape, acts) == {
      "actor": {"Dense_0": (64,), "Dense_1": (64,), "Dense_2": (3,)},
      "critic": {"Dense_0": (64,), "Dense_1": (64,), "Dense_2": (1,)}}
  assert all(np.all(np.asarray(a) >= 0) for a in jax.tree.leaves(acts))
  logits, values, _ = ppo.forward(nets, state.params, mb.obs)
  np.testing.assert_allclose(acts["actor"]["Dense_2"], np.abs(logits).mean(0), rtol=1e-5)
  np.testing.assert_allclose(acts["critic"]["Dense_2"], np.abs(values).mean(0, keepdims=True),
                             rtol=1e-5)


def test_gae_bootstraps_at_time_limits_only():
  s = train_ppo.small("CartPole-v1", gamma=0.5, gae_lambda=1.0)
  one = jnp.ones((3, 1))
  data = ppo.Transition(obs=one, action=one, log_prob=one, value=jnp.zeros((3, 1)), reward=one,
                        next_value=2 * one, terminated=jnp.array([[0.], [1.], [0.]]),
                        done=jnp.array([[0.], [1.], [1.]]))  # step 2: truncated
  adv, _ = ppo.gae(data, s)
  # step 2: 1 + 0.5 * 2 (bootstrapped); step 1: 1 (terminal); step 0: 1 + 0.5 * 2 + 0.5 * 1
  np.testing.assert_allclose(np.asarray(adv)[:, 0], [2.5, 1.0, 2.0])
  adv, _ = ppo.gae(data, train_ppo.small("CartPole-v1", gamma=0.5, gae_lambda=1.0,
                                         bootstrap_truncated=False))
  np.testing.assert_allclose(np.asarray(adv)[:, 0], [2.5, 1.0, 1.0])


def test_each_network_is_clipped_on_its_own():
  grads = {"actor": {"w": jnp.full((4,), 3.0)}, "critic": {"w": jnp.array([0.1, 0.2])}}
  clipped = ppo.clip_per_network(grads, 0.5)
  np.testing.assert_allclose(ppo.global_norm(clipped["actor"]), 0.5, rtol=1e-6)
  np.testing.assert_array_equal(clipped["critic"]["w"], grads["critic"]["w"])  # under the limit


def recording_sgd(learning_rate, steps):
  """SGD that records what `update` receives: each network's gradient norm (largest so far),
  the activation means' shapes (at trace time) and the keys of the first `steps` updates;
  fails at trace time without the extra arguments."""
  seen = {}

  def init(params):
    return {"count": jnp.zeros((), jnp.int32), "max_norm": jnp.zeros(2),
            "keys": jnp.zeros((steps, 2), jnp.uint32), "min_act": jnp.full((), jnp.inf)}

  def update(grads, state, params=None, *, activations=None, key=None, **extra):
    assert activations is not None and key is not None, "extra arguments missing"
    seen["activations"] = jax.tree.map(jnp.shape, activations)
    norms = jnp.stack([ppo.global_norm(grads["actor"]), ppo.global_norm(grads["critic"])])
    key_data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    state = {"count": state["count"] + 1, "max_norm": jnp.maximum(state["max_norm"], norms),
             "keys": state["keys"].at[state["count"]].set(key_data.astype(jnp.uint32)),
             "min_act": jnp.minimum(state["min_act"],
                                    jnp.min(jnp.concatenate(jax.tree.leaves(activations))))}
    return jax.tree.map(lambda g: -learning_rate * g, grads), state

  return optax.GradientTransformationExtraArgs(init, update), seen


def test_optimizer_receives_clipped_grads_activations_and_keys():
  s = train_ppo.small("Breakout-MinAtar", max_grad_norm=1e-3)  # every gradient gets clipped
  updates = 2
  steps = updates * s.num_epochs * s.num_minibatches
  tx, seen = recording_sgd(1e-2, steps)
  env, env_params, nets, state = _agent("Breakout-MinAtar", s, tx)
  step = jax.jit(lambda st: ppo.update(env, env_params, nets, tx, s, st))
  for _ in range(updates):
    state, (ret, eps, loss) = step(state)
  assert np.isfinite(loss)
  assert seen["activations"] == {"actor": {"Dense_0": (32,), "Dense_1": (32,), "Dense_2": (3,)},
                                 "critic": {"Dense_0": (32,), "Dense_1": (32,), "Dense_2": (1,)}}
  rec = state.opt_state
  assert int(rec["count"]) == int(state.updates) == steps and int(state.rollouts) == updates
  assert np.all(np.asarray(rec["max_norm"]) <= 1e-3 * (1 + 1e-5)), rec["max_norm"]
  assert np.all(np.asarray(rec["max_norm"]) > 0.9e-3)  # both networks had gradients to clip
  assert float(rec["min_act"]) >= 0.0
  assert len({tuple(k) for k in np.asarray(rec["keys"])}) == steps  # a fresh key every step
  # At the paper's limit: actor's and critic's gradients each of norm <= 0.5 (CartPole's
  # critic starts with norms ~5, its actor ~0.2).
  s = train_ppo.small("CartPole-v1")
  tx, _ = recording_sgd(1e-2, s.num_epochs * s.num_minibatches)
  env, env_params, nets, state = _agent("CartPole-v1", s, tx)
  state, _ = jax.jit(lambda st: ppo.update(env, env_params, nets, tx, s, st))(state)
  actor, critic = np.asarray(state.opt_state["max_norm"])
  assert 0 < actor <= 0.5 * (1 + 1e-5) and 0.5 * (1 - 1e-5) <= critic <= 0.5 * (1 + 1e-5)
  assert train_ppo.optimizer_updates("CartPole-v1", 3 * 256, s, chunks=3) == 3 * 8


def test_adam_ppo_learns_cartpole():
  # A random policy keeps the pole up for ~22 steps.
  s = train_ppo.small("CartPole-v1")
  curve = train_ppo.train("CartPole-v1", optax.adam(3e-3), steps=40 * 8 * 32, settings=s,
                          chunks=4, seeds=(0, 1))
  assert np.all(curve.returns[:, 0] < 40), curve.returns
  assert np.all(curve.returns[:, -2:].mean(1) > 100), curve.returns
  assert np.all(np.isfinite(curve.losses))
  np.testing.assert_array_equal(curve.steps, np.arange(1, 5) * 10 * 8 * 32)


def test_killed_run_resumes_to_the_same_curve(tmp_path):
  from optim4rl.training.checkpoint import RunCheckpoint
  s = train_ppo.small("Breakout-MinAtar")
  run = lambda **kw: train_ppo.train("Breakout-MinAtar", optax.adam(5e-3), steps=3 * 2 * 256,
                                     settings=s, chunks=3, seeds=(0, 1), **kw)
  whole = run()

  def kill(chunk, env_steps, mean_return):
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):  # gymnax states and running returns saved by orbax
    run(checkpoint=RunCheckpoint(tmp_path, {}, every_seconds=0), progress=kill)
  ckpt = RunCheckpoint(tmp_path, {})
  resumed = run(checkpoint=ckpt)
  assert ckpt.resumed_after == 1
  np.testing.assert_array_equal(resumed.returns, whole.returns)
  np.testing.assert_array_equal(resumed.losses, whole.losses)
