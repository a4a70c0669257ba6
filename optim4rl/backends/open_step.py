"""OPEN's forward step over all tensors of a parameter tree in one call, flat (structure of
arrays), by pure JAX ("reference"), the fused C++ kernel ("cpu"), or on GPUs the CUDA kernels
("cuda") or the Triton kernels ("triton").

It is the specification's `tensor_step` (optim4rl/rules/open.py) for T tensors laid end to
end; "cpu" is csrc/open_cpu_ffi.cc called through jax.ffi.

The GPU backends run in two launches over chunks of elements that never straddle two tensors
(`chunk_plan`): the momenta and, per chunk, the sums of squares of the normalised features;
then, once those are summed per tensor here (`tensor_inv_rms`: a few floats per chunk), the
network per element. "cuda" is csrc/open_cuda_ffi.cu, "triton" kernels/open_step.py.

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

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optim4rl.backends import registry, triton_launch
from optim4rl.rules import open as spec

OPEN_BACKENDS = ("reference", "cpu", "cuda", "triton")
TARGET = "optim4rl_cpu_open_forward"
CUDA_TARGETS = ("optim4rl_cuda_open_moments", "optim4rl_cuda_open_network")
CUDA_BLOCK = 128  # elements per chunk: one CUDA block of as many threads


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


def cuda_problem(platform: str | None = None) -> str | None:
  """Why the "cuda" backend cannot run on `platform` (default: JAX's); None when it can."""
  lib = registry.cuda_library()
  if lib is None:
    return "the CUDA library optim4rl._cuda is not built (no nvcc at install time)"
  if not set(CUDA_TARGETS) <= set(lib.registrations()):
    return "the CUDA library optim4rl._cuda predates the OPEN kernels (rebuild: pip install -e .)"
  platform = platform or jax.default_backend()
  if platform not in registry.GPU_PLATFORMS:
    return f"it runs on CUDA GPUs, the platform is {platform}"
  return None


def triton_problem(platform: str | None = None) -> str | None:
  """Why the "triton" backend cannot run on `platform`; None when it can."""
  platform = platform or jax.default_backend()
  if platform not in registry.GPU_PLATFORMS:
    return f"it runs on GPUs through jax_triton, the platform is {platform}"
  return registry.triton_problem()


PROBLEMS = {"cpu": cpu_problem, "cuda": cuda_problem, "triton": triton_problem}


def resolve_open_backend(backend: str | None, platform: str | None = None) -> str:
  """The explicit choice, validated, or the first of "cpu", "cuda", "triton" that can run,
  else "reference"."""
  if backend is None:
    return next((name for name, problem in PROBLEMS.items() if problem(platform) is None),
                "reference")
  if backend not in OPEN_BACKENDS:
    raise ValueError(f"OPEN: unknown backend {backend!r}; expected one of {OPEN_BACKENDS}")
  if backend in PROBLEMS and (why := PROBLEMS[backend](platform)) is not None:
    raise ValueError(f"OPEN: backend {backend!r} cannot run here: {why}")
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
  if backend != "reference":
    seg = jnp.asarray(static if static is not None else segments, jnp.int32)
    run = _cpu if backend == "cpu" else functools.partial(staged, GPU_STAGES[backend],
                                                          checked=static is not None)
    return run(net, spec.flatten_open_meta(meta), *args, seg, *rest)
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
  call = jax.ffi.ffi_call(TARGET, _f32(p.shape, momenta.shape, carry.shape),
                          vmap_method="broadcast_all")
  return call(flat_meta, p, g, momenta, carry, segments, layer, actor, dormancy, noise,
              training, batch, hidden=np.int32(net.hidden), width=np.int32(net.width))


# ----------------------------------------------------------------------------- GPU backends

def chunk_plan(segments, params: int, block: int):
  """(start, length, tensor), int32 (C,) each: chunks of at most `block` elements, none
  straddling two tensors, in order; C = ceil(P / block) + T bounds their number, and the
  chunks past the last have length 0."""
  tensors = segments.shape[0] - 1
  chunks = -(-params // block) + tensors
  per_tensor = (jnp.maximum(jnp.diff(segments), 0) + block - 1) // block
  first = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(per_tensor, dtype=jnp.int32)])
  c = jnp.arange(chunks, dtype=jnp.int32)
  tensor = jnp.clip(jnp.searchsorted(first[1:], c, side="right"), 0, tensors - 1)
  tensor = tensor.astype(jnp.int32)
  start = segments[tensor] + (c - first[tensor]) * block
  used = c < first[-1]
  length = jnp.where(used, jnp.clip(segments[tensor + 1] - start, 0, block), 0)
  return jnp.where(used, start, 0), length.astype(jnp.int32), tensor


