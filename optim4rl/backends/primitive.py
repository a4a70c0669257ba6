"""The fused learned-optimizer step as a JAX function with a custom VJP.

`fused_step(rule, meta_flat, g, h)` maps gradients g (P,) and hidden states h (rows, P) to
(direction (P,), new h) in one kernel launch forward and one backward (plus, for "triton",
one or two small launches that add the backward programs' meta cotangents); the backends and
their forward/backward callables are those of optim4rl.backends.registry. The backward kernel
recomputes the forward from the inputs, so the only residuals are the inputs themselves:
4 bytes of gradient and 4 * rows bytes of hidden state per parameter and step.
Gradients are stop-gradient inputs: their cotangent is zero by definition (Algorithm 1).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from optim4rl.backends.registry import BACKENDS, Backend
from optim4rl.rules import Rule


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _kernel_step(backend: Backend, rule: Rule, clip: float, meta, g, h):
  return backend.forward(rule, clip, meta, g, h)


def _kernel_step_fwd(backend, rule, clip, meta, g, h):
  return backend.forward(rule, clip, meta, g, h), (meta, g, h)


def _kernel_step_bwd(backend, rule, clip, residuals, cotangents):
  meta, g, h = residuals
  d_dir, d_h_new = cotangents
  d_meta, d_h = backend.backward(rule, clip, meta, g, h, d_dir, d_h_new)
  return d_meta, jnp.zeros_like(g), d_h


_kernel_step.defvjp(_kernel_step_fwd, _kernel_step_bwd)


def _check(rule: Rule, meta, g, h):
  """Trace-time validation: dtypes and shapes, with messages that say what is wrong."""
  for name, x in (("meta-parameters", meta), ("gradients", g), ("hidden state", h)):
    if jnp.result_type(x) != jnp.float32:
      raise TypeError(f"optim4rl: {name} must be float32, got {jnp.result_type(x)}")
  if meta.shape != (rule.meta_size,):
    raise ValueError(f"optim4rl: rule {rule.name!r} needs {rule.meta_size} flat meta-parameters, "
                     f"got shape {meta.shape}")
  if g.ndim != 1:
    raise ValueError(f"optim4rl: gradients must be flat (P,), got shape {g.shape}")
  if h.shape != (rule.hidden_rows, g.shape[0]):
    raise ValueError(f"optim4rl: hidden state must have shape {(rule.hidden_rows, g.shape[0])} "
                     f"for rule {rule.name!r} and {g.shape[0]} parameters, got {h.shape}")


def fused_step(rule: Rule, meta_flat, g, h, *, clip: float = 1.0, backend: str = "cpu"):
  """(direction, new hidden) for flat float32 g (P,) and h (rows, P); backend already resolved
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
    return impl.forward(rule, float(clip), meta_flat, g, h)
  return _kernel_step(impl, rule, float(clip), meta_flat, g, h)
