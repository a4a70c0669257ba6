"""Learned update rules: their shapes, meta-parameter init, flat layout and save/load.

Every rule is one or two "nets", each a GRU (hidden 8) followed by an MLP [16, 16]. A rule
is fully described by the (input, output) sizes of its nets; the per-element math that
combines them lives in `reference.py` (pure JAX) and `csrc/optim4rl_math.h` (kernels).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

HIDDEN = 8          # GRU hidden size (paper, Appendix A)
MLP_DIMS = (16, 16)  # MLP hidden sizes (paper, Appendix A)
GATES = 3 * HIDDEN  # GRU gates [reset, update, candidate]

# Order of the leaves of one net in the flat meta-parameter vector. The kernels index the
# flat vector with exactly this order (see NetLayout in csrc/optim4rl_math.h).
NET_LEAVES = (("gru", "wx"), ("gru", "wh"), ("gru", "bx"), ("gru", "bh"),
              ("mlp", "w1"), ("mlp", "b1"), ("mlp", "w2"), ("mlp", "b2"),
              ("mlp", "w3"), ("mlp", "b3"))


@dataclasses.dataclass(frozen=True)
class Rule:
  name: str
  kernel_id: int                       # matches `enum RuleId` in csrc/optim4rl_math.h
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
    n_in, n_out = self.nets[net]
    h, (d1, d2) = HIDDEN, MLP_DIMS
    return {("gru", "wx"): (n_in, GATES), ("gru", "wh"): (h, GATES),
            ("gru", "bx"): (GATES,), ("gru", "bh"): (GATES,),
            ("mlp", "w1"): (h, d1), ("mlp", "b1"): (d1,),
            ("mlp", "w2"): (d1, d2), ("mlp", "b2"): (d2,),
            ("mlp", "w3"): (d2, n_out), ("mlp", "b3"): (n_out,)}

  @property
  def meta_size(self) -> int:
    return sum(int(np.prod(s)) for i in range(len(self.nets))
               for s in self.leaf_shapes(i).values())


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


def init_meta_params(key: jax.Array, rule: str = "optim4rl") -> dict:
  """Deterministic initial meta-parameters: LeCun-normal input and MLP weights,
  orthogonal recurrent weights, zero biases (the usual GRU/Dense initialisation)."""
  spec = get_rule(rule)
  lecun = jax.nn.initializers.lecun_normal()
  ortho = jax.nn.initializers.orthogonal()
  meta = {}
  for i, name in enumerate(spec.net_names):
    shapes = spec.leaf_shapes(i)
    keys = jax.random.split(jax.random.fold_in(key, i), len(NET_LEAVES))
    net = {"gru": {}, "mlp": {}}
    for k, (group, leaf) in zip(keys, NET_LEAVES):
      shape = shapes[(group, leaf)]
      if leaf.startswith("b"):
        value = jnp.zeros(shape, jnp.float32)
      elif leaf == "wh":  # one orthogonal block per gate, as GRU cells usually do
        value = jnp.concatenate(
            [ortho(kk, (HIDDEN, HIDDEN), jnp.float32) for kk in jax.random.split(k, 3)], 1)
      else:
        value = lecun(k, shape, jnp.float32)
      net[group][leaf] = value
    meta[name] = net
  return meta


def check_meta_params(meta, rule: str | Rule) -> Rule:
  """Raise a clear error unless `meta` has exactly the structure, shapes and dtype of `rule`."""
  spec = get_rule(rule)
  if not isinstance(meta, dict) or set(meta) != set(spec.net_names):
    got = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
    raise ValueError(f"meta-parameters for rule {spec.name!r} must be a dict with keys "
                     f"{list(spec.net_names)}, got {got}")
  for i, name in enumerate(spec.net_names):
    for (group, leaf), shape in spec.leaf_shapes(i).items():
      try:
        value = meta[name][group][leaf]
      except (KeyError, TypeError):
        raise ValueError(f"meta-parameters for rule {spec.name!r} lack {name}/{group}/{leaf}")
      if tuple(jnp.shape(value)) != shape:
        raise ValueError(f"meta-parameter {name}/{group}/{leaf} of rule {spec.name!r} has shape "
                         f"{tuple(jnp.shape(value))}, expected {shape}")
      if jnp.result_type(value) != jnp.float32:
        raise TypeError(f"meta-parameter {name}/{group}/{leaf} must be float32, "
                        f"got {jnp.result_type(value)}")
  return spec


def flatten_meta(meta, rule: str | Rule) -> jax.Array:
  """The flat float32 vector the kernels read (differentiable: a concatenation)."""
  spec = get_rule(rule)
  return jnp.concatenate([jnp.ravel(meta[name][g][leaf])
                          for name in spec.net_names for g, leaf in NET_LEAVES])


def unflatten_meta(flat: jax.Array, rule: str | Rule) -> dict:
  spec = get_rule(rule)
  meta, offset = {}, 0
  for i, name in enumerate(spec.net_names):
    net = {"gru": {}, "mlp": {}}
    for (group, leaf), shape in spec.leaf_shapes(i).items():
      size = int(np.prod(shape))
      net[group][leaf] = jnp.reshape(flat[offset:offset + size], shape)
      offset += size
    meta[name] = net
  return meta


def save_meta_params(path: str, meta, rule: str | Rule) -> None:
  """Save meta-parameters with their rule name to an .npz file."""
  spec = check_meta_params(meta, rule)
  arrays = {f"{n}/{g}/{leaf}": np.asarray(meta[n][g][leaf])
            for n in spec.net_names for g, leaf in NET_LEAVES}
  header = json.dumps({"format": "optim4rl-meta", "version": 1, "rule": spec.name})
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:  # write then rename: a killed run never leaves a torn file
    np.savez(f, __header__=np.frombuffer(header.encode(), np.uint8), **arrays)
  os.replace(tmp, path)


def load_meta_params(path: str) -> tuple[dict, str]:
  """Load (meta-parameters, rule name) saved by `save_meta_params`; validates everything."""
  try:
    data = np.load(path, allow_pickle=False)
    header = json.loads(bytes(data["__header__"]).decode())
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"{path!r} is not an optim4rl meta-parameter file: {e}") from None
  if header.get("format") != "optim4rl-meta":
    raise ValueError(f"{path!r} is not an optim4rl meta-parameter file")
  spec = get_rule(header["rule"])
  meta = {n: {"gru": {}, "mlp": {}} for n in spec.net_names}
  for n in spec.net_names:
    for g, leaf in NET_LEAVES:
      key = f"{n}/{g}/{leaf}"
      if key not in data:
        raise ValueError(f"{path!r} lacks meta-parameter {key}")
      meta[n][g][leaf] = jnp.asarray(data[key])
  check_meta_params(meta, spec)
  return meta, spec.name
