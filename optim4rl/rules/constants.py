"""Every constant of the update rules, written once.

The C++/CUDA header (`csrc/optim4rl_math.h`) and the Triton kernels (`kernels/step.py`) hold
their own copies, for speed; `tests/rules/test_constants.py` reads each backend's values (the
header's source, the compiled libraries, the Triton module) and fails on any mismatch with these.
"""
import math

HIDDEN = 8            # GRU hidden size (paper, Appendix A)
MLP_DIMS = (16, 16)   # MLP hidden sizes (paper, Appendix A)
GATES = 3 * HIDDEN    # GRU gates [reset, update, candidate]

# Order of the leaves of one net in the flat meta-parameter vector; the kernels index the
# flat vector in exactly this order (offsets: optim4rl.rules.Rule.leaf_offsets).
NET_LEAVES = (("gru", "wx"), ("gru", "wh"), ("gru", "bx"), ("gru", "bh"),
              ("mlp", "w1"), ("mlp", "b1"), ("mlp", "w2"), ("mlp", "b2"),
              ("mlp", "w3"), ("mlp", "b3"))

LOG_EPS = 1e-18         # epsilon_1 of Algorithm 1 (inside the log)
ROOT_EPS = 1e-18        # epsilon_2 of Algorithm 1 (under the square root)
PUBLIC_ROOT_EPS = 1e-8  # epsilon under the root in the authors' public code
M_SIGN_BIAS = 1.0       # b of Algorithm 1: m_sign > 0 initially
L2L_P = 10.0            # p of the L2L gradient preprocessing
EXP_L2L_P = math.exp(L2L_P)  # e^p, the scale of small gradients in the L2L preprocessing

# Denormal policy of every backend: a (clipped) gradient with |g| < FLT_MIN, the smallest
# normal float32, counts as a zero of its sign (see optim4rl.rules.reference.flush_denormal).
FLT_MIN = 1.1754943508222875e-38
