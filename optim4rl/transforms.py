"""optax API: learned optimizers as ordinary `optax.GradientTransformation`s.

All parameters of a pytree share one optimizer state: hidden states as a (rows, P) array
over the concatenation of all leaves, so each step is one fused kernel launch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from optim4rl.backends import fused_step, resolve_backend
from optim4rl.rules import check_meta_params, flatten_meta, get_rule

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


class LearnedOptimizerState(NamedTuple):
  hidden: jax.Array  # (rows, P) float32, rows = 8 per GRU, P = parameters in the pytree
  #                    (2P for odd rules: the columns of -g follow those of g)
  count: jax.Array   # int32 number of updates applied (drives learning-rate schedules)


def init_state(rule: str, params) -> LearnedOptimizerState:
  """Zero hidden states for every parameter of `params` (any pytree of arrays)."""
  spec = get_rule(rule)
  size = sum(int(jnp.size(leaf)) for leaf in jax.tree.leaves(params)) * spec.columns_per_param
  return LearnedOptimizerState(jnp.zeros((spec.hidden_rows, size), jnp.float32),
                               jnp.zeros([], jnp.int32))


def _flatten_grads(grads):
  leaves, treedef = jax.tree.flatten(grads)
  for i, leaf in enumerate(leaves):
    if jnp.result_type(leaf) != jnp.float32:
      raise TypeError(f"optim4rl: gradient leaf {i} has dtype {jnp.result_type(leaf)}; "
                      "learned optimizers take float32 gradients")
  shapes = [jnp.shape(leaf) for leaf in leaves]
  flat = (jnp.concatenate([jnp.ravel(leaf) for leaf in leaves]) if leaves
          else jnp.zeros((0,), jnp.float32))
  return flat, treedef, shapes


def _unflatten(flat, treedef, shapes):
  out, offset = [], 0
  for shape in shapes:
    size = 1
    for d in shape:
      size *= d
    out.append(jnp.reshape(flat[offset:offset + size], shape))
    offset += size
  return jax.tree.unflatten(treedef, out)


def learned_update(meta, grads, state: LearnedOptimizerState, *, rule: str = "optim4rl",
                   learning_rate: ScalarOrSchedule = 1e-3, clip: float = 1.0,
                   backend: str | None = None):
  """Functional form for meta-training: (updates, new state), differentiable w.r.t. `meta`.

  updates = learning_rate * direction, where direction is the rule's update at rate 1.
  """
  spec = check_meta_params(meta, rule)
  backend = resolve_backend(backend)
  flat, treedef, shapes = _flatten_grads(grads)
  size = flat.shape[0]
  if spec.odd:  # one launch over [g, -g]
    flat = jnp.concatenate([flat, -flat])
  if state.hidden.shape != (spec.hidden_rows, flat.shape[0]):
    raise ValueError(f"optim4rl: optimizer state holds hidden states of shape "
                     f"{state.hidden.shape}, but the gradients need "
                     f"{(spec.hidden_rows, flat.shape[0])}: was the state initialised for "
                     "these parameters and this rule?")
  direction, hidden = fused_step(spec, flatten_meta(meta, spec), flat, state.hidden,
                                 clip=clip, backend=backend)
  if spec.odd:
    direction = 0.5 * (direction[:size] - direction[size:])
  lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
  updates = _unflatten(lr * direction, treedef, shapes)
  return updates, LearnedOptimizerState(hidden, optax.safe_int32_increment(state.count))


def learned_optimizer(meta, *, rule: str, learning_rate: ScalarOrSchedule = 1e-3,
                      clip: float = 1.0, backend: str | None = None
                      ) -> optax.GradientTransformation:
  """Any rule as an optax transformation; `meta` may be a tracer (meta-gradients flow)."""
  check_meta_params(meta, rule)
  backend = resolve_backend(backend)

  def init(params):
    return init_state(rule, params)

  def update(updates, state, params=None):
    del params
    return learned_update(meta, updates, state, rule=rule, learning_rate=learning_rate,
                          clip=clip, backend=backend)

  return optax.GradientTransformation(init, update)


def optim4rl(meta, learning_rate: ScalarOrSchedule = 1e-3, *, variant: str = "paper",
             clip: float = 1.0, backend: str | None = None) -> optax.GradientTransformation:
  """Optim4RL. variant="paper" is Algorithm 1; variant="public" the authors' later code
  (GRU inputs g and g^2, no m_sign); its meta-parameters come from rule "optim4rl_public"."""
  rules = {"paper": "optim4rl", "public": "optim4rl_public"}
  if variant not in rules:
    raise ValueError(f"unknown Optim4RL variant {variant!r}; expected one of {sorted(rules)}")
  return learned_optimizer(meta, rule=rules[variant], learning_rate=learning_rate, clip=clip,
                           backend=backend)


def linear_optim(meta, learning_rate: ScalarOrSchedule = 1e-3, *, clip: float = 1.0,
                 backend: str | None = None) -> optax.GradientTransformation:
  """LinearOptim baseline: update -lr (a g + b) from one GRU."""
  return learned_optimizer(meta, rule="linear_optim", learning_rate=learning_rate, clip=clip,
                           backend=backend)


def l2lgd2(meta, learning_rate: ScalarOrSchedule = 1e-3, *, clip: float = 1.0,
           backend: str | None = None) -> optax.GradientTransformation:
  """L2LGD^2 baseline: update -lr exp(o) g from one GRU on L2L-preprocessed gradients."""
  return learned_optimizer(meta, rule="l2lgd2", learning_rate=learning_rate, clip=clip,
                           backend=backend)
