"""optax API: learned optimizers as ordinary optax transformations, one job each.

- `scale_by_learned_rule`: a rule's direction, its update at learning rate 1 with the sign
  included. Its state is the hidden state of every parameter of a pytree, one (rows, P) array
  over the concatenation of all leaves, so each step is one fused kernel launch.
- `odd_part`: a transform made odd in its gradients, (u(g) - u(-g)) / 2, running u once on the
  pair (g, -g). The odd rules (`Rule.odd`) are their plain rule under it.
- `learned_optimizer` and the aliases: the direction chained with optax's own
  `scale_by_learning_rate`, so learning rates and schedules are plain optax.

Validation and backend resolution happen once, when a transform is built; gradient trees are
checked when `update` is traced. Extra arguments (`update(g, s, params, **extra_args)`, as
OPEN's activations, key and training progress will be) reach the direction through optax's
`GradientTransformationExtraArgs`; the current rules read gradients only.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim4rl.backends import fused_step, resolve_backend
from optim4rl.rules import Rule, check_meta_params, flatten_meta, get_rule


class LearnedRuleState(NamedTuple):
  """State of `scale_by_learned_rule`."""
  hidden: jax.Array  # (rows, P) float32, rows = 8 per GRU, P = parameters in the pytree
  #                    (2P for odd rules: the columns of -g follow those of g)


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


def _zero_hidden(spec: Rule, params) -> LearnedRuleState:
  size = sum(int(jnp.size(leaf)) for leaf in jax.tree.leaves(params))
  return LearnedRuleState(jnp.zeros((spec.hidden_rows, size), jnp.float32))


def _check_clip(clip) -> float:
  """Algorithm 1's elementwise gradient clip c: a static number, 0 for none."""
  if isinstance(clip, (bool, str)):
    raise TypeError(f"optim4rl: clip must be a number (0: no clipping), got {clip!r}")
  try:
    value = float(clip)
  except TypeError:  # a tracer, None, an array of several values, ...
    raise TypeError(f"optim4rl: clip must be a static number (0: no clipping), got "
                    f"{clip!r}; the kernels take it as a compile-time constant") from None
  if not value >= 0:  # NaN fails too
    raise ValueError(f"optim4rl: clip must be >= 0 (0: no clipping), got {clip!r}")
  return value


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


def _rule_transform(spec: Rule, update) -> optax.GradientTransformationExtraArgs:
  """The transform of `spec` around `update`, the plain rule's step (None: init only)."""
  plain = get_rule(spec.math)
  tx = optax.GradientTransformationExtraArgs(functools.partial(_zero_hidden, plain), update)
  return odd_part(tx) if spec.odd else tx


def scale_by_learned_rule(meta, *, rule: str | Rule, clip: float = 1.0,
                          backend: str | None = None) -> optax.GradientTransformationExtraArgs:
  """The learned rule's direction: updates = the rule's update at learning rate 1, sign
  included (descend by adding it). `meta` may be a tracer: meta-gradients flow through.

  `clip`: Algorithm 1's elementwise gradient clip (0: none); `backend`: a fused-step backend,
  None for the best one here.
  """
  spec = check_meta_params(meta, rule)
  clip = _check_clip(clip)
  backend = resolve_backend(backend)
  plain = get_rule(spec.math)  # odd rules run their plain rule's kernel on [g, -g]

  def update(updates, state, params=None, **extra_args):
    del params, extra_args  # the current rules read gradients only
    flat, unflatten = _flatten(updates)
    need = (plain.hidden_rows, flat.shape[0])
    if jnp.shape(state.hidden) != need:
      raise ValueError(f"optim4rl: optimizer state holds hidden states of shape "
                       f"{jnp.shape(state.hidden)}, but the gradients need {need}: was the state "
                       f"initialised for these parameters and rule {spec.name!r}?")
    # Flattened per update, not once: meta-gradients then sum over updates leaf by leaf, in the
    # order they always have (bitwise the same results as before).
    direction, hidden = fused_step(plain, flatten_meta(meta, plain), flat, state.hidden,
                                   clip=clip, backend=backend)
    return unflatten(direction), LearnedRuleState(hidden)

  return _rule_transform(spec, update)


def _with_learning_rate(direction, learning_rate: optax.ScalarOrSchedule
                        ) -> optax.GradientTransformationExtraArgs:
  # The direction already descends: no sign flip. A schedule reads the chain's own count.
  return optax.chain(direction, optax.scale_by_learning_rate(learning_rate, flip_sign=False))


def learned_optimizer(meta, *, rule: str | Rule, learning_rate: optax.ScalarOrSchedule = 1e-3,
                      clip: float = 1.0, backend: str | None = None
                      ) -> optax.GradientTransformationExtraArgs:
  """Any rule as an optax optimizer: its direction scaled by `learning_rate` (a number or an
  optax schedule of the update count)."""
  return _with_learning_rate(scale_by_learned_rule(meta, rule=rule, clip=clip, backend=backend),
                             learning_rate)


def init_state(rule: str | Rule, params, *,
               learning_rate: optax.ScalarOrSchedule = 1e-3) -> LearnedOptimizerState:
  """The state `learned_optimizer(meta, rule=rule, learning_rate=learning_rate).init(params)`
  returns, without meta-parameters: zero hidden states and, for a schedule, count 0."""
  return _with_learning_rate(_rule_transform(get_rule(rule), None), learning_rate).init(params)


def learned_update(meta, grads, state: LearnedOptimizerState, *, rule: str | Rule = "optim4rl",
                   learning_rate: optax.ScalarOrSchedule = 1e-3, clip: float = 1.0,
                   backend: str | None = None, **extra_args):
  """Functional form for meta-training: (updates, new state), differentiable w.r.t. `meta`."""
  tx = learned_optimizer(meta, rule=rule, learning_rate=learning_rate, clip=clip,
                         backend=backend)
  return tx.update(grads, state, **extra_args)


def optim4rl(meta, learning_rate: optax.ScalarOrSchedule = 1e-3, *, variant: str = "paper",
             clip: float = 1.0, backend: str | None = None
             ) -> optax.GradientTransformationExtraArgs:
  """Optim4RL. variant="paper" is Algorithm 1; variant="public" the authors' later code
  (GRU inputs g and g^2, no m_sign); its meta-parameters come from rule "optim4rl_public"."""
  rules = {"paper": "optim4rl", "public": "optim4rl_public"}
  if variant not in rules:
    raise ValueError(f"unknown Optim4RL variant {variant!r}; expected one of {sorted(rules)}")
  return learned_optimizer(meta, rule=rules[variant], learning_rate=learning_rate, clip=clip,
                           backend=backend)


def linear_optim(meta, learning_rate: optax.ScalarOrSchedule = 1e-3, *, clip: float = 1.0,
                 backend: str | None = None) -> optax.GradientTransformationExtraArgs:
  """LinearOptim baseline: update -lr (a g + b) from one GRU."""
  return learned_optimizer(meta, rule="linear_optim", learning_rate=learning_rate, clip=clip,
                           backend=backend)


def l2lgd2(meta, learning_rate: optax.ScalarOrSchedule = 1e-3, *, clip: float = 1.0,
           backend: str | None = None) -> optax.GradientTransformationExtraArgs:
  """L2LGD^2 baseline: update -lr exp(o) g from one GRU on L2L-preprocessed gradients."""
  return learned_optimizer(meta, rule="l2lgd2", learning_rate=learning_rate, clip=clip,
                           backend=backend)
