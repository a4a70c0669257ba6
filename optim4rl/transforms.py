"""optax API: learned optimizers as ordinary optax transformations, one job each.

- `scale_by_learned_rule`: a rule's direction, its update at learning rate 1 with the sign
  included. Its state is the hidden state of every parameter of a pytree, one (rows, P) array
  over the concatenation of all leaves, so each step is one fused kernel launch, and the
  pytree's layout (a static node, no array), so that gradients of another tree are refused
  rather than handed hidden states of other parameters.
- `odd_part`: a transform made odd in its gradients, (u(g) - u(-g)) / 2, running u once on the
  pair (g, -g). The odd rules (`Rule.odd`) are their plain rule under it.
- `learned_optimizer` and the aliases: the direction chained with optax's own
  `scale_by_learning_rate`, so learning rates and schedules are plain optax.

Validation (meta-parameters, clip, learning rate) and backend resolution happen once, when a
transform is built; gradient trees are checked against the state's layout when `update` is
traced. Extra arguments (`update(g, s, params, **extra_args)`, as OPEN's activations, key and
training progress will be) reach the direction through optax's
`GradientTransformationExtraArgs`; the current rules read gradients only.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim4rl.backends import fused_step, resolve_backend
from optim4rl.backends.registry import HIDDEN_DTYPES
from optim4rl.rules import Rule, check_meta_params, flatten_meta, get_rule


def _leaf_paths(tree) -> list[str]:
  """The readable paths ("['dense']['w']") of a pytree's leaves."""
  return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class TreeLayout:
  """The parameter pytree a state was initialised for. Static (no leaves): the state keeps
  its one array, and jit, vmap, scan and checkpoints carry the layout in the tree structure."""
  treedef: Any  # jax PyTreeDef of the parameters (of the pair (params, params) for odd rules,
  #               so their paths start with [0] or [1])
  shapes: tuple  # their leaf shapes, in flattening order

  @classmethod
  def of(cls, tree) -> TreeLayout:
    leaves, treedef = jax.tree.flatten(tree)
    return cls(treedef, tuple(tuple(jnp.shape(leaf)) for leaf in leaves))

  def mismatch(self, tree) -> str | None:
    """How `tree` differs from this layout, in words; None if it does not."""
    treedef = jax.tree.structure(tree)
    if treedef != self.treedef:
      got = _leaf_paths(tree)
      try:
        want = _leaf_paths(self.treedef.unflatten([0] * self.treedef.num_leaves))
      except Exception:  # a node type that refuses placeholder leaves: compare structures only
        want = got
      want_set, got_set = set(want), set(got)
      extra = next((p for p in got if p not in want_set), None)
      lacking = next((p for p in want if p not in got_set), None)
      if extra is not None:
        known = ", ".join(want[:4]) + (", ..." if len(want) > 4 else "")
        return f"gradient leaf {extra} is not among the parameters ({known or 'none'})"
      if lacking is not None:
        return f"the gradients lack parameter leaf {lacking}"
      return f"tree structure {treedef}, expected {self.treedef}"  # same paths, other nodes
    for (path, leaf), shape in zip(jax.tree_util.tree_flatten_with_path(tree)[0], self.shapes):
      if tuple(jnp.shape(leaf)) != shape:
        return (f"gradient leaf {jax.tree_util.keystr(path)} has shape "
                f"{tuple(jnp.shape(leaf))}, expected {shape}")
    return None


class LearnedRuleState(NamedTuple):
  """State of `scale_by_learned_rule`."""
  hidden: jax.Array  # (rows, P) float32 (or bfloat16, opt-in), rows = 8 per GRU, P = parameters
  #                    in the pytree
  #                    (2P for odd rules: the columns of -g follow those of g)
  layout: TreeLayout  # the parameters' tree, checked at each update


# State of `learned_optimizer`: optax.chain's tuple (rule state, learning-rate state), the
# latter optax.EmptyState for a constant rate or optax.ScaleByScheduleState, whose count is the
# optimizer's own number of updates, for a schedule. Fields by name:
# optax.tree_utils.tree_get(state, "hidden") / tree_get(state, "count").
LearnedOptimizerState = tuple[LearnedRuleState, optax.OptState]


def _flatten(tree):
  """(flat float32 vector over all leaves, its inverse); raises at trace time on a leaf that
  is not float32, since the kernels read float32 only."""
  leaves, treedef = jax.tree.flatten(tree)
  for i, leaf in enumerate(leaves):
    if jnp.result_type(leaf) != jnp.float32:
      raise TypeError(f"optim4rl: gradient leaf {i} has dtype {jnp.result_type(leaf)}; "
                      "learned optimizers take float32 gradients")
  shapes = [jnp.shape(leaf) for leaf in leaves]
  flat = (jnp.concatenate([jnp.ravel(leaf) for leaf in leaves]) if leaves
          else jnp.zeros((0,), jnp.float32))

  def unflatten(flat):
    out, offset = [], 0
    for shape in shapes:
      size = math.prod(shape)
      out.append(jnp.reshape(flat[offset:offset + size], shape))
      offset += size
    return jax.tree.unflatten(treedef, out)
  return flat, unflatten


