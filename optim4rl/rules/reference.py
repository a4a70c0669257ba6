"""Pure-JAX reference of every update rule: the specification the kernels are tested against.

Shapes: gradients `g` are (P,) and hidden states `h` are (rows, P) with rows = 8 per GRU,
the same structure-of-arrays layout the kernels use. `step` returns the *direction*, the
update for learning rate 1; the optimizer multiplies it by the learning rate.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from optim4rl.rules.constants import (EXP_L2L_P, FLT_MIN, HIDDEN, L2L_P, LOG_EPS, M_SIGN_BIAS,
                                      PUBLIC_ROOT_EPS, ROOT_EPS)
from optim4rl.rules.table import Rule, get_rule


def gru(p, x, h):
  """GRU cell, gates [reset, update, candidate]; x: (in, P), h: (H, P) -> (H, P)."""
  gx = jnp.einsum("ig,ip->gp", p["wx"], x) + p["bx"][:, None]
  gh = jnp.einsum("kg,kp->gp", p["wh"], h) + p["bh"][:, None]
  r = jax.nn.sigmoid(gx[:HIDDEN] + gh[:HIDDEN])
  z = jax.nn.sigmoid(gx[HIDDEN:2 * HIDDEN] + gh[HIDDEN:2 * HIDDEN])
  n = jnp.tanh(gx[2 * HIDDEN:] + r * gh[2 * HIDDEN:])
  return (1.0 - z) * n + z * h


def mlp(p, x):
  """MLP [16, 16] with ReLU; x: (H, P) -> (out, P)."""
  a1 = jax.nn.relu(jnp.einsum("kj,kp->jp", p["w1"], x) + p["b1"][:, None])
  a2 = jax.nn.relu(jnp.einsum("kj,kp->jp", p["w2"], a1) + p["b2"][:, None])
  return jnp.einsum("kj,kp->jp", p["w3"], a2) + p["b3"][:, None]


def net(p, x, h):
  h_new = gru(p["gru"], x, h)
  return mlp(p["mlp"], h_new), h_new


def clip_gradient(g, clip: float):
  return jnp.clip(g, -clip, clip) if clip > 0 else g


def flush_denormal(g):
  """The denormal policy of every backend: a gradient with |g| < FLT_MIN counts as a zero of
  its sign, so a 1e-45 gradient steps exactly as a zero one (no update in the sign-based
  rules) instead of as the tiny positive number whose sign(g) = 1 gives a full-size step.

  Written out because hardware disagrees: XLA:CPU and the C++ CPU kernel run with
  denormals-are-zero, GPUs keep denormals. Every kernel applies it explicitly to the clipped
  gradient (csrc/optim4rl_math.h `flush_denormal`, kernels/step.py `_rule_inputs`). Only the
  gradient input is covered: intermediate results that underflow may flush on one backend
  and not another, a difference below 1e-38 in absolute terms."""
  return jnp.where(jnp.abs(g) < FLT_MIN, jnp.copysign(jnp.zeros_like(g), g), g)


def straight_through_sign(t):
  """Forward: hard sign in {-1, 1}; backward: identity (Algorithm 1)."""
  return lax.stop_gradient(2.0 * (t >= 0).astype(t.dtype) - 1.0 - t) + t


def step(rule: str | Rule, meta, g, h, clip: float = 1.0):
  """One learned-optimizer step: (direction (P,), new hidden (rows, P))."""
  spec = get_rule(rule)
  g = lax.stop_gradient(flush_denormal(clip_gradient(g, clip)))
  sign = jnp.sign(g)
  log_abs = jnp.log(jnp.abs(g) + LOG_EPS)
  h1 = h[:HIDDEN]
  if spec.math == "optim4rl":
    o, h1 = net(meta["net1"], jnp.stack([sign, log_abs]), h1)
    (o3,), h2 = net(meta["net2"], 2.0 * log_abs[None], h[HIDDEN:])
    m_sign = straight_through_sign(jnp.tanh(o[0] + M_SIGN_BIAS))
    m = sign * m_sign * jnp.exp(o[1])
    direction = -m / jnp.sqrt(jnp.exp(o3) + ROOT_EPS)
    return direction, jnp.concatenate([h1, h2])
  if spec.math == "optim4rl_public":
    (o1,), h1 = net(meta["net1"], g[None], h1)
    (o2,), h2 = net(meta["net2"], jnp.square(g)[None], h[HIDDEN:])
    direction = -sign * jnp.exp(o1) / jnp.sqrt(jnp.exp(o2) + PUBLIC_ROOT_EPS)
    return direction, jnp.concatenate([h1, h2])
  if spec.math == "linear_optim":
    o, h1 = net(meta["net1"], jnp.stack([sign, log_abs]), h1)
    return -(jnp.exp(o[0]) * g + jnp.exp(o[1]) * o[2]), h1
  if spec.math == "l2lgd2":
    scaled_log = log_abs / L2L_P
    big = scaled_log >= -1.0  # |g| >= e^-p: (log|g| / p, sign g), else (-1, e^p g)
    x = jnp.stack([jnp.where(big, scaled_log, -1.0),
                   jnp.where(big, sign, EXP_L2L_P * g)])
    (o,), h1 = net(meta["net1"], x, h1)
    return -jnp.exp(o) * g, h1
  raise AssertionError(spec.math)
