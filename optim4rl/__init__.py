"""optim4rl: learned optimizers for reinforcement learning, with fused kernels.

This is the library: update rules, fused backends and optax transforms. The experiment stack
(environments, agents, training, meta-training, evaluation, CLI) lives in sub-packages that
are imported only when used.
"""
from optim4rl.backends import available_backends, fused_step, resolve_backend
from optim4rl.rules import (RULES, check_meta_params, flatten_meta, get_rule, init_meta_params,
                            load_meta_params, save_meta_params, unflatten_meta)
from optim4rl.open_optimizer import OpenPlan, OpenState, open_optimizer
from optim4rl.rules.open import OpenMeta, load_open_meta, pretrained_open, save_open_meta
from optim4rl.transforms import (LearnedOptimizerState, LearnedRuleState, init_state, l2lgd2,
                                 learned_optimizer, learned_update, linear_optim, odd_part,
                                 optim4rl, scale_by_learned_rule)

__version__ = "0.1.0"
