"""The "triton" backend: the kernels of `optim4rl.kernels` called from JAX through jax_triton.

jax_triton's primitive has no batching rule, so each launch is wrapped in
`jax.custom_batching.custom_vmap`: a vmapped call broadcasts unbatched operands (as the FFI
backends' vmap_method="broadcast_all") and folds all batch dimensions into the kernels' own
batch axis B, one launch for the whole batch; each batch entry reads its own meta-parameters
at offset b * K. Nested vmaps fold into the same axis.

jax_triton (and therefore this backend) only runs on GPUs; both imports are lazy.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import math

import jax
import jax.numpy as jnp

from optim4rl.rules import Rule


@functools.cache
def load() -> tuple:
  """(jax_triton, optim4rl.kernels); raises ImportError saying what is missing."""
  try:
    kernels = importlib.import_module("optim4rl.kernels")
  except ImportError as e:
    raise ImportError(f"the Triton kernels need the `triton` package: {e}") from e
  try:
    jax_triton = importlib.import_module("jax_triton")
  except Exception as e:  # with a CPU jaxlib, jax_triton's import fails, not always ImportError
    raise ImportError(f"jax_triton is not usable here ({type(e).__name__}: {e}); it needs "
                      "`pip install jax-triton` and a GPU build of jaxlib") from e
  return jax_triton, kernels


def _kernels():
  return load()[1]


def _launch(kernel, grid, num_warps, args, out_shapes, **constexprs):
  """The launch callback of optim4rl.kernels' plan, through jax_triton."""
  return load()[0].triton_call(
      *args, kernel=kernel, grid=grid, num_warps=num_warps,
      out_shape=[jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes], **constexprs)


def _fold(x, tail: int):
  """x (..., *tail dims) -> (B, *tail dims) and the leading shape."""
  lead = x.shape[:x.ndim - tail]
  return x.reshape((math.prod(lead),) + x.shape[x.ndim - tail:]), lead


def _batched(fn):
  """custom_vmap for functions of arrays that all carry the same leading batch dims."""
  fn = jax.custom_batching.custom_vmap(fn)

  @fn.def_vmap
  def rule(axis_size, in_batched, *args):
    args = [x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
            for x, batched in zip(args, in_batched)]
    outs = fn(*args)
    return outs, jax.tree.map(lambda _: True, outs)
  return fn


@functools.cache
def _forward_op(rule: Rule, clip: float):
  def op(meta, g, h):
    (meta, lead), (g, _), (h, _) = _fold(meta, 1), _fold(g, 1), _fold(h, 2)
    batch, params = g.shape
    if batch * params == 0:
      d, h_new = jnp.zeros_like(g), jnp.zeros_like(h)
    else:
      d, h_new = _kernels().forward(_launch, rule, meta, g, h, clip, batch, params)
    return d.reshape(lead + d.shape[1:]), h_new.reshape(lead + h_new.shape[1:])
  return _batched(op)


@functools.cache
def _backward_op(rule: Rule, clip: float):
  def op(meta, g, h, d_dir, d_h_new):
    (meta, lead), (g, _), (h, _) = _fold(meta, 1), _fold(g, 1), _fold(h, 2)
    d_dir, d_h_new = _fold(d_dir, 1)[0], _fold(d_h_new, 2)[0]
    batch, params = g.shape
    if batch * params == 0:
      d_meta, d_h = jnp.zeros_like(meta), jnp.zeros_like(h)
    else:
      d_meta, d_h = _kernels().backward(_launch, rule, meta, g, h, d_dir, d_h_new, clip,
                                        batch, params)
    return d_meta.reshape(lead + d_meta.shape[1:]), d_h.reshape(lead + d_h.shape[1:])
  return _batched(op)


def forward(rule: Rule, clip: float, meta, g, h):
  """(direction (P,), h_new (rows, P)) for meta (K,), g (P,), h (rows, P); vmappable."""
  return _forward_op(rule, clip)(meta, g, h)


def backward(rule: Rule, clip: float, meta, g, h, d_dir, d_h_new):
  """(d_meta (K,), d_h (rows, P)); vmappable."""
  return _backward_op(rule, clip)(meta, g, h, d_dir, d_h_new)


# ----------------------------------------------------------------------------- OPEN

def open_block() -> int:
  """Elements per chunk of the OPEN kernels (their launch plan's default)."""
  return _kernels().DEFAULT_OPEN_CONFIG.block


def _open_config(block: int):
  return dataclasses.replace(_kernels().DEFAULT_OPEN_CONFIG, block=block)


@functools.cache
def _open_moments_op(block: int):
  def op(p, g, momenta, start, length):
    (p, lead), (g, _), (momenta, _) = _fold(p, 1), _fold(g, 1), _fold(momenta, 2)
    (start, _), (length, _) = _fold(start, 1), _fold(length, 1)
    (batch, params), chunks = p.shape, start.shape[1]
    m, partials = _kernels().moments(_launch, p, g, momenta, start, length, batch, params,
                                     chunks, _open_config(block))
    return m.reshape(lead + m.shape[1:]), partials.reshape(lead + partials.shape[1:])
  return _batched(op)


@functools.cache
def _open_network_op(hidden: int, width: int, block: int):
  def op(meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor, inv_rms,
         layer, actor, training, batch_proportion):
    (meta, lead), (carry, _), (momenta_new, _) = _fold(meta, 1), _fold(carry, 2), _fold(
        momenta_new, 2)
    p, g, dormancy, noise, start, length, tensor, layer, actor = (
        _fold(x, 1)[0] for x in (p, g, dormancy, noise, start, length, tensor, layer, actor))
    inv_rms = _fold(inv_rms, 2)[0]
    training, batch_proportion = _fold(training, 0)[0], _fold(batch_proportion, 0)[0]
    (batch, params), chunks, tensors = p.shape, start.shape[1], layer.shape[1]
    u, c = _kernels().network(
        _launch, meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor,
        inv_rms, layer, actor, training, batch_proportion, hidden=hidden, width=width,
        batch=batch, params=params, chunks=chunks, tensors=tensors, config=_open_config(block))
    return u.reshape(lead + u.shape[1:]), c.reshape(lead + c.shape[1:])
  return _batched(op)


def open_moments(p, g, momenta, start, length, block: int):
  """OPEN's first launch (kernels/open_step.py): (momenta_new (6, P), partials (C, 16))."""
  return _open_moments_op(block)(p, g, momenta, start, length)


def open_network(meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor,
                 inv_rms, layer, actor, training, batch, hidden: int, width: int, block: int):
  """OPEN's second launch: (u (P,), carry_new (HID, P))."""
  return _open_network_op(hidden, width, block)(
      meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor, inv_rms, layer,
      actor, training, batch)
