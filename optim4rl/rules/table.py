"""The rule table: every learned update rule, described by the (input, output) sizes of its
nets (each a GRU of hidden size 8 followed by an MLP [16, 16]) and the id of its per-element
math in the kernels. The math itself is `reference.py` (pure JAX) and `csrc/optim4rl_math.h`
/ `kernels/step.py` (kernels).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from optim4rl.rules.constants import GATES, HIDDEN, MLP_DIMS, NET_LEAVES


@dataclasses.dataclass(frozen=True)
class Rule:
  name: str
  # The kernels' copies of kernel_id and nets (enum RuleId and RuleNets in
  # csrc/optim4rl_math.h, the rule ids of kernels/step.py; its launch plan reads `nets`) are
  # checked against these by tests/rules/test_constants.py.
  kernel_id: int                       # which per-element math the kernels run
  nets: tuple[tuple[int, int], ...]    # (input size, output size) of each GRU+MLP net
  doc: str
  odd: bool = False  # update made odd in g: (u(g) - u(-g)) / 2, one hidden state per sign

  @property
  def math(self) -> str:
    """The plain rule whose per-element math (and kernel) this one uses."""
    return next(r.name for r in RULES.values() if r.kernel_id == self.kernel_id and not r.odd)

  @property
  def columns_per_param(self) -> int:
    """Columns of the hidden-state array per parameter: 2 for odd rules (g and -g)."""
    return 2 if self.odd else 1

  @property
  def hidden_rows(self) -> int:
    """Rows of the (rows, P) hidden-state array: HIDDEN per net."""
    return HIDDEN * len(self.nets)

  @property
  def net_names(self) -> tuple[str, ...]:
    return tuple(f"net{i + 1}" for i in range(len(self.nets)))

  def leaf_shapes(self, net: int) -> dict:
    """{(group, leaf): shape} of net `net`, in the flat order NET_LEAVES."""
    n_in, n_out = self.nets[net]
    h, (d1, d2) = HIDDEN, MLP_DIMS
    shapes = {("gru", "wx"): (n_in, GATES), ("gru", "wh"): (h, GATES),
              ("gru", "bx"): (GATES,), ("gru", "bh"): (GATES,),
              ("mlp", "w1"): (h, d1), ("mlp", "b1"): (d1,),
              ("mlp", "w2"): (d1, d2), ("mlp", "b2"): (d2,),
              ("mlp", "w3"): (d2, n_out), ("mlp", "b3"): (n_out,)}
    return {key: shapes[key] for key in NET_LEAVES}

  def leaf_offsets(self, net: int) -> dict:
    """{(group, leaf): offset} inside net `net`'s slice of the flat meta-parameter vector;
    every kernel's layout is checked against this (tests/rules/test_constants.py)."""
    offsets, offset = {}, 0
    for key, shape in self.leaf_shapes(net).items():
      offsets[key] = offset
      offset += int(np.prod(shape))
    return offsets

  def net_size(self, net: int) -> int:
    return sum(int(np.prod(s)) for s in self.leaf_shapes(net).values())

  @property
  def net_offsets(self) -> tuple[int, ...]:
    """Where each net's slice starts in the flat meta-parameter vector."""
    return tuple(sum(self.net_size(j) for j in range(i)) for i in range(len(self.nets)))

  @property
  def meta_size(self) -> int:
    return sum(self.net_size(i) for i in range(len(self.nets)))


RULES = {
    r.name: r for r in (
        Rule("optim4rl", 0, ((2, 2), (1, 1)),
             "Algorithm 1 of the paper: GRU1 on [sign g, log|g|], GRU2 on 2 log|g|, "
             "straight-through m_sign, update -lr m / sqrt(v + 1e-18)."),
        Rule("optim4rl_public", 1, ((1, 1), (1, 1)),
             "The authors' later public code: GRU1 on g, GRU2 on g^2, no m_sign, "
             "update -lr sign(g) exp(o1) / sqrt(exp(o2) + 1e-8)."),
        Rule("linear_optim", 2, ((2, 3),),
             "LinearOptim ablation (Sec. 6.1): one GRU on [sign g, log|g|], "
             "update -lr (a g + b) with a = exp(o1), b = exp(o2) o3."),
        Rule("l2lgd2", 3, ((2, 1),),
             "L2LGD^2 (Andrychowicz et al. 2016) as in App. C.3: one GRU on the L2L "
             "log/sign preprocessing (p = 10), update -lr exp(o) g."),
        Rule("optim4rl_odd", 0, ((2, 2), (1, 1)),
             "Optim4RL made odd in g like Adam: the update is (u(g) - u(-g)) / 2 with u "
             "Algorithm 1 run on g and on -g (two hidden states per parameter); the same "
             "meta-parameters and kernels as optim4rl.", odd=True),
    )
}


def get_rule(rule: str | Rule) -> Rule:
  if isinstance(rule, Rule):
    return rule
  try:
    return RULES[rule]
  except KeyError:
    raise ValueError(f"unknown rule {rule!r}; expected one of {sorted(RULES)}") from None
