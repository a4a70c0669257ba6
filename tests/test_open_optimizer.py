"""OPEN: the reference rule against an independent twin built from flax modules (nn.GRUCell,
nn.Dense, nn.LayerNorm) and loaded from the authors' published .npy with flax's own parameter
structure; the features, proportions, dormancy, noise mask and zero mean written again here
from ../shared/OPEN.md, tensor by tensor in numpy; and clear errors for wrong input."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optim4rl.open_optimizer import OpenPlan, open_optimizer
from optim4rl.rules import open as spec
from conftest import rel_err

PUBLISHED = {"breakout": 8, "multi": 16}  # name -> GRU hidden size


def twin_mlp(width: int) -> nn.Sequential:
  """The authors' MLP: an nn.Sequential, whose parameters are layers_0, _1, _3, _4, _6."""
  return nn.Sequential([nn.Dense(width), nn.LayerNorm(epsilon=1e-6), nn.relu,
                        nn.Dense(width), nn.LayerNorm(epsilon=1e-6), nn.relu, nn.Dense(3)])


def twin(name: str):
  """(gru, gru params, mlp, mlp params) loaded from the published vector the way the authors
  flattened it: ravel_pytree over {"gru_params", "params"} (sorted keys)."""
  hidden = PUBLISHED[name]
  gru, mlp = nn.GRUCell(features=hidden), twin_mlp(2 * hidden)
  x, h = jnp.zeros((1, 19)), jnp.zeros((1, hidden))
  template = {"gru_params": gru.init(jax.random.key(0), h, x)["params"],
              "params": mlp.init(jax.random.key(1), h)["params"]}
  assert sorted(template["params"]) == ["layers_0", "layers_1", "layers_3", "layers_4",
                                        "layers_6"]
  flat = np.load(spec.PRETRAINED / f"{name}_OPEN.npy")
  _, unravel = ravel_pytree(template)
  params = unravel(jnp.asarray(flat))
  return gru, params["gru_params"], mlp, params["params"]


def tree():
  """An actor (discrete: two Dense layers) and a critic, as the gymnax PPO's networks."""
  k = iter(jax.random.split(jax.random.key(3), 16))
  dense = lambda i, o: {"kernel": jax.random.normal(next(k), (i, o)),
                        "bias": 0.1 * jax.random.normal(next(k), (o,))}
  return {"actor": {"Dense_0": dense(4, 5), "Dense_1": dense(5, 3)},
          "critic": {"Dense_0": dense(4, 5), "Dense_1": dense(5, 1)}}


def activations(step: int):
  k = jax.random.key(100 + step)
  units = {"actor": {"Dense_0": 5, "Dense_1": 3}, "critic": {"Dense_0": 5, "Dense_1": 1}}
  return {net: {layer: jnp.abs(jax.random.normal(jax.random.fold_in(k, 10 * i + j), (n,)))
                for j, (layer, n) in enumerate(layers.items())}
          for i, (net, layers) in enumerate(units.items())}


