"""Backends of the fused step: the registry of implementations (pure JAX, C++ CPU, CUDA,
Triton) and the JAX primitive with its custom VJP that dispatches to them."""
from optim4rl.backends.primitive import fused_step
from optim4rl.backends.registry import available_backends, resolve_backend