def _zero_hidden(spec: Rule, hidden_dtype, params) -> LearnedRuleState:
  size = sum(int(jnp.size(leaf)) for leaf in jax.tree.leaves(params))
  return LearnedRuleState(jnp.zeros((spec.hidden_rows, size), hidden_dtype),
                          TreeLayout.of(params))


def _check_hidden_dtype(hidden_dtype) -> jnp.dtype:
  """The hidden state's storage: float32 (the default) or bfloat16, which halves the state
  and the meta path's residuals; the arithmetic is float32 either way."""
  try:
    dtype = jnp.dtype(hidden_dtype)
  except TypeError:
    dtype = None
  if dtype not in HIDDEN_DTYPES:
    raise ValueError(f"optim4rl: hidden_dtype must be float32 or bfloat16, got {hidden_dtype!r}")
  return dtype


def _check_clip(clip) -> float:
  """Algorithm 1's elementwise gradient clip c: a static number, 0 for none."""
  if isinstance(clip, (bool, str)):
    raise TypeError(f"optim4rl: clip must be a number (0: no clipping), got {clip!r}")
  try:
    value = float(clip)
  except TypeError:  # a tracer, None, an array of several values, ...
    raise TypeError(f"optim4rl: clip must be a static number (0: no clipping), got "
                    f"{clip!r}; the kernels take it as a compile-time constant") from None
  if not (value >= 0 and math.isfinite(value)):  # NaN fails too; "no clip" is 0, not inf
    raise ValueError(f"optim4rl: clip must be >= 0 and finite (0: no clipping), got {clip!r}")
  return value


def _check_learning_rate(learning_rate) -> None:
  """A learning rate is an optax schedule, None (optax: no scaling) or a number > 0: a NaN,
  infinite, zero or negative rate would train silently to nothing or to NaN."""
  if learning_rate is None or callable(learning_rate):
    return
  if isinstance(learning_rate, jax.core.Tracer) and jnp.ndim(learning_rate) == 0:
    return  # a traced rate (vmapped over rates, say) has no value to check here
  value = None
  if not isinstance(learning_rate, (bool, str)) and np.ndim(learning_rate) == 0:
    try:
      value = float(learning_rate)
    except (TypeError, ValueError):  # an object, a complex number, ...
      pass
  if value is None:
    raise TypeError(f"optim4rl: learning_rate must be a number or an optax schedule, got "
                    f"{learning_rate!r}")
  if not (value > 0 and math.isfinite(value)):
    raise ValueError(f"optim4rl: learning_rate must be a finite number > 0, got {learning_rate!r}")


