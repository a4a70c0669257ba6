"""Triton kernels of the fused learned-optimizer step (installed as `optim4rl.kernels`).

Importing needs `triton`; running needs a GPU, or TRITON_INTERPRET=1 with torch tensors
(see tests/backends/test_triton_interpret.py). JAX reaches them through
`optim4rl.backends.triton_launch`.
"""
from .step import (DEFAULT_CONFIG, Config, backward, backward_kernel, cdiv, forward,
                   forward_kernel, reduce_kernel, rule_constexprs)

__all__ = ["Config", "DEFAULT_CONFIG", "backward", "backward_kernel", "cdiv", "forward",
           "forward_kernel", "reduce_kernel", "rule_constexprs"]
