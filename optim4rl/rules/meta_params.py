"""Meta-parameters of a rule: deterministic init, validation, the flat layout the kernels read,
and save/load (.npz with the rule's name)."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from optim4rl.rules.constants import HIDDEN, NET_LEAVES
from optim4rl.rules.table import Rule, get_rule


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
  """Load (meta-parameters, rule name) saved by `save_meta_params`; validates everything.

  A missing file raises FileNotFoundError; a damaged one (truncated, a byte flipped), another
  kind of file or non-finite meta-parameters raise ValueError."""
  try:
    with open(path, "rb") as f:  # np.savez writes a zip archive; np.load reads others too
      is_npz = f.read(4) == b"PK\x03\x04"
    if is_npz:
      # NpzFile reads each array lazily, so a damaged archive can fail at any read: all here.
      with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
  except FileNotFoundError:
    raise
  # Whatever the OS, zipfile, zlib or numpy meet (BadZipFile, EOFError, a bad CRC, zlib.error,
  # a damaged .npy header, ...) means the same to a user.
  except Exception as e:
    reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    raise ValueError(f"{path!r} is not a readable optim4rl meta-parameter file ({reason}); "
                     "is it truncated or damaged? Save or copy it again") from None
  if not is_npz:
    raise ValueError(f"{path!r} is not an optim4rl meta-parameter file (not an .npz archive)")
  try:
    header = json.loads(bytes(arrays.pop("__header__")).decode())
  except (KeyError, TypeError, ValueError):  # no header, or not JSON text
    header = None
  if (not isinstance(header, dict) or header.get("format") != "optim4rl-meta"
      or not isinstance(header.get("rule"), str)):
    raise ValueError(f"{path!r} is not an optim4rl meta-parameter file")
  spec = get_rule(header["rule"])
  meta = {n: {"gru": {}, "mlp": {}} for n in spec.net_names}
  for n in spec.net_names:
    for g, leaf in NET_LEAVES:
      key = f"{n}/{g}/{leaf}"
      if key not in arrays:
        raise ValueError(f"{path!r} lacks meta-parameter {key}")
      meta[n][g][leaf] = jnp.asarray(arrays[key])
  check_meta_params(meta, spec)
  for n in spec.net_names:  # shapes and dtype are right; now the values
    for g, leaf in NET_LEAVES:
      if not np.all(np.isfinite(arrays[f"{n}/{g}/{leaf}"])):
        raise ValueError(f"{path!r} holds non-finite values (NaN or inf) in meta-parameter "
                         f"{n}/{g}/{leaf}")
  return meta, spec.name
