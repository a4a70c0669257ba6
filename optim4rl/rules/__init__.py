"""Update rules: the rule table, constants, meta-parameters and the pure-JAX reference math."""
from optim4rl.rules.constants import GATES, HIDDEN, MLP_DIMS, NET_LEAVES
from optim4rl.rules.meta_params import (check_meta_params, flatten_meta, init_meta_params,
                                        load_meta_params, save_meta_params, unflatten_meta)
from optim4rl.rules.table import RULES, Rule, get_rule
