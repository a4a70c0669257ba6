"""OPEN's forward step over all tensors of a parameter tree in one call, flat (structure of
arrays), by pure JAX ("reference") or the fused C++ kernel ("cpu").

It is the specification's `tensor_step` (optim4rl/rules/open.py) for T tensors laid end to
end; "cpu" is csrc/open_cpu_ffi.cc called through jax.ffi.

    u, momenta, carry = open_step(meta, p, g, momenta, carry, segments, layer, actor,
                                  dormancy, noise, training, batch, backend="cpu")

Operands: p, g (P,); momenta (6, P); carry (H, P); segments int (T + 1,), the offsets of the T
tensors (0 = segments[0] <= ... <= segments[T] = P); layer, actor (T,) float32 (layer
proportion, 1 for the actor's tensors); dormancy, noise (P,), per element (noise is ignored
where actor is 0); training, batch () float32. u is the update before the mean over all
elements is taken out (the transform does that: updates = -(u - mean u)). Forward only: OPEN is
meta-trained by evolution strategies, nothing differentiates through it. Both backends are
vmappable (the kernel steps a batch of optimizers one after the other).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from optim4rl.backends import registry
from optim4rl.rules import open as spec

OPEN_BACKENDS = ("reference", "cpu")
TARGET = "optim4rl_cpu_open_forward"


def cpu_problem(platform: str | None = None) -> str | None:
  """Why the "cpu" backend cannot run on `platform` (default: JAX's); None when it can."""
  lib = registry.cpu_library()
  if lib is None:
    return "the C++ library optim4rl._cpu is not built (pip install -e .)"
  if TARGET not in lib.registrations():
    return "the C++ library optim4rl._cpu predates the OPEN kernel (rebuild: pip install -e .)"
  platform = platform or jax.default_backend()
  if platform != "cpu":
    return f"it runs on CPU, the platform is {platform}"
  return None


def resolve_open_backend(backend: str | None, platform: str | None = None) -> str:
  """The explicit choice, validated, or "cpu" where the kernel can run, else "reference"."""
  if backend is None:
    return "cpu" if cpu_problem(platform) is None else "reference"
  if backend not in OPEN_BACKENDS:
    raise ValueError(f"OPEN: unknown backend {backend!r}; expected one of {OPEN_BACKENDS}")
  if backend == "cpu" and (why := cpu_problem(platform)) is not None:
    raise ValueError(f"OPEN: backend 'cpu' cannot run here: {why}")
  return backend


def _float32(name: str, x):
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return jnp.asarray(x, jnp.float32)
  if jnp.result_type(x) != jnp.float32:
    raise TypeError(f"OPEN: {name} must be float32, got {jnp.result_type(x)}")
  return jnp.asarray(x)


def _static_segments(segments, params: int):
  """The offsets as a validated numpy array when they are known at trace time, else None
  (a traced int32 vector, checked by the kernel when it runs)."""
  if isinstance(segments, jax.core.Tracer):
    if jnp.result_type(segments) != jnp.int32:
      raise TypeError(f"OPEN: traced segments must be int32, got {jnp.result_type(segments)}")
    if jnp.ndim(segments) != 1 or jnp.shape(segments)[0] < 1:
      raise ValueError(f"OPEN: segments must be a vector (T + 1,), got shape "
                       f"{jnp.shape(segments)}")
    return None
  seg = np.asarray(segments)
  if seg.ndim != 1 or seg.size < 1 or not np.issubdtype(seg.dtype, np.integer):
    raise ValueError(f"OPEN: segments must be an integer vector (T + 1,) of offsets, got "
                     f"{seg.dtype} of shape {seg.shape}")
  if seg[0] != 0 or seg[-1] != params or np.any(np.diff(seg) < 0):
    raise ValueError(f"OPEN: segments must rise from 0 to P = {params} without decreasing, "
                     f"got {seg.tolist()[:8]}{'...' if seg.size > 8 else ''}")
  return seg.astype(np.int64)


def _check(meta, p, g, momenta, carry, segments, layer, actor, dormancy, noise, training,
           batch):
  """Trace-time validation: (net, arrays as float32 jax arrays, static segments or None)."""
  net = spec.net_of(meta)
  named = {"parameters": p, "gradients": g, "momenta": momenta, "carry": carry,
           "layer proportions": layer, "actor flags": actor, "dormancy": dormancy,
           "noise": noise, "training proportion": training, "batch proportion": batch}
  arrays = {name: _float32(name, x) for name, x in named.items()}
  if arrays["parameters"].ndim != 1:
    raise ValueError(f"OPEN: parameters must be flat (P,), got shape {arrays['parameters'].shape}")
  n = arrays["parameters"].shape[0]
  static = _static_segments(segments, n)
  tensors = (static.size if static is not None else jnp.shape(segments)[0]) - 1
  want = {"gradients": (n,), "momenta": (len(spec.DECAYS), n), "carry": (net.hidden, n),
          "layer proportions": (tensors,), "actor flags": (tensors,), "dormancy": (n,),
          "noise": (n,), "training proportion": (), "batch proportion": ()}
  for name, shape in want.items():
    if arrays[name].shape != shape:
      raise ValueError(f"OPEN: {name} must have shape {shape} for P = {n} parameters in "
                       f"T = {tensors} tensors (network hidden size {net.hidden}), got "
                       f"{arrays[name].shape}")
  return net, arrays, static


def open_step(meta: spec.OpenMeta, p, g, momenta, carry, segments, layer, actor, dormancy,
              noise, training, batch, *, backend: str | None = None):
  """(u (P,), momenta (6, P), carry (H, P)): OPEN's step of T tensors laid end to end (see the
  module docstring). backend: "reference", "cpu", or None ("cpu" where it can run)."""
  backend = resolve_open_backend(backend)
  net, a, static = _check(meta, p, g, momenta, carry, segments, layer, actor, dormancy, noise,
                          training, batch)
  args = (a["parameters"], a["gradients"], a["momenta"], a["carry"])
  rest = (a["layer proportions"], a["actor flags"], a["dormancy"], a["noise"],
          a["training proportion"], a["batch proportion"])
  if backend == "cpu":
    seg = jnp.asarray(static if static is not None else segments, jnp.int32)
    return _cpu(net, spec.flatten_open_meta(meta), *args, seg, *rest)
  if static is not None:
    return _reference_static(meta, *args, static, *rest)
  return _reference_traced(meta, *args, segments, *rest)


def _update(out, noise, actor):
  """The specification's u from the network's outputs, the noise term where actor != 0."""
  u = spec.UPDATE_SCALE * out[..., 0] * jnp.exp(spec.UPDATE_SCALE * out[..., 1])
  return jnp.where(actor != 0, u + spec.UPDATE_SCALE * out[..., 2] * noise, u)


def _reference_static(meta, p, g, momenta, carry, segments, layer, actor, dormancy, noise,
                      training, batch):
  """tensor_step's operations tensor by tensor (offsets known at trace time)."""
  us, ms, cs = [], [], []
  for t, (s, e) in enumerate(zip(segments[:-1], segments[1:])):
    if s == e:
      continue
    m = spec.update_momenta(momenta[:, s:e], g[s:e])
    x = spec.features(p[s:e], g[s:e], m, training=training, layer=layer[t], batch=batch,
                      dormancy=dormancy[s:e])
    out, c = spec.network(meta, x, carry[:, s:e].T)
    us.append(_update(out, noise[s:e], actor[t]))
    ms.append(m)
    cs.append(c.T)
  if not us:
    return jnp.zeros_like(p), jnp.zeros_like(momenta), jnp.zeros_like(carry)
  return jnp.concatenate(us), jnp.concatenate(ms, 1), jnp.concatenate(cs, 1)


_BUCKETS = 1024  # partial sums per tensor: XLA's scatter-add sums each one in sequence


def _reference_traced(meta, p, g, momenta, carry, segments, layer, actor, dormancy, noise,
                      training, batch):
  """The same with traced offsets: per-tensor means by segment sums (each tensor's spread
  over _BUCKETS partial sums, which keeps a million-element mean within ~1e-7)."""
  n, tensors = p.shape[0], segments.shape[0] - 1
  index = jnp.arange(n, dtype=jnp.int32)
  ids = jnp.searchsorted(segments[1:], index, side="right")
  m = spec.update_momenta(momenta, g)
  log = lambda v: jnp.log(jnp.abs(v) + spec.LOG_EPS)
  raw = jnp.stack([p, *jnp.sign(m), *log(m), jnp.sign(g), log(g)], -1)
  count = jnp.maximum(jnp.diff(segments), 1).astype(jnp.float32)
  sums = jax.ops.segment_sum(jnp.square(raw), ids * _BUCKETS + index % _BUCKETS,
                             tensors * _BUCKETS)
  mean = sums.reshape(tensors, _BUCKETS, -1).sum(1) / count[:, None]
  x = raw / jnp.sqrt(spec.NORM_EPS + mean[ids])
  full = lambda v: jnp.broadcast_to(v, (n,))
  x = jnp.concatenate([x, jnp.stack([full(training), layer[ids], full(batch), dormancy], -1)],
                      -1)
  out, c = spec.network(meta, x, carry.T)
  return _update(out, noise, actor[ids]), m, c.T


def _cpu(net, flat_meta, p, g, momenta, carry, segments, layer, actor, dormancy, noise,
         training, batch):
  registry.cpu_library()  # registers the FFI targets
  f32 = lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32)
  call = jax.ffi.ffi_call(TARGET, (f32(p), f32(momenta), f32(carry)),
                          vmap_method="broadcast_all")
  return call(flat_meta, p, g, momenta, carry, segments, layer, actor, dormancy, noise,
              training, batch, hidden=np.int32(net.hidden), width=np.int32(net.width))
