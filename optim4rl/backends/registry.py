"""Backend registry: which implementations of the fused step exist and can run here.

`reference` is pure JAX (runs everywhere). `cpu` and `cuda` are the C++/CUDA FFI libraries
built by setup.py (`cuda` only where nvcc was found). `triton` is the Triton kernels of
optim4rl.kernels called through jax_triton: GPU only, and only where both import.
"""
from __future__ import annotations

import functools
import importlib

import jax

KNOWN_BACKENDS = ("reference", "cpu", "triton", "cuda")


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


@functools.cache
def triton_problem() -> str | None:
  """Why the triton backend cannot be loaded (None: it can). Imports jax_triton and triton."""
  from optim4rl.backends import triton_launch
  try:
    triton_launch.load()
  except ImportError as e:
    return str(e)
  return None


def available_backends(platform: str | None = None) -> tuple[str, ...]:
  platform = platform or jax.default_backend()
  found = ["reference"]
  if platform == "cpu" and cpu_library() is not None:
    found.append("cpu")
  if platform in ("gpu", "cuda") and cuda_library() is not None:
    found.append("cuda")
  # jax_triton is not even imported off GPUs: with a CPU jaxlib its import fails anyway.
  if platform in ("gpu", "cuda") and triton_problem() is None:
    found.append("triton")
  return tuple(found)


def resolve_backend(backend: str | None, platform: str | None = None) -> str:
  """The backend to use: the explicit choice (validated) or the best one for the platform."""
  platform = platform or jax.default_backend()
  available = available_backends(platform)
  if backend is None:
    for best in ("cpu", "cuda", "triton"):
      if best in available:
        return best
    return "reference"
  if backend not in KNOWN_BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; expected one of {KNOWN_BACKENDS}")
  if backend not in available:
    why = {
        "cpu": ("the C++ library optim4rl._cpu is not built (pip install -e .)"
                if cpu_library() is None else f"it runs on CPU, the platform is {platform}"),
        "cuda": ("the CUDA library optim4rl._cuda is not built (no nvcc at install time)"
                 if cuda_library() is None else f"it runs on CUDA GPUs, the platform is {platform}"),
        "triton": (f"it runs on GPUs through jax_triton, the platform is {platform}"
                   if platform not in ("gpu", "cuda") else str(triton_problem())),
    }.get(backend, f"it is not available on platform {platform!r} in this build")
    raise ValueError(f"backend {backend!r} cannot run here: {why}; available: {available}")
  return backend
