"""Backend registry: every implementation of the fused step, what it runs on, why it cannot
run here, and the callables that compute it. The only place that knows the backends:
`available_backends`, `resolve_backend` and `fused_step` read this table.

`reference` is pure JAX (runs everywhere). `cpu` and `cuda` are the C++/CUDA FFI libraries
built by setup.py (`cuda` only where nvcc was found); both take the same operands and
attributes (csrc/ffi_common.h): forward (meta, g, h) -> (direction, h_new), backward
(meta, g, h, d_direction, d_h_new) -> (d_meta, d_h), attributes rule (the rule's kernel id)
and clip, leading dimensions batch dimensions (vmap_method="broadcast_all"). `triton` is the
Triton kernels of optim4rl.kernels called through jax_triton: GPU only, and only where both
import.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from optim4rl.backends import triton_launch
from optim4rl.rules import Rule, reference, unflatten_meta

GPU_PLATFORMS = ("gpu", "cuda")  # jax.default_backend() says "gpu"; "cuda" is also accepted
# The hidden state's storage dtypes (the arithmetic is float32): float32, or the opt-in
# bfloat16. A backend lists those its kernels read and write themselves (Backend.hidden_dtypes).
HIDDEN_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
HIDDEN_DTYPE_NAMES = tuple(d.name for d in HIDDEN_DTYPES)


# ----------------------------------------------------------------------------- C++ / CUDA

def _load(module: str, platform: str):
  """Import a compiled extension and register its FFI targets; None if it was not built."""
  try:
    lib = importlib.import_module(module)
  except ImportError:
    return None
  for name, capsule in lib.registrations().items():
    jax.ffi.register_ffi_target(name, capsule, platform=platform)
  return lib


@functools.cache
def cpu_library():
  """The compiled CPU extension with its FFI targets registered, or None if not built."""
  return _load("optim4rl._cpu", "cpu")


@functools.cache
def cuda_library():
  """The compiled CUDA extension with its FFI targets registered, or None if not built."""
  return _load("optim4rl._cuda", "CUDA")


LIBRARIES = {"cpu": cpu_library, "cuda": cuda_library}


def _target(backend: str, direction: str) -> str:
  if LIBRARIES[backend]() is None:
    raise ValueError(f"optim4rl: the {backend} library is not built")
  return f"optim4rl_{backend}_{direction}"


def _hidden_suffix(h) -> str:
  """The targets' name suffix for the hidden state's dtype (csrc/ffi_common.h)."""
  return "_bf16" if h.dtype == jnp.bfloat16 else ""


def ffi_forward(backend: str, rule: Rule, clip: float, meta, g, h):
  """(direction, h_new) from the `backend` library ("cpu" or "cuda")."""
  call = jax.ffi.ffi_call(
      _target(backend, "forward" + _hidden_suffix(h)),
      (jax.ShapeDtypeStruct(g.shape, jnp.float32), jax.ShapeDtypeStruct(h.shape, h.dtype)),
      vmap_method="broadcast_all")
  return call(meta, g, h, rule=np.int32(rule.kernel_id), clip=np.float32(clip))


def ffi_backward(backend: str, rule: Rule, clip: float, meta, g, h, d_dir, d_h):
  """(d_meta, d_h) from the `backend` library: the VJP of `ffi_forward` in (meta, h)."""
  call = jax.ffi.ffi_call(
      _target(backend, "backward" + _hidden_suffix(h)),
      (jax.ShapeDtypeStruct(meta.shape, jnp.float32), jax.ShapeDtypeStruct(h.shape, h.dtype)),
      vmap_method="broadcast_all")
  return call(meta, g, h, d_dir, d_h, rule=np.int32(rule.kernel_id), clip=np.float32(clip))


# ----------------------------------------------------------------------------- the registry

@dataclasses.dataclass(frozen=True)
class Backend:
  """One implementation of the fused step.

  forward(rule, clip, meta, g, h) -> (direction, h_new), for flat float32 meta (K,),
  g (P,), h (rows, P); vmappable. backward(rule, clip, meta, g, h, d_direction, d_h_new) ->
  (d_meta, d_h), the VJP in (meta, h) (gradients are stop-gradient inputs); None when JAX
  differentiates `forward` itself. `unavailable(platform)` says why the backend cannot run on
  a JAX platform, None when it can. `preference`: resolve_backend(None) takes the available
  backend with the lowest one. `hidden_dtypes`: the hidden-state dtypes its kernels read and
  write themselves; another (bfloat16) is converted around the call."""
  name: str
  platforms: tuple[str, ...] | None  # JAX platforms it runs on; None: every platform
  unavailable: Callable[[str], str | None]
  forward: Callable
  backward: Callable | None
  preference: int
  hidden_dtypes: tuple = HIDDEN_DTYPES[:1]  # float32


def _reference_forward(rule, clip, meta, g, h):
  return reference.step(rule, unflatten_meta(meta, rule), g, h, clip)


def _cpu_unavailable(platform: str) -> str | None:
  if cpu_library() is None:
    return "the C++ library optim4rl._cpu is not built (pip install -e .)"
  if platform != "cpu":
    return f"it runs on CPU, the platform is {platform}"
  return None


def _cuda_unavailable(platform: str) -> str | None:
  if cuda_library() is None:
    return "the CUDA library optim4rl._cuda is not built (no nvcc at install time)"
  if platform not in GPU_PLATFORMS:
    return f"it runs on CUDA GPUs, the platform is {platform}"
  return None


@functools.cache
def triton_problem() -> str | None:
  """Why the triton backend cannot be loaded (None: it can). Imports jax_triton and triton."""
  try:
    triton_launch.load()
  except ImportError as e:
    return str(e)
  return None


def _triton_unavailable(platform: str) -> str | None:
  # jax_triton is not even imported off GPUs: with a CPU jaxlib its import fails anyway.
  if platform not in GPU_PLATFORMS:
    return f"it runs on GPUs through jax_triton, the platform is {platform}"
  return triton_problem()


BACKENDS = {b.name: b for b in (
    Backend("reference", None, lambda platform: None, _reference_forward, None, preference=3),
    Backend("cpu", ("cpu",), _cpu_unavailable, functools.partial(ffi_forward, "cpu"),
            functools.partial(ffi_backward, "cpu"), preference=0,
            hidden_dtypes=HIDDEN_DTYPES),
    Backend("cuda", GPU_PLATFORMS, _cuda_unavailable, functools.partial(ffi_forward, "cuda"),
            functools.partial(ffi_backward, "cuda"), preference=1),
    Backend("triton", GPU_PLATFORMS, _triton_unavailable, triton_launch.forward,
            triton_launch.backward, preference=2),
)}
KNOWN_BACKENDS = tuple(BACKENDS)


def _why_not(backend: Backend, platform: str) -> str | None:
  if backend.platforms is not None and platform not in backend.platforms:
    # The backend's own reason first (e.g. "not built" before "wrong platform").
    return backend.unavailable(platform) or f"it does not run on platform {platform!r}"
  return backend.unavailable(platform)


def available_backends(platform: str | None = None) -> tuple[str, ...]:
  """The backends that can run on `platform` (default: JAX's), in registry order."""
  platform = platform or jax.default_backend()
  return tuple(name for name, b in BACKENDS.items() if _why_not(b, platform) is None)


def resolve_backend(backend: str | None, platform: str | None = None) -> str:
  """The backend to use: the explicit choice (validated) or the best one for the platform."""
  platform = platform or jax.default_backend()
  available = available_backends(platform)
  if backend is None:
    return min(available, key=lambda name: BACKENDS[name].preference)
  if backend not in BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; expected one of {KNOWN_BACKENDS}")
  if backend not in available:
    raise ValueError(f"backend {backend!r} cannot run here: "
                     f"{_why_not(BACKENDS[backend], platform)}; available: {available}")
  return backend
