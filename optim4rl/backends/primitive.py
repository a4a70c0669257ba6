"""The fused learned-optimizer step as a JAX function with a custom VJP.

`fused_step(rule, meta_flat, g, h)` maps gradients g (P,) and hidden states h (rows, P) to
(direction (P,), new h) in one kernel launch forward and one backward (plus, for "triton",
one or two small launches that add the backward programs' meta cotangents). The backward kernel
recomputes the forward from the inputs, so the only residuals are the inputs themselves:
4 bytes of gradient and 4 * rows bytes of hidden state per parameter and step.
Gradients are stop-gradient inputs: their cotangent is zero by definition (Algorithm 1).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from optim4rl.backends import triton_launch
from optim4rl.backends.registry import cpu_library, cuda_library
from optim4rl.rules import Rule, reference, unflatten_meta


_KERNEL_BACKENDS = {"cpu": cpu_library, "cuda": cuda_library}


def _target(backend: str, direction: str) -> str:
  if _KERNEL_BACKENDS[backend]() is None:
    raise ValueError(f"optim4rl: the {backend} library is not built")
  return f"optim4rl_{backend}_{direction}"


def _ffi_forward(backend: str, rule: Rule, clip: float, meta, g, h):
  call = jax.ffi.ffi_call(
      _target(backend, "forward"),
      (jax.ShapeDtypeStruct(g.shape, jnp.float32), jax.ShapeDtypeStruct(h.shape, jnp.float32)),
      vmap_method="broadcast_all")
  return call(meta, g, h, rule=np.int32(rule.kernel_id), clip=np.float32(clip))


def _ffi_backward(backend: str, rule: Rule, clip: float, meta, g, h, d_dir, d_h):
  call = jax.ffi.ffi_call(
      _target(backend, "backward"),
      (jax.ShapeDtypeStruct(meta.shape, jnp.float32), jax.ShapeDtypeStruct(h.shape, jnp.float32)),
      vmap_method="broadcast_all")
  return call(meta, g, h, d_dir, d_h, rule=np.int32(rule.kernel_id), clip=np.float32(clip))


def _forward(backend: str, rule: Rule, clip: float, meta, g, h):
  if backend == "triton":
    return triton_launch.forward(rule, clip, meta, g, h)
  return _ffi_forward(backend, rule, clip, meta, g, h)


def _backward(backend: str, rule: Rule, clip: float, meta, g, h, d_dir, d_h):
  if backend == "triton":
    return triton_launch.backward(rule, clip, meta, g, h, d_dir, d_h)
  return _ffi_backward(backend, rule, clip, meta, g, h, d_dir, d_h)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _kernel_step(backend: str, rule: Rule, clip: float, meta, g, h):
  return _forward(backend, rule, clip, meta, g, h)


def _kernel_step_fwd(backend, rule, clip, meta, g, h):
  return _forward(backend, rule, clip, meta, g, h), (meta, g, h)


def _kernel_step_bwd(backend, rule, clip, residuals, cotangents):
  meta, g, h = residuals
  d_dir, d_h_new = cotangents
  d_meta, d_h = _backward(backend, rule, clip, meta, g, h, d_dir, d_h_new)
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
  """(direction, new hidden) for flat float32 g (P,) and h (rows, P); backend already resolved."""
  _check(rule, meta_flat, g, h)
  if backend == "reference":
    return reference.step(rule, unflatten_meta(meta_flat, rule), g, h, clip)
  if backend in _KERNEL_BACKENDS or backend == "triton":
    return _kernel_step(backend, rule, float(clip), meta_flat, g, h)
  raise ValueError(f"optim4rl: backend {backend!r} has no kernel in this build")