def twin_updates(name, params, grads_seq, acts_seq, keys, plan):
  """The twin's updates and carries, step by step, with numpy features."""
  gru, gru_params, mlp, mlp_params = twin(name)
  gru_apply, mlp_apply = jax.jit(gru.apply), jax.jit(mlp.apply)
  decays = np.array([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999])
  paths = [tuple(k.key for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  p = {path: np.asarray(leaf, np.float64) for path, leaf in
       zip(paths, jax.tree.leaves(params))}
  m = {path: np.zeros((6,) + v.shape) for path, v in p.items()}
  h = {path: jnp.zeros(v.shape + (gru.features,)) for path, v in p.items()}
  out = []
  for it, (grads, acts, key) in enumerate(zip(grads_seq, acts_seq, keys)):
    M, E, U = plan
    training = (it // (M * E)) / (U - 1)
    batch = ((it // M) % E) / (E - 1)
    noise_keys = jax.random.split(key, len(paths))
    us, carries = {}, {}
    for n, (path, g) in enumerate(zip(paths, jax.tree.leaves(grads))):
      g = np.asarray(g, np.float64)
      m[path] = decays.reshape(6, *[1] * g.ndim) * m[path] + (1 - decays.reshape(
          6, *[1] * g.ndim)) * g
      feats = [p[path]] + [np.sign(x) for x in m[path]] + [np.log(np.abs(x) + 1e-13)
                                                           for x in m[path]]
      feats += [np.sign(g), np.log(np.abs(g) + 1e-13)]
      feats = [f / np.sqrt(1e-5 + np.mean(f ** 2)) for f in feats]
      net, layer = path[0], path[1]
      layers = list(acts[net])
      a = np.asarray(acts[net][layer], np.float64) + 1e-11
      dorm = a / np.abs(a).sum() * len(a)
      feats += [np.full(g.shape, training), np.full(g.shape, layers.index(layer) /
                                                    (len(layers) - 1)),
                np.full(g.shape, batch), np.broadcast_to(dorm, g.shape)]
      x = jnp.asarray(np.stack(feats, -1), jnp.float32)
      h[path], _ = gru_apply({"params": gru_params}, h[path], x)
      o = np.asarray(mlp_apply({"params": mlp_params}, h[path]), np.float64)
      u = 0.001 * o[..., 0] * np.exp(0.001 * o[..., 1])
      if net == "actor":
        eps = np.asarray(jax.random.normal(noise_keys[n], g.shape, jnp.float32), np.float64)
        u = u + 0.001 * o[..., 2] * eps
      us[path] = u
      carries[path] = np.asarray(h[path])
    mean = sum(u.sum() for u in us.values()) / sum(u.size for u in us.values())
    updates = {path: -(u - mean) for path, u in us.items()}
    for path in p:
      p[path] = p[path] + updates[path]
    out.append((updates, carries))
  return paths, out


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_rule_matches_the_flax_twin_on_published_weights(name, backend):
  """The specification (and the fused cpu kernel) against the twin."""
  meta = spec.pretrained_open(name)
  assert spec.net_of(meta).hidden == PUBLISHED[name]
  np.testing.assert_array_equal(np.asarray(spec.flatten_open_meta(meta)),
                                np.load(spec.PRETRAINED / f"{name}_OPEN.npy"))
  plan = OpenPlan(minibatches=1, epochs=2, updates=3)  # both proportions change every step
  params = tree()
  steps = 4
  grads_seq = [jax.tree.map(lambda x, i=i: 0.01 * jax.random.normal(jax.random.key(i), x.shape)
                            * (1 + i), params) for i in range(steps)]
  acts_seq = [activations(i) for i in range(steps)]
  keys = [jax.random.key(50 + i) for i in range(steps)]
  paths, expected = twin_updates(name, params, grads_seq, acts_seq, keys, plan)

  tx = open_optimizer(meta, plan=plan, backend=backend)
  update = jax.jit(tx.update)
  state = tx.init(params)
  for i in range(steps):
    updates, state = update(grads_seq[i], state, params, activations=acts_seq[i], key=keys[i])
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    want_u, want_h = expected[i]
    # Updates against the whole update's scale: p - mean(u) cancels in small tensors.
    got = np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)])
    assert rel_err(got, np.concatenate([want_u[path].ravel() for path in paths])) <= 1e-5, i
    for path, h in zip(paths, jax.tree.leaves(state.carry)):
      assert rel_err(h, want_h[path]) <= 1e-5, (i, path)
    total = sum(float(jnp.sum(u)) for u in jax.tree.leaves(updates))
    assert abs(total) <= 1e-6 * sum(float(jnp.sum(jnp.abs(u))) for u in jax.tree.leaves(updates))


def test_noise_only_on_the_actor():
  """The update's dependence on the key is confined to the actor's tensors (up to the mean,
  shared by all)."""
  params = tree()
  tx = open_optimizer(spec.pretrained_open("breakout"), plan=OpenPlan(2, 2, 3))
  grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
  state = tx.init(params)
  update = jax.jit(tx.update)
  u1, _ = update(grads, state, params, activations=activations(0), key=jax.random.key(1))
  u2, _ = update(grads, state, params, activations=activations(0), key=jax.random.key(2))
  diff = jax.tree.map(lambda a, b: np.asarray(a - b), u1, u2)
  critic = np.concatenate([d.ravel() for d in jax.tree.leaves(diff["critic"])])
  actor = np.concatenate([d.ravel() for d in jax.tree.leaves(diff["actor"])])
  assert np.ptp(critic) <= 1e-9  # the critic moves only by the shared mean's change
  assert np.ptp(actor) > 1e-6


def test_proportions_follow_the_plan():
  plan = OpenPlan(minibatches=8, epochs=4, updates=11)
  its = jnp.arange(0, 8 * 4 * 11)
  training, batch = plan.proportions(its)
  np.testing.assert_allclose(training[::32], np.arange(11) / 10)
  np.testing.assert_allclose(batch[:32:8], np.arange(4) / 3)
  assert float(training[-1]) == 1.0 and float(batch[31]) == 1.0


def test_dormancy_and_layer_proportions():
  d = np.asarray(spec.dormancy(jnp.array([0.0, 1.0, 3.0])))
  np.testing.assert_allclose(d, (np.array([0, 1, 3]) + 1e-11) / (4 + 3e-11) * 3, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(spec.dormancy(jnp.array([7.0]))), [1.0])


def test_flat_round_trip_and_save_load(tmp_path):
  for name in PUBLISHED:
    meta = spec.pretrained_open(name)
    spec.save_open_meta(tmp_path / f"{name}.npz", meta)
    again = spec.load_open_meta(tmp_path / f"{name}.npz")
    np.testing.assert_array_equal(spec.flatten_open_meta(again), spec.flatten_open_meta(meta))
  zero = spec.zero_meta("large")
  assert spec.net_of(zero) == spec.NETS["large"]
  assert spec.flatten_open_meta(zero).shape == (3571,)


def test_wrong_inputs_are_clear_errors(tmp_path):
  wrong = tmp_path / "wrong.npy"
  np.save(wrong, np.zeros(1210, np.float32))
  with pytest.raises(ValueError, match="1210 values.*1211 \\(default network\\) or 3571"):
    spec.load_open_meta(wrong)
  with pytest.raises(FileNotFoundError):
    spec.load_open_meta(tmp_path / "missing.npy")
  truncated = tmp_path / "truncated.npy"
  truncated.write_bytes((spec.PRETRAINED / "breakout_OPEN.npy").read_bytes()[:200])
  with pytest.raises(ValueError, match="not a readable OPEN"):
    spec.load_open_meta(truncated)
  with pytest.raises(ValueError, match="no published OPEN"):
    spec.pretrained_open("pong")

  meta = spec.pretrained_open("breakout")
  tx = open_optimizer(meta, plan=OpenPlan(2, 2, 3))
  params = tree()
  grads = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="activations lack layer actor/Dense_1"):
    acts = activations(0)
    del acts["actor"]["Dense_1"]
    tx.update(grads, state, params, activations=acts, key=key)
  with pytest.raises(ValueError, match="needs activations"):
    tx.update(grads, state, params, key=key)
  with pytest.raises(ValueError, match="needs key"):
    tx.update(grads, state, params, activations=activations(0))
  with pytest.raises(ValueError, match="no actor"):
    open_optimizer(meta, plan=OpenPlan(2, 2, 3)).init({"policy": params["actor"]})
  with pytest.raises(TypeError, match="float32"):
    tx.update(jax.tree.map(lambda x: x.astype(jnp.bfloat16), grads), state, params,
              activations=activations(0), key=key)
  with pytest.raises(ValueError, match="not the tree"):
    tx.update({"actor": grads["actor"]}, state, params, activations=activations(0), key=key)
  with pytest.raises(ValueError, match="output units"):
    acts = activations(0)
    acts["actor"]["Dense_0"] = jnp.ones(4)
    tx.update(grads, state, params, activations=acts, key=key)
  with pytest.raises(ValueError, match="plan"):
    open_optimizer(meta, plan=OpenPlan(0, 2, 3))


def test_actor_may_be_named_or_a_predicate():
  meta = spec.zero_meta()
  params = {"pi": tree()["actor"], "v": tree()["critic"]}
  for actor in ("pi", lambda path: path[0] == "pi"):
    tx = open_optimizer(meta, plan=OpenPlan(1, 1, 1), actor=actor)
    state = tx.init(params)
    acts = {"pi": activations(0)["actor"], "v": activations(0)["critic"]}
    updates, _ = tx.update(params, state, params, activations=acts, key=jax.random.key(0))
    assert math.isfinite(float(sum(jnp.sum(u) for u in jax.tree.leaves(updates))))
