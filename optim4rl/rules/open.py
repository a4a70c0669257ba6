"""OPEN's per-tensor math, the specification of every OPEN backend (Goldie et al., NeurIPS 2024;
the facts are those of ../shared/OPEN.md, sections 1-7).

One step of one parameter tensor: six momenta updated with the gradient, 19 features per
element (15 normalised by their RMS over the tensor, then training, layer and batch
proportion and dormancy, raw), a GRU cell and a LayerNorm MLP per element, and the update
u = 0.001 o0 exp(0.001 o1) + 0.001 o2 mask eps. Trees (which tensors are layers of which
network, the mean of u over all of them) are the optax transform's job (optim4rl/open.py).

Meta-parameters are `OpenMeta(gru, mlp)`, dicts of named arrays; the authors' published flat
vectors (1211 floats, default network; 3571, the larger one) load with `open_meta_from_flat`
and `load_open_meta`, and ours save as .npz with a header (`save_open_meta`).
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)  # momenta, updated before use, no bias correction
LOG_EPS = 1e-13          # inside log(|m| + eps) and log(|g| + eps)
NORM_EPS = 1e-5          # under the root of the per-tensor RMS normaliser
DORMANCY_EPS = 1e-11     # added to the layer's mean |activation| before normalising
LAYER_NORM_EPS = 1e-6
UPDATE_SCALE = 0.001     # of o0, inside exp of o1, and of the noise o2
NORMALISED = 15          # features divided by their per-tensor RMS: p, 6 signs, 6 logs, sign g, log g
FEATURES = 19            # ... then training, layer and batch proportion and dormancy, raw
OUTPUTS = 3

# Precision of every product: the specification computes in true float32 (the default on GPUs
# is TF32, whose 10-bit mantissa no kernel comparison at 1e-5 would survive).
HIGHEST = jax.lax.Precision.HIGHEST


class OpenNet(NamedTuple):
  """Sizes of an OPEN network: the GRU's hidden size and the MLP's width."""
  hidden: int
  width: int


NETS = {"default": OpenNet(8, 16), "large": OpenNet(16, 32)}


class OpenMeta(NamedTuple):
  """OPEN's meta-parameters. gru: {"ir", "iz", "in": {"kernel" (19, H), "bias" (H,)},
  "hr", "hz": {"kernel" (H, H)}, "hn": {"kernel" (H, H), "bias" (H,)}} (flax GRUCell's
  gates); mlp: {"dense0": (H, W), "norm0", "dense1": (W, W), "norm1", "dense2": (W, 3)}, each
  dense {"kernel", "bias"}, each norm {"scale", "bias"}."""
  gru: dict
  mlp: dict


def layout(net: OpenNet) -> list[tuple[tuple[str, str, str], tuple[int, ...]]]:
  """((group, layer, leaf), shape) of every array in the published flat order: the flax dict
  {"gru_params", "params"} flattened with sorted keys (flax GRUCell names; the MLP's
  nn.Sequential layers_0, _1, _3, _4, _6 are our dense0, norm0, dense1, norm1, dense2)."""
  h, w = net
  gru = [("hn", "bias", (h,)), ("hn", "kernel", (h, h)), ("hr", "kernel", (h, h)),
         ("hz", "kernel", (h, h))]
  for gate in ("in", "ir", "iz"):
    gru += [(gate, "bias", (h,)), (gate, "kernel", (FEATURES, h))]
  mlp = [("dense0", "bias", (w,)), ("dense0", "kernel", (h, w)),
         ("norm0", "bias", (w,)), ("norm0", "scale", (w,)),
         ("dense1", "bias", (w,)), ("dense1", "kernel", (w, w)),
         ("norm1", "bias", (w,)), ("norm1", "scale", (w,)),
         ("dense2", "bias", (OUTPUTS,)), ("dense2", "kernel", (w, OUTPUTS))]
  return ([(("gru", n, leaf), s) for n, leaf, s in gru]
          + [(("mlp", n, leaf), s) for n, leaf, s in mlp])


def flat_size(net: OpenNet) -> int:
  return sum(math.prod(shape) for _, shape in layout(net))


def net_of(meta: OpenMeta) -> OpenNet:
  """The network sizes of `meta`, checked against every shape."""
  try:
    hidden, width = meta.gru["hn"]["kernel"].shape[0], meta.mlp["dense0"]["kernel"].shape[1]
  except (AttributeError, KeyError, TypeError, IndexError):
    raise ValueError(f"OPEN meta-parameters must be an OpenMeta(gru, mlp) of named arrays, got "
                     f"{type(meta).__name__}") from None
  net = OpenNet(int(hidden), int(width))
  for (group, name, leaf), shape in layout(net):
    try:
      value = getattr(meta, group)[name][leaf]
    except (KeyError, TypeError):
      raise ValueError(f"OPEN meta-parameters lack {group}/{name}/{leaf}") from None
    if tuple(jnp.shape(value)) != shape:
      raise ValueError(f"OPEN meta-parameter {group}/{name}/{leaf} has shape "
                       f"{tuple(jnp.shape(value))}, expected {shape} (network {net})")
    if jnp.result_type(value) != jnp.float32:
      raise TypeError(f"OPEN meta-parameter {group}/{name}/{leaf} must be float32, got "
                      f"{jnp.result_type(value)}")
  return net


def zero_meta(net: str | OpenNet = "default") -> OpenMeta:
  """All-zero meta-parameters (LayerNorm scales included): where the authors' evolution
  strategies start."""
  net = _net(net)
  return open_meta_from_flat(np.zeros(flat_size(net), np.float32))


def _net(net: str | OpenNet) -> OpenNet:
  if isinstance(net, OpenNet):
    return net
  if net not in NETS:
    raise ValueError(f"unknown OPEN network {net!r}; expected one of {sorted(NETS)}")
  return NETS[net]


def open_meta_from_flat(flat, source: str = "the vector") -> OpenMeta:
  """OPEN meta-parameters from a published flat vector; its size (1211: default network,
  3571: the larger one) says which network it is, and any other size is refused."""
  flat = np.asarray(flat)
  sizes = {flat_size(net): name for name, net in NETS.items()}
  if flat.ndim != 1 or flat.size not in sizes:
    raise ValueError(f"{source} holds {flat.size} values of shape {flat.shape}; OPEN's flat "
                     f"meta-parameters are one vector of "
                     f"{' or '.join(f'{n} ({name} network)' for n, name in sizes.items())}")
  if not np.issubdtype(flat.dtype, np.floating):
    raise ValueError(f"{source} holds {flat.dtype} values, not floats")
  if not np.all(np.isfinite(flat)):
    raise ValueError(f"{source} holds non-finite values")
  net = NETS[sizes[flat.size]]
  out, offset = {"gru": {}, "mlp": {}}, 0
  for (group, name, leaf), shape in layout(net):
    size = math.prod(shape)
    out[group].setdefault(name, {})[leaf] = jnp.asarray(
        flat[offset:offset + size].reshape(shape), jnp.float32)
    offset += size
  return OpenMeta(out["gru"], out["mlp"])


def flatten_open_meta(meta: OpenMeta) -> jax.Array:
  """The published flat layout of `meta` (the inverse of `open_meta_from_flat`)."""
  return jnp.concatenate([jnp.ravel(getattr(meta, g)[n][leaf])
                          for (g, n, leaf), _ in layout(net_of(meta))])


_FORMAT = "optim4rl-open"


def save_open_meta(path: str | Path, meta: OpenMeta) -> None:
  """Save as .npz: a header and the flat vector (written then renamed: never torn)."""
  net = net_of(meta)
  header = json.dumps({"format": _FORMAT, "version": 1, "hidden": net.hidden,
                       "width": net.width})
  path = Path(path)
  tmp = path.with_name(f".{path.stem}.tmp.npz")
  np.savez(tmp, __header__=np.frombuffer(header.encode(), np.uint8),
           flat=np.asarray(flatten_open_meta(meta)))
  tmp.replace(path)


def load_open_meta(path: str | Path) -> OpenMeta:
  """OPEN meta-parameters from a published flat .npy (1211 or 3571 float32) or our .npz."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no OPEN meta-parameter file {str(path)!r}")
  try:
    with open(path, "rb") as f:
      magic = f.read(6)
    if magic.startswith(b"PK"):
      with np.load(path, allow_pickle=False) as data:
        header = json.loads(bytes(data["__header__"]).decode())
        flat = data["flat"]
      if header.get("format") != _FORMAT:
        raise ValueError(f"its header says {header.get('format')!r}, not {_FORMAT!r}")
    elif magic == b"\x93NUMPY":
      flat = np.load(path, allow_pickle=False)
    else:
      raise ValueError("neither a .npy array nor an .npz archive")
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
    raise ValueError(f"{str(path)!r} is not a readable OPEN meta-parameter file ({err})") from None
  return open_meta_from_flat(flat, repr(str(path)))


PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained" / "open"


def pretrained_open(name: str) -> OpenMeta:
  """The authors' published meta-parameters shipped with the package (Apache-2.0): "breakout",
  "ant", "gridworld" (default network) or "multi" (the larger one)."""
  names = sorted(p.name[:-len("_OPEN.npy")] for p in PRETRAINED.glob("*_OPEN.npy"))
  if name not in names:
    raise ValueError(f"no published OPEN meta-parameters {name!r}; expected one of {names}")
  return load_open_meta(PRETRAINED / f"{name}_OPEN.npy")


# -- the per-element network ---------------------------------------------------------------------

def _dense(p: dict, x):
  return jnp.matmul(x, p["kernel"], precision=HIGHEST) + p["bias"]


def _layer_norm(p: dict, x):
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * p["scale"] + p["bias"]


def gru_cell(gru: dict, x, h):
  """flax GRUCell's equations: x (..., 19), h (..., H) -> h' (..., H)."""
  hidden = lambda gate: jnp.matmul(h, gru[gate]["kernel"], precision=HIGHEST)
  r = jax.nn.sigmoid(_dense(gru["ir"], x) + hidden("hr"))
  z = jax.nn.sigmoid(_dense(gru["iz"], x) + hidden("hz"))
  n = jnp.tanh(_dense(gru["in"], x) + r * (hidden("hn") + gru["hn"]["bias"]))
  return (1.0 - z) * n + z * h


