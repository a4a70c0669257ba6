"""The fused learned-optimizer step as a JAX function with a custom VJP.

`fused_step(rule, meta_flat, g, h)` maps gradients g (P,) and hidden states h (rows, P) to
(direction (P,), new h) in one kernel launch forward and one backward (plus, for "triton",
one or two small launches that add the backward programs' meta cotangents); the backends and
their forward/backward callables are those of optim4rl.backends.registry. The backward kernel
recomputes the forward from the inputs, so the only residuals are the inputs themselves:
4 bytes of gradient and 4 * rows bytes of hidden state per parameter and step (2 * rows with
the opt-in bfloat16 hidden state). Gradients are stop-gradient inputs: their cotangent is zero
by definition (Algorithm 1).

The hidden state may be float32 or bfloat16; the arithmetic is float32 either way. A bfloat16
state is widened exactly where it is read and rounded to nearest even where it is written,
and so are its cotangents; backends whose kernels read float32 only get it converted around
the call (`Backend.hidden_dtypes`), which keeps the state and the residuals 16-bit and makes
one step's float32 copy transient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from optim4rl.backends.registry import BACKENDS, HIDDEN_DTYPES, Backend
from optim4rl.rules import Rule


def _forward(backend: Backend, rule: Rule, clip: float, meta, g, h):
  if h.dtype in backend.hidden_dtypes:
    return backend.forward(rule, clip, meta, g, h)
  direction, h_new = backend.forward(rule, clip, meta, g, h.astype(jnp.float32))
  return direction, h_new.astype(h.dtype)


def _backward(backend: Backend, rule: Rule, clip: float, meta, g, h, d_dir, d_h_new):
  if h.dtype in backend.hidden_dtypes:
    return backend.backward(rule, clip, meta, g, h, d_dir, d_h_new)
  d_meta, d_h = backend.backward(rule, clip, meta, g, h.astype(jnp.float32), d_dir,
                                 d_h_new.astype(jnp.float32))
  return d_meta, d_h.astype(h.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _kernel_step(backend: Backend, rule: Rule, clip: float, meta, g, h):
  return _forward(backend, rule, clip, meta, g, h)


# A bfloat16 residual is kept as its bits: XLA on CPU widens bfloat16 stacks to float32 to
# update and slice them in a scan (a float32 copy of all M residuals, 64 bytes per parameter
# and update for Optim4RL); uint16 stacks are moved as they are.
def _pack(h):
  return jax.lax.bitcast_convert_type(h, jnp.uint16) if h.dtype == jnp.bfloat16 else h


def _unpack(h):
  return jax.lax.bitcast_convert_type(h, jnp.bfloat16) if h.dtype == jnp.uint16 else h


def _kernel_step_fwd(backend, rule, clip, meta, g, h):
  return _forward(backend, rule, clip, meta, g, h), (meta, g, _pack(h))


def _kernel_step_bwd(backend, rule, clip, residuals, cotangents):
  meta, g, h = residuals
  h = _unpack(h)
  d_dir, d_h_new = cotangents
  d_meta, d_h = _backward(backend, rule, clip, meta, g, h, d_dir, d_h_new)
  return d_meta, jnp.zeros_like(g), d_h


_kernel_step.defvjp(_kernel_step_fwd, _kernel_step_bwd)


def _check(rule: Rule, meta, g, h):
  """Trace-time validation: dtypes and shapes, with messages that say what is wrong."""
  for name, x in (("meta-parameters", meta), ("gradients", g)):
    if jnp.result_type(x) != jnp.float32:
      raise TypeError(f"optim4rl: {name} must be float32, got {jnp.result_type(x)}")
  if jnp.result_type(h) not in HIDDEN_DTYPES:
    raise TypeError(f"optim4rl: hidden state must be float32 or bfloat16, got "
                    f"{jnp.result_type(h)}")
  if meta.shape != (rule.meta_size,):
    raise ValueError(f"optim4rl: rule {rule.name!r} needs {rule.meta_size} flat meta-parameters, "
                     f"got shape {meta.shape}")
  if g.ndim != 1:
    raise ValueError(f"optim4rl: gradients must be flat (P,), got shape {g.shape}")
  if h.shape != (rule.hidden_rows, g.shape[0]):
    raise ValueError(f"optim4rl: hidden state must have shape {(rule.hidden_rows, g.shape[0])} "
                     f"for rule {rule.name!r} and {g.shape[0]} parameters, got {h.shape}")


def fused_step(rule: Rule, meta_flat, g, h, *, clip: float = 1.0, backend: str = "cpu"):
  """(direction, new hidden) for flat float32 g (P,) and h (rows, P), float32 or bfloat16
  (the new hidden state has h's dtype); backend already resolved
  (optim4rl.backends.resolve_backend): this does not check that it can run here."""
  _check(rule, meta_flat, g, h)
  impl = BACKENDS.get(backend)
  if impl is None:
    raise ValueError(f"optim4rl: backend {backend!r} has no kernel in this build")
  # Gradients are constants of the meta path (Algorithm 1). Said here, before the custom VJP,
  # so that JAX never linearises what computed them (the agent's backward pass): a zero
  # cotangent returned by the VJP would still be pushed back through all of it.
  g = jax.lax.stop_gradient(g)
  if impl.backward is None:  # differentiated by JAX
    return _forward(impl, rule, float(clip), meta_flat, g, h)
  return _kernel_step(impl, rule, float(clip), meta_flat, g, h)
