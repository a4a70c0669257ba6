"""Triton kernels of the fused learned-optimizer steps (installed as `optim4rl.kernels`):
Optim4RL's rules (step.py) and OPEN (open_step.py).

Importing needs `triton`; running needs a GPU, or TRITON_INTERPRET=1 with torch tensors
(see tests/backends/test_triton_interpret.py). JAX reaches them through
`optim4rl.backends.triton_launch`.
"""
from .open_step import (DEFAULT_OPEN_CONFIG, OpenConfig, moments, moments_kernel, network,
                        network_kernel, open_constexprs)
from .step import (DEFAULT_CONFIG, Config, backward, backward_kernel, cdiv, forward,
                   forward_kernel, reduce_kernel, rule_constexprs)

__all__ = ["Config", "DEFAULT_CONFIG", "DEFAULT_OPEN_CONFIG", "OpenConfig", "backward",
           "backward_kernel", "cdiv", "forward", "forward_kernel", "moments", "moments_kernel",
           "network", "network_kernel", "open_constexprs", "reduce_kernel", "rule_constexprs"]