def odd_part(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`tx` made odd in its input, as Adam is: (u(g) - u(-g)) / 2.

  `tx` runs once on the pair (g, -g) and keeps one state for both signs; for a learned rule
  that is one launch with two hidden columns per parameter, those of -g after those of g.
  Extra arguments pass through to `tx`.
  """
  tx = optax.with_extra_args_support(tx)

  def init(params):
    return tx.init((params, params))

  def update(updates, state, params=None, **extra_args):
    pair = (updates, jax.tree.map(jnp.negative, updates))
    pair_params = None if params is None else (params, params)
    (pos, neg), state = tx.update(pair, state, pair_params, **extra_args)
    return jax.tree.map(lambda p, n: 0.5 * (p - n), pos, neg), state

  return optax.GradientTransformationExtraArgs(init, update)


def _rule_transform(spec: Rule, update, hidden_dtype: jnp.dtype
                    ) -> optax.GradientTransformationExtraArgs:
  """The transform of `spec` around `update`, the plain rule's step (None: init only), with
  hidden states of the (checked) `hidden_dtype`."""
  plain = get_rule(spec.math)
  tx = optax.GradientTransformationExtraArgs(
      functools.partial(_zero_hidden, plain, hidden_dtype), update)
  return odd_part(tx) if spec.odd else tx


def scale_by_learned_rule(meta, *, rule: str | Rule, clip: float = 1.0,
                          backend: str | None = None, hidden_dtype=jnp.float32
                          ) -> optax.GradientTransformationExtraArgs:
  """The learned rule's direction: updates = the rule's update at learning rate 1, sign
  included (descend by adding it). `meta` may be a tracer: meta-gradients flow through.

  `clip`: Algorithm 1's elementwise gradient clip (0: none); `backend`: a fused-step backend,
  None for the best one here; `hidden_dtype`: the hidden state's storage, float32 or
  (opt-in, half the memory, its error in docs/results.md) bfloat16.
  """
  spec = check_meta_params(meta, rule)
  clip = _check_clip(clip)
  backend = resolve_backend(backend)
  hidden_dtype = _check_hidden_dtype(hidden_dtype)
  plain = get_rule(spec.math)  # odd rules run their plain rule's kernel on [g, -g]

  def update(updates, state, params=None, **extra_args):
    del params, extra_args  # the current rules read gradients only
    # The flat hidden array has no tree of its own: a tree of the same size but another
    # layout would silently get the hidden states of other parameters.
    mismatch = state.layout.mismatch(updates)
    if mismatch is not None:
      raise ValueError(f"optim4rl: the gradients do not match the parameters whose hidden states "
                       f"the optimizer state holds: {mismatch}; was the state initialised for "
                       f"these parameters and rule {spec.name!r}?")
    flat, unflatten = _flatten(updates)
    need = (plain.hidden_rows, flat.shape[0])
    if jnp.shape(state.hidden) != need:
      raise ValueError(f"optim4rl: optimizer state holds hidden states of shape "
                       f"{jnp.shape(state.hidden)}, but the gradients need {need}: was the state "
                       f"initialised for these parameters and rule {spec.name!r}?")
    if jnp.result_type(state.hidden) != hidden_dtype:
      raise ValueError(f"optim4rl: optimizer state holds {jnp.result_type(state.hidden)} hidden "
                       f"states, but this optimizer keeps them in {hidden_dtype}: initialise the "
                       f"state with the same hidden_dtype")
    # Flattened per update, not once: meta-gradients then sum over updates leaf by leaf, in the
    # order they always have (bitwise the same results as before).
    direction, hidden = fused_step(plain, flatten_meta(meta, plain), flat, state.hidden,
                                   clip=clip, backend=backend)
    return unflatten(direction), LearnedRuleState(hidden, state.layout)

  return _rule_transform(spec, update, hidden_dtype)


def _with_learning_rate(direction, learning_rate: optax.ScalarOrSchedule
                        ) -> optax.GradientTransformationExtraArgs:
  # The direction already descends: no sign flip. A schedule reads the chain's own count.
  _check_learning_rate(learning_rate)
  return optax.chain(direction, optax.scale_by_learning_rate(learning_rate, flip_sign=False))


def learned_optimizer(meta, *, rule: str | Rule, learning_rate: optax.ScalarOrSchedule = 1e-3,
                      clip: float = 1.0, backend: str | None = None, hidden_dtype=jnp.float32
                      ) -> optax.GradientTransformationExtraArgs:
  """Any rule as an optax optimizer: its direction scaled by `learning_rate` (a number or an
  optax schedule of the update count)."""
  return _with_learning_rate(scale_by_learned_rule(meta, rule=rule, clip=clip, backend=backend,
                                                   hidden_dtype=hidden_dtype), learning_rate)


def init_state(rule: str | Rule, params, *, learning_rate: optax.ScalarOrSchedule = 1e-3,
               hidden_dtype=jnp.float32) -> LearnedOptimizerState:
  """The state `learned_optimizer(meta, rule=rule, learning_rate=learning_rate,
  hidden_dtype=hidden_dtype).init(params)` returns, without meta-parameters: zero hidden
  states and, for a schedule, count 0."""
  return _with_learning_rate(_rule_transform(get_rule(rule), None,
                                             _check_hidden_dtype(hidden_dtype)),
                             learning_rate).init(params)


def learned_update(meta, grads, state: LearnedOptimizerState, *, rule: str | Rule = "optim4rl",
                   learning_rate: optax.ScalarOrSchedule = 1e-3, clip: float = 1.0,
                   backend: str | None = None, hidden_dtype=jnp.float32, **extra_args):
  """Functional form for meta-training: (updates, new state), differentiable w.r.t. `meta`."""
  tx = learned_optimizer(meta, rule=rule, learning_rate=learning_rate, clip=clip,
                         backend=backend, hidden_dtype=hidden_dtype)
  return tx.update(grads, state, **extra_args)


def optim4rl(meta, learning_rate: optax.ScalarOrSchedule = 1e-3, *, variant: str = "paper",
             **options) -> optax.GradientTransformationExtraArgs:
  """Optim4RL. variant="paper" is Algorithm 1; variant="public" the authors' later code
  (GRU inputs g and g^2, no m_sign); its meta-parameters come from rule "optim4rl_public".
  `options`: clip, backend, hidden_dtype of `learned_optimizer`."""
  rules = {"paper": "optim4rl", "public": "optim4rl_public"}
  if variant not in rules:
    raise ValueError(f"unknown Optim4RL variant {variant!r}; expected one of {sorted(rules)}")
  return learned_optimizer(meta, rule=rules[variant], learning_rate=learning_rate, **options)


def linear_optim(meta, learning_rate: optax.ScalarOrSchedule = 1e-3,
                 **options) -> optax.GradientTransformationExtraArgs:
  """LinearOptim baseline: update -lr (a g + b) from one GRU. `options`: clip, backend,
  hidden_dtype of `learned_optimizer`."""
  return learned_optimizer(meta, rule="linear_optim", learning_rate=learning_rate, **options)


def l2lgd2(meta, learning_rate: optax.ScalarOrSchedule = 1e-3,
           **options) -> optax.GradientTransformationExtraArgs:
  """L2LGD^2 baseline: update -lr exp(o) g from one GRU on L2L-preprocessed gradients.
  `options`: clip, backend, hidden_dtype of `learned_optimizer`."""
  return learned_optimizer(meta, rule="l2lgd2", learning_rate=learning_rate, **options)
