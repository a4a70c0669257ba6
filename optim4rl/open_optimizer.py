"""OPEN as an optax optimizer: the rule of optim4rl/rules/open.py applied to a parameter tree.

    tx = open_optimizer(load_open_meta("breakout_OPEN.npy"),
                        plan=OpenPlan(minibatches=8, epochs=4, updates=1220))
    updates, state = tx.update(grads, state, params, activations=acts, key=key)

What the tree says:
- **networks** are the top-level entries of the parameter tree ({"actor": ..., "critic": ...});
  the *actor* (named by `actor`, "actor" by default, or a predicate on a leaf's key path) gets
  the learned noise; every network keeps its own momenta and GRU carries (all per element).
- **layers** of a network are the parents of its leaves (flax: "Dense_0" holds "kernel" and
  "bias"; a leaf directly under the network, a continuous actor's "log_std", is a layer of its
  own), in the tree's order; layer proportion = i / (L - 1).
- **activations** (an extra argument of `update`): for every layer, the mean over the minibatch
  of |its outputs| (units,), as a tree {network: {layer: array}} mirroring the layers' paths;
  kernel element (i, j) and bias element j get output neuron j's dormancy.
- **key** (an extra argument): the noise of this step, one key per tensor split from it.
Training and batch proportion come from the state's step count and the run's `OpenPlan`. The
update is p_new = p - (u - mean u), the mean over all elements of all networks. Gradients are
taken as given: OPEN's PPO clips each network's by global norm 0.5 first, as it does for Adam.

**backend**: "reference" steps the tree tensor by tensor with the specification's
`tensor_step`; "cpu", "cuda" and "triton" lay every tensor end to end and step them all at
once with the fused kernels (optim4rl/backends/open_step.py), with the same noise (the same
keys) and the same state layout; None takes the first of "cpu", "cuda", "triton" that can run
here, else "reference".
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim4rl.backends.open_step import open_step, resolve_open_backend
from optim4rl.rules import open as spec
from optim4rl.rules.open import OpenMeta


class OpenPlan(NamedTuple):
  """The run an OPEN optimizer serves: M minibatches per epoch, E epochs per rollout, U
  rollouts (PPO updates) in all."""
  minibatches: int
  epochs: int
  updates: int

  def proportions(self, count):
    """(training, batch) proportion after `count` optimizer steps: floor(it / (M E)) / (U - 1)
    and (floor(it / M) mod E) / (E - 1) (0 where the denominator is 0)."""
    m, e, u = self
    training = jnp.floor_divide(count, m * e) / max(u - 1, 1)
    batch = jnp.mod(jnp.floor_divide(count, m), e) / max(e - 1, 1)
    return training.astype(jnp.float32), batch.astype(jnp.float32)


class OpenState(NamedTuple):
  count: jax.Array  # int32 optimizer steps taken
  momenta: Any      # per parameter (6, *shape): the momenta at DECAYS
  carry: Any        # per parameter (*shape, H): the GRU's hidden state


class _Leaf(NamedTuple):
  """Where a parameter tensor sits: its network, layer (a key path) and layer proportion."""
  path: tuple
  network: str
  layer: tuple
  layer_proportion: float
  actor: bool


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _describe(tree, actor) -> list[_Leaf]:
  """The network, layer and layer proportion of every leaf of the parameter tree."""
  paths = [tuple(_key_name(k) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  if not paths or any(len(p) < 2 for p in paths):
    raise ValueError("OPEN needs a tree of networks, {network: {layer: {...}}} such as "
                     "{'actor': ..., 'critic': ...}; got leaves at "
                     f"{[ '/'.join(p) for p in paths if len(p) < 2][:3] or 'nowhere'}")
  layers: dict[str, list[tuple]] = {}
  for p in paths:
    layer = p[:-1] if len(p) > 2 else p  # actor/Dense_0/kernel -> actor/Dense_0; actor/log_std
    if layer not in layers.setdefault(p[0], []):
      layers[p[0]].append(layer)
  is_actor = actor if callable(actor) else (lambda path: path[0] == actor)
  leaves = []
  for p in paths:
    layer = p[:-1] if len(p) > 2 else p
    order = layers[p[0]]
    leaves.append(_Leaf(p, p[0], layer, order.index(layer) / max(len(order) - 1, 1),
                        bool(is_actor(p))))
  if not any(leaf.actor for leaf in leaves):
    raise ValueError(f"OPEN: no actor in the parameter tree (networks {sorted(layers)}); name "
                     f"it with actor= (a network's name, or a predicate on a leaf's key path)")
  return leaves


def _lookup(tree, path: tuple):
  node = tree
  for key in path:
    try:
      node = node[key]
    except (KeyError, IndexError, TypeError):
      return None
  return node


def _dormancy(activations, leaf: _Leaf, shape: tuple):
  """The dormancy of `leaf`'s output neurons, from its layer's mean |activation|."""
  a = _lookup(activations, leaf.layer)
  name = "/".join(leaf.layer)
  if a is None:
    raise ValueError(f"OPEN: activations lack layer {name} (give the mean |output| of every "
                     f"layer, as a tree {{network: {{layer: (units,)}}}})")
  units = int(math.prod(jnp.shape(a)))
  out = shape[-1] if shape else 1
  if units == 1:  # a one-unit layer (or log_std's scalar): identically 1
    return jnp.ones((), jnp.float32)
  if jnp.ndim(a) != 1 or units != out:
    raise ValueError(f"OPEN: activations of layer {name} have shape {tuple(jnp.shape(a))}; its "
                     f"parameters have {out} output units")
  return spec.dormancy(a)


def open_optimizer(meta: OpenMeta, *, plan: OpenPlan,
                   actor: str | Callable[[tuple], bool] = "actor",
                   backend: str | None = None) -> optax.GradientTransformationExtraArgs:
  """OPEN as an optax transformation; `update(grads, state, params, activations=, key=)`.

  `plan`: the run's minibatches per epoch, epochs and rollouts (training and batch
  proportion); `actor`: which network gets the learned noise (see the module docstring);
  `backend`: "reference", "cpu", "cuda", "triton" or None (a kernel where one can run; see
  the docstring).
  Meta-parameters may be tracers (evolution strategies vmap over them)."""
  net = spec.net_of(meta)
  if not all(isinstance(v, int) and v >= 1 for v in plan):
    raise ValueError(f"OPEN: the plan's minibatches, epochs and updates must be integers >= 1, "
                     f"got {plan}")
  backend = resolve_open_backend(backend)
  step = _tensor_steps if backend == "reference" else functools.partial(_flat_step,
                                                                          backend=backend)

  def init(params):
    _describe(params, actor)  # refuses a tree without an actor now rather than at update
    _check_float32(params, "parameter")
    return OpenState(
        count=jnp.zeros([], jnp.int32),
        momenta=jax.tree.map(lambda p: jnp.zeros((len(spec.DECAYS),) + jnp.shape(p),
                                                 jnp.float32), params),
        carry=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p) + (net.hidden,), jnp.float32),
                           params))

  def update(grads, state: OpenState, params=None, *, activations=None, key=None, **extra):
    del extra  # other agents' extra arguments
    if params is None:
      raise ValueError("OPEN: update needs the parameters (a feature of the rule)")
    if activations is None:
      raise ValueError("OPEN: update needs activations=, the mean |output| of every layer")
    if key is None:
      raise ValueError("OPEN: update needs key=, the PRNG key of the actor's noise")
    structure = jax.tree.structure(state.momenta)
    for name, tree in (("gradient", grads), ("parameter", params)):
      if jax.tree.structure(tree) != structure:
        raise ValueError(f"OPEN: the {name} tree is not the tree the state was initialised "
                         f"for: {jax.tree.structure(tree)} != {structure}")
      _check_float32(tree, name)
    leaves = _describe(params, actor)
    training, batch = plan.proportions(state.count)
    g_leaves = jax.tree.leaves(grads)
    p_leaves = jax.tree.leaves(params)
    m_leaves = jax.tree.leaves(state.momenta)
    c_leaves = jax.tree.leaves(state.carry)
    keys = jax.random.split(key, len(g_leaves))
    dormancy = [_dormancy(activations, leaf, jnp.shape(p)) for leaf, p in zip(leaves, p_leaves)]
    noise = [jax.random.normal(k, jnp.shape(p), jnp.float32) if leaf.actor else None
             for leaf, p, k in zip(leaves, p_leaves, keys)]
    us, momenta, carry = step(meta, leaves, p_leaves, g_leaves, m_leaves, c_leaves, dormancy,
                              noise, training, batch)
    total = sum(int(math.prod(jnp.shape(u))) for u in us)
    mean = sum(jnp.sum(u) for u in us) / max(total, 1)
    updates = jax.tree.unflatten(structure, [-(u - mean) for u in us])
    return updates, OpenState(state.count + 1, jax.tree.unflatten(structure, momenta),
                              jax.tree.unflatten(structure, carry))

  return optax.GradientTransformationExtraArgs(init, update)


def _tensor_steps(meta, leaves, ps, gs, ms, cs, dormancy, noise, training, batch):
  """(u, momenta, carry) per leaf, tensor by tensor (the "reference" backend)."""
  out = [spec.tensor_step(meta, p, g, m, c, training=training, layer=leaf.layer_proportion,
                          batch=batch, dormancy=d, noise=n, actor=leaf.actor)
         for leaf, p, g, m, c, d, n in zip(leaves, ps, gs, ms, cs, dormancy, noise)]
  return tuple(map(list, zip(*out))) if out else ([], [], [])


def _flat_step(meta, leaves, ps, gs, ms, cs, dormancy, noise, training, batch, *, backend):
  """The same results, from every leaf laid end to end in one step of a fused kernel."""
  shapes = [jnp.shape(p) for p in ps]
  sizes = [math.prod(shape) for shape in shapes]
  segments = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
  flat = lambda xs: jnp.concatenate([jnp.ravel(x) for x in xs])
  hidden = spec.net_of(meta).hidden
  u, m, c = open_step(
      meta, flat(ps), flat(gs),
      jnp.concatenate([jnp.reshape(m, (len(spec.DECAYS), n)) for m, n in zip(ms, sizes)], 1),
      jnp.concatenate([jnp.reshape(c, (n, hidden)).T for c, n in zip(cs, sizes)], 1),
      segments,
      np.array([leaf.layer_proportion for leaf in leaves], np.float32),
      np.array([leaf.actor for leaf in leaves], np.float32),
      flat([jnp.broadcast_to(d, shape) for d, shape in zip(dormancy, shapes)]),
      # The critic's noise is never read: zeros in its place.
      flat([jnp.zeros(shape, jnp.float32) if n is None else n for n, shape in zip(noise, shapes)]),
      training, batch, backend=backend)
  cut = lambda x: jnp.split(x, segments[1:-1], axis=-1)
  return ([jnp.reshape(x, shape) for x, shape in zip(cut(u), shapes)],
          [jnp.reshape(x, (len(spec.DECAYS),) + shape) for x, shape in zip(cut(m), shapes)],
          [jnp.reshape(x.T, shape + (hidden,)) for x, shape in zip(cut(c), shapes)])


def _check_float32(tree, name: str):
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if jnp.result_type(leaf) != jnp.float32:
      raise TypeError(f"OPEN: {name} {jax.tree_util.keystr(path)} has dtype "
                      f"{jnp.result_type(leaf)}; OPEN takes float32")