def network(meta: OpenMeta, x, h):
  """(outputs (..., 3), carry (..., H)) of the GRU and the MLP on features x (..., 19)."""
  h = gru_cell(meta.gru, x, h)
  y = jax.nn.relu(_layer_norm(meta.mlp["norm0"], _dense(meta.mlp["dense0"], h)))
  y = jax.nn.relu(_layer_norm(meta.mlp["norm1"], _dense(meta.mlp["dense1"], y)))
  return _dense(meta.mlp["dense2"], y), h


# -- one tensor's step ---------------------------------------------------------------------------

def update_momenta(momenta, g):
  """(6, *shape): m <- b m + (1 - b) g for each decay b."""
  b = jnp.asarray(DECAYS, jnp.float32).reshape((-1,) + (1,) * jnp.ndim(g))
  return b * momenta + (1.0 - b) * g


def features(p, g, momenta, *, training: float, layer: float, batch: float, dormancy):
  """(*shape, 19) features of one tensor: p, sign(m_i), log(|m_i| + eps), sign(g),
  log(|g| + eps), each divided by its RMS over the tensor; then the three proportions and
  `dormancy` (broadcast to the tensor's shape) raw. `momenta` are already updated."""
  raw = [p, *jnp.sign(momenta), *jnp.log(jnp.abs(momenta) + LOG_EPS), jnp.sign(g),
         jnp.log(jnp.abs(g) + LOG_EPS)]
  x = jnp.stack(raw, -1)
  axes = tuple(range(jnp.ndim(p)))
  x = x / jnp.sqrt(NORM_EPS + jnp.mean(jnp.square(x), axis=axes))
  scalars = [jnp.broadcast_to(jnp.asarray(v, jnp.float32), jnp.shape(p))
             for v in (training, layer, batch)]
  extra = jnp.stack(scalars + [jnp.broadcast_to(dormancy, jnp.shape(p))], -1)
  return jnp.concatenate([x, extra], -1)


def tensor_step(meta: OpenMeta, p, g, momenta, carry, *, training, layer, batch, dormancy,
                noise, actor: bool):
  """OPEN's step of one tensor before the mean over all tensors is taken out: (u, momenta,
  carry), with p_new = p - (u - mean u). `noise`: N(0, 1) of the tensor's shape (used only
  if `actor`); `dormancy`: broadcastable to the tensor (its output neurons' values)."""
  momenta = update_momenta(momenta, g)
  x = features(p, g, momenta, training=training, layer=layer, batch=batch, dormancy=dormancy)
  out, carry = network(meta, x, carry)
  u = UPDATE_SCALE * out[..., 0] * jnp.exp(UPDATE_SCALE * out[..., 1])
  if actor:
    u = u + UPDATE_SCALE * out[..., 2] * noise
  return u, momenta, carry


def dormancy(mean_abs_activation):
  """Per-neuron dormancy of one layer from the mean over the minibatch of |its outputs|:
  a' / sum |a'| * n with a' = a + 1e-11 (identically 1 for a one-unit layer)."""
  a = jnp.asarray(mean_abs_activation, jnp.float32) + DORMANCY_EPS
  return a / jnp.sum(jnp.abs(a)) * a.shape[-1]
