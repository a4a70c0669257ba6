"""The speed anchor of the benchmarks: Optim4RL written as its authors' code writes it (Algorithm
1), flax modules applied to every parameter as a batch element, compiled by XLA, no kernel.

Per parameter: g clipped, features [sign g, log(|g| + eps)] into nn.GRUCell(8) then
nn.Dense 16-16-2 with ReLU (the first net), 2 log(|g| + eps) into another GRU and MLP ending
in one output (the second); the update is -lr m / sqrt(v + eps) with
m = sign(g) sign_st(tanh(o0 + 1)) exp(o1), v = exp(o2). Carries are (P, 8) per net, parameter
major, as batched flax cells hold them. Not part of any training path: benchmarks time it
beside the fused backends (`evaluation/throughput.py`), and tests/test_flax_anchor.py checks
that it computes optim4rl.rules.reference's Optim4RL step given the same weights.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from optim4rl.rules.constants import HIDDEN, LOG_EPS, M_SIGN_BIAS, ROOT_EPS
from optim4rl.rules.reference import straight_through_sign


class _Net(nn.Module):
  outputs: int

  @nn.compact
  def __call__(self, carry, x):
    carry, h = nn.GRUCell(features=HIDDEN, name="gru")(carry, x)
    y = nn.relu(nn.Dense(16, name="dense1")(h))
    y = nn.relu(nn.Dense(16, name="dense2")(y))
    return carry, nn.Dense(self.outputs, name="dense3")(y)


class AnchorModule(nn.Module):
  """(carries, g (P,)) -> (carries, direction (P,)); carries: two (P, 8) arrays."""

  @nn.compact
  def __call__(self, carries, g):
    sign = jnp.sign(g)
    log_abs = jnp.log(jnp.abs(g) + LOG_EPS)
    c1, o = _Net(2, name="net1")(carries[0], jnp.stack([sign, log_abs], -1))
    c2, v = _Net(1, name="net2")(carries[1], 2.0 * log_abs[:, None])
    m = sign * straight_through_sign(jnp.tanh(o[:, 0] + M_SIGN_BIAS)) * jnp.exp(o[:, 1])
    return (c1, c2), -m / jnp.sqrt(jnp.exp(v[:, 0]) + ROOT_EPS)


class AnchorState(NamedTuple):
  carries: tuple  # two (P, 8)


def init_anchor(key) -> dict:
  """Random flax parameters of the anchor (flax's default initialisers)."""
  g = jnp.zeros((1,), jnp.float32)
  return AnchorModule().init(key, _zero_carries(1), g)


def _zero_carries(n: int) -> tuple:
  return (jnp.zeros((n, HIDDEN), jnp.float32), jnp.zeros((n, HIDDEN), jnp.float32))


def anchor_optimizer(params: dict, learning_rate: float, clip: float = 1.0
                     ) -> optax.GradientTransformation:
  """The anchor as an optax transformation of one flat gradient vector (P,)."""
  module = AnchorModule()

  def init(p):
    return AnchorState(_zero_carries(p.shape[0]))

  def update(grads, state, params_=None):
    g = jax.lax.stop_gradient(jnp.clip(grads, -clip, clip) if clip > 0 else grads)
    carries, direction = module.apply(params, state.carries, g)
    return learning_rate * direction, AnchorState(carries)
  return optax.GradientTransformation(init, update)


def anchor_params_from_meta(meta: dict) -> dict:
  """Our Optim4RL meta-parameters (optim4rl.rules.reference's layout) as the anchor's flax
  parameters: flax's GRUCell has one bias for each of the r and z gates (ours: an input and a
  hidden one, summed here) and the candidate's input and hidden biases apart, as ours."""
  out = {}
  for name in ("net1", "net2"):
    gru, mlp = meta[name]["gru"], meta[name]["mlp"]
    gate = lambda w, k: w[:, k * HIDDEN:(k + 1) * HIDDEN]
    bias = lambda b, k: b[k * HIDDEN:(k + 1) * HIDDEN]
    cell = {"ir": {"kernel": gate(gru["wx"], 0), "bias": bias(gru["bx"], 0) + bias(gru["bh"], 0)},
            "iz": {"kernel": gate(gru["wx"], 1), "bias": bias(gru["bx"], 1) + bias(gru["bh"], 1)},
            "in": {"kernel": gate(gru["wx"], 2), "bias": bias(gru["bx"], 2)},
            "hr": {"kernel": gate(gru["wh"], 0)}, "hz": {"kernel": gate(gru["wh"], 1)},
            "hn": {"kernel": gate(gru["wh"], 2), "bias": bias(gru["bh"], 2)}}
    out[name] = {"gru": cell,
                 **{f"dense{i}": {"kernel": mlp[f"w{i}"], "bias": mlp[f"b{i}"]} for i in (1, 2, 3)}}
  return {"params": out}