def tensor_inv_rms(partials, tensor, segments):
  """(T, 16) per tensor: 1 / sqrt(eps + mean of squares) of the 15 normalised features from
  the chunks' sums (C, 16), then 1 for the raw dormancy. A product with a one-hot matrix, not
  a scatter-add: deterministic on GPUs."""
  tensors = segments.shape[0] - 1
  onehot = (tensor[None, :] == jnp.arange(tensors)[:, None]).astype(jnp.float32)
  sums = jnp.dot(onehot, partials, precision=spec.HIGHEST)
  count = jnp.maximum(jnp.diff(segments), 1).astype(jnp.float32)
  inv = 1.0 / jnp.sqrt(spec.NORM_EPS + sums / count[:, None])
  return inv.at[:, spec.NORMALISED].set(1.0)


class Stages(NamedTuple):
  """A GPU backend's two launches (vmappable; see the module docstring).

  moments(p, g, momenta, start, length, block) -> (momenta_new, partials (C, 16));
  network(meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor, inv_rms,
  layer, actor, training, batch, hidden, width, block) -> (u, carry_new)."""
  block: Callable[[], int]
  moments: Callable
  network: Callable


def staged(stages: Stages, net, flat_meta, p, g, momenta, carry, segments, layer, actor,
           dormancy, noise, training, batch, *, checked: bool):
  """open_step through a GPU backend's stages. `checked`: the offsets were validated at trace
  time; traced ones are checked here, and invalid ones give NaN updates."""
  params = p.shape[0]
  if params == 0:
    return jnp.zeros_like(p), jnp.zeros_like(momenta), jnp.zeros_like(carry)
  block = stages.block()
  start, length, tensor = chunk_plan(segments, params, block)
  momenta_new, partials = stages.moments(p, g, momenta, start, length, block)
  inv_rms = tensor_inv_rms(partials, tensor, segments)
  u, carry_new = stages.network(flat_meta, p, g, momenta_new, carry, dormancy, noise, start,
                                length, tensor, inv_rms, layer, actor, training, batch,
                                net.hidden, net.width, block)
  if not checked:
    ok = (segments[0] == 0) & (segments[-1] == params) & jnp.all(jnp.diff(segments) >= 0)
    u = jnp.where(ok, u, jnp.nan)
  return u, momenta_new, carry_new


def _f32(*shapes):
  return tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)


def _cuda_moments(p, g, momenta, start, length, block):
  registry.cuda_library()
  call = jax.ffi.ffi_call(CUDA_TARGETS[0], _f32(momenta.shape, (start.shape[0], 16)),
                          vmap_method="broadcast_all")
  return call(p, g, momenta, start, length, block=np.int32(block))


def _cuda_network(meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor,
                  inv_rms, layer, actor, training, batch, hidden, width, block):
  registry.cuda_library()
  call = jax.ffi.ffi_call(CUDA_TARGETS[1], _f32(p.shape, carry.shape),
                          vmap_method="broadcast_all")
  return call(meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor, inv_rms,
              layer, actor, training, batch, hidden=np.int32(hidden), width=np.int32(width),
              block=np.int32(block))


GPU_STAGES = {
    "cuda": Stages(lambda: CUDA_BLOCK, _cuda_moments, _cuda_network),
    "triton": Stages(triton_launch.open_block, triton_launch.open_moments,
                     triton_launch.open_network),
}
