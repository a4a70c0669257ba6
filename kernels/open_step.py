"""Triton kernels of OPEN's step (optim4rl/rules/open.py), and the launch plan that runs them.

The parameters of every tensor are cut into chunks of BLOCK elements that never straddle two
tensors (optim4rl/backends/open_step.py plans them: per chunk its start, length and tensor,
(B, C) int32 each; unused chunks have length 0). Two launches, one program per chunk:

  moments_kernel   momenta updated and stored; per chunk, the sums of squares of the 15
                   features that OPEN normalises (partials (B, C, 16), column 15 zero).
  network_kernel   features divided by their tensor's RMS (inv_rms (B, T, 16), from the
                   partials; column 15, the raw dormancy, is 1), the GRU cell, the LayerNorm
                   MLP, the update u before its mean is taken out, and the new carry.

Between them, the caller sums the partials per tensor (small: C x 16 floats).

Features are one [BLOCK, 16] tile: column 0 the parameter, 1-6 the signs and 7-12 the logs of
the six momenta, 13-14 sign and log of the gradient, 15 the dormancy. Every layer is a tl.dot
in full fp32 (input_precision="ieee") with zero-padded weight tiles: the GRU's hidden size
pads to HP = max(16, HID) columns (padding stays exactly zero: r = z = 1/2, n = 0), the
network's three outputs to 16. Meta-parameters are the published flat vector (B, K), offsets
from `_offset` (a copy of optim4rl.rules.open.layout; tests/rules/test_constants.py checks
it). This module does not import optim4rl, and so not JAX.
"""
from __future__ import annotations

import dataclasses

import triton
import triton.language as tl

from .step import _column, _dot, _relu, _sigmoid, _tanh, offset_in

# Copies of optim4rl.rules.open (checked by tests/rules/test_constants.py).
DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
MOMENTA = tl.constexpr(6)
LOG_EPS = tl.constexpr(1e-13)
LAYER_NORM_EPS = tl.constexpr(1e-6)
UPDATE_SCALE = tl.constexpr(0.001)
FEATURES = tl.constexpr(19)  # 15 normalised, then training, layer, batch proportion, dormancy
TRAINING = tl.constexpr(15)
LAYER = tl.constexpr(16)
BATCH = tl.constexpr(17)
DORMANCY = tl.constexpr(18)
OUTPUTS = tl.constexpr(3)
F = tl.constexpr(16)  # the feature tile: 15 normalised features and the dormancy


@triton.constexpr_function
def _offset(name, HID, WID):
  """Offset of a leaf ("gru/ir/kernel", ...) in the published flat vector of net (HID, WID)."""
  features, outputs = FEATURES.value, OUTPUTS.value
  sizes = [("gru/hn/bias", HID), ("gru/hn/kernel", HID * HID), ("gru/hr/kernel", HID * HID),
           ("gru/hz/kernel", HID * HID)]
  for gate in ("in", "ir", "iz"):
    sizes += [(f"gru/{gate}/bias", HID), (f"gru/{gate}/kernel", features * HID)]
  sizes += [("mlp/dense0/bias", WID), ("mlp/dense0/kernel", HID * WID),
            ("mlp/norm0/bias", WID), ("mlp/norm0/scale", WID),
            ("mlp/dense1/bias", WID), ("mlp/dense1/kernel", WID * WID),
            ("mlp/norm1/bias", WID), ("mlp/norm1/scale", WID),
            ("mlp/dense2/bias", outputs), ("mlp/dense2/kernel", WID * outputs), ("size", 0)]
  return offset_in(sizes, name)


# ----------------------------------------------------------------------------- features

@triton.jit
def _sign(x):  # jnp.sign: zeros and NaN pass through
  return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, x))


@triton.jit
def _log_abs(x):
  return tl.log(tl.abs(x) + LOG_EPS)


@triton.jit
def _momentum_of_column(cols):
  """Which momentum a feature column shows (columns 1-6 and 7-12), and whether it shows one."""
  return tl.where(cols > MOMENTA, cols - MOMENTA - 1, cols - 1), (cols >= 1) & (cols <= 2 * MOMENTA)


@triton.constexpr_function
def _decay_of(k):
  return DECAYS[k]


@triton.jit
def _decay(k):
  d = tl.zeros(k.shape, tl.float32)
  for i in tl.static_range(MOMENTA):
    d = tl.where(k == i, _decay_of(i), d)
  return d


@triton.jit
def _raw_features(p, g, m, dormancy, cols):
  """The [BLOCK, 16] feature tile before normalisation; m: the updated momenta in columns 1-12."""
  x = tl.where(cols == 0, p[:, None], dormancy[:, None])
  x = tl.where((cols >= 1) & (cols <= MOMENTA), _sign(m), x)
  x = tl.where((cols > MOMENTA) & (cols <= 2 * MOMENTA), _log_abs(m), x)
  x = tl.where(cols == 2 * MOMENTA + 1, _sign(g)[:, None], x)
  return tl.where(cols == 2 * MOMENTA + 2, _log_abs(g)[:, None], x)


@triton.jit
def _chunk(start_ptr, length_ptr, pid, BLOCK: tl.constexpr):
  """(element offsets [BLOCK] (int64), valid [BLOCK]) of the program's chunk."""
  start = tl.load(start_ptr + pid).to(tl.int64)
  length = tl.load(length_ptr + pid)
  r = tl.arange(0, BLOCK)
  return start + r, r < length


@triton.jit
def _momenta_ptrs(base, P, offs, cols):
  k, shown = _momentum_of_column(cols)
  return base + offs[:, None] + k.to(tl.int64) * P, shown


@triton.jit
def moments_kernel(p_ptr, g_ptr, m_ptr, start_ptr, length_ptr, P, C,
                   m_new_ptr, partial_ptr, BLOCK: tl.constexpr):
  pid = tl.program_id(0)
  b = (pid // C).to(tl.int64)
  offs, valid = _chunk(start_ptr, length_ptr, pid, BLOCK)
  cols = tl.arange(0, F)[None, :]
  g = tl.load(g_ptr + b * P + offs, mask=valid, other=0.0)
  p = tl.load(p_ptr + b * P + offs, mask=valid, other=0.0)
  ptrs, shown = _momenta_ptrs(m_ptr + b * MOMENTA * P, P, offs, cols)
  keep = valid[:, None] & shown
  m = tl.load(ptrs, mask=keep, other=0.0)
  k, _ = _momentum_of_column(cols)
  d = _decay(k)
  m = tl.fma(d, m, (1.0 - d) * g[:, None])  # the CPU kernel's rounding (XLA's fusion)
  new_ptrs, _ = _momenta_ptrs(m_new_ptr + b * MOMENTA * P, P, offs, cols)
  tl.store(new_ptrs, m, mask=valid[:, None] & (cols >= 1) & (cols <= MOMENTA))
  x = _raw_features(p, g, m, tl.zeros_like(p), cols)
  x = tl.where(valid[:, None], x, 0.0)
  tl.store(partial_ptr + pid * F + tl.arange(0, F), tl.sum(x * x, axis=0))


# ----------------------------------------------------------------------------- network

@triton.jit
def _matrix(meta, OFF: tl.constexpr, NR: tl.constexpr, NC: tl.constexpr, R: tl.constexpr,
            CC: tl.constexpr):
  """Zero-padded [R, CC] tile of the row-major (NR, NC) matrix at meta + OFF."""
  r = tl.arange(0, R)[:, None]
  c = tl.arange(0, CC)[None, :]
  return tl.load(meta + OFF + r * NC + c, mask=(r < NR) & (c < NC), other=0.0)


@triton.jit
def _row(meta, OFF: tl.constexpr, N: tl.constexpr, CC: tl.constexpr):
  """meta[OFF : OFF + N] as a zero-padded [1, CC] row."""
  c = tl.arange(0, CC)[None, :]
  return tl.load(meta + OFF + c, mask=c < N, other=0.0)


@triton.jit
def _gate_x(x, meta, KERNEL: tl.constexpr, BIAS: tl.constexpr, HID: tl.constexpr,
            HP: tl.constexpr, training, layer, batch):
  """A gate's input side [BLOCK, HP]: the features (rows 0-14 of its kernel, then the
  dormancy's row) times the kernel, plus the bias and the three proportions (one value per
  tensor) times their rows, in the CPU kernel's order."""
  f = tl.arange(0, F)[:, None]
  j = tl.arange(0, HP)[None, :]
  row = tl.where(f == F - 1, DORMANCY, f)
  kernel = tl.load(meta + KERNEL + row * HID + j, mask=j < HID, other=0.0)
  bias = _row(meta, BIAS, HID, HP)
  bias += training * _row(meta, KERNEL + TRAINING * HID, HID, HP)
  bias += layer * _row(meta, KERNEL + LAYER * HID, HID, HP)
  bias += batch * _row(meta, KERNEL + BATCH * HID, HID, HP)
  return _dot(x, kernel) + bias


@triton.jit
def _dense(y, meta, KERNEL: tl.constexpr, BIAS: tl.constexpr, NI: tl.constexpr,
           NO: tl.constexpr, RI: tl.constexpr, RO: tl.constexpr):
  """y [BLOCK, RI] (columns >= NI zero) times the (NI, NO) kernel plus the bias: [BLOCK, RO]."""
  return _dot(y, _matrix(meta, KERNEL, NI, NO, RI, RO)) + _row(meta, BIAS, NO, RO)


@triton.jit
def _layer_norm_relu(y, meta, SCALE: tl.constexpr, BIAS: tl.constexpr, WID: tl.constexpr):
  """relu(LayerNorm(y)) over the WID columns of y (two-pass variance, as the reference)."""
  mean = tl.sum(y, axis=1) / WID
  y = y - mean[:, None]
  inv = 1.0 / tl.sqrt(tl.sum(y * y, axis=1) / WID + LAYER_NORM_EPS)
  return _relu(y * inv[:, None] * _row(meta, SCALE, WID, WID) + _row(meta, BIAS, WID, WID))


@triton.jit
def network_kernel(meta_ptr, p_ptr, g_ptr, m_new_ptr, carry_ptr, dormancy_ptr, noise_ptr,
                   start_ptr, length_ptr, tensor_ptr, inv_rms_ptr, layer_ptr, actor_ptr,
                   training_ptr, batch_ptr, P, C, T, u_ptr, carry_new_ptr,
                   HID: tl.constexpr, WID: tl.constexpr, HP: tl.constexpr, K: tl.constexpr,
                   BLOCK: tl.constexpr):
  tl.static_assert(K == _offset("size", HID, WID), "K does not match the network")
  tl.static_assert(HP >= HID and HP >= 16 and WID >= 16, "tiles narrower than tl.dot allows")
  pid = tl.program_id(0)
  b = (pid // C).to(tl.int64)
  offs, valid = _chunk(start_ptr, length_ptr, pid, BLOCK)
  t = tl.load(tensor_ptr + pid).to(tl.int64)
  meta = meta_ptr + b * K
  cols = tl.arange(0, F)[None, :]

  # Features, normalised by the tensor's RMS.
  g = tl.load(g_ptr + b * P + offs, mask=valid, other=0.0)
  p = tl.load(p_ptr + b * P + offs, mask=valid, other=0.0)
  dormancy = tl.load(dormancy_ptr + b * P + offs, mask=valid, other=0.0)
  ptrs, shown = _momenta_ptrs(m_new_ptr + b * MOMENTA * P, P, offs, cols)
  m = tl.load(ptrs, mask=valid[:, None] & shown, other=0.0)
  inv_rms = tl.load(inv_rms_ptr + (b * T + t) * F + cols)
  x = _raw_features(p, g, m, dormancy, cols) * inv_rms

  # GRU cell (flax GRUCell): r, z = sigmoid(.), n = tanh(x_n + r (W_hn h + b_hn)).
  training = tl.load(training_ptr + b)
  batch = tl.load(batch_ptr + b)
  layer = tl.load(layer_ptr + b * T + t)
  j = tl.arange(0, HP)[None, :]
  unit = valid[:, None] & (j < HID)
  rows = offs[:, None] + j.to(tl.int64) * P
  h = tl.load(carry_ptr + b * HID * P + rows, mask=unit, other=0.0)
  r = _sigmoid(_gate_x(x, meta, _offset("gru/ir/kernel", HID, WID),
                       _offset("gru/ir/bias", HID, WID), HID, HP, training, layer, batch)
               + _dot(h, _matrix(meta, _offset("gru/hr/kernel", HID, WID), HID, HID, HP, HP)))
  z = _sigmoid(_gate_x(x, meta, _offset("gru/iz/kernel", HID, WID),
                       _offset("gru/iz/bias", HID, WID), HID, HP, training, layer, batch)
               + _dot(h, _matrix(meta, _offset("gru/hz/kernel", HID, WID), HID, HID, HP, HP)))
  hn = _dense(h, meta, _offset("gru/hn/kernel", HID, WID), _offset("gru/hn/bias", HID, WID),
              HID, HID, HP, HP)
  n = _tanh(_gate_x(x, meta, _offset("gru/in/kernel", HID, WID),
                    _offset("gru/in/bias", HID, WID), HID, HP, training, layer, batch) + r * hn)
  h_new = (1.0 - z) * n + z * h
  tl.store(carry_new_ptr + b * HID * P + rows, h_new, mask=unit)

  # LayerNorm MLP and the update.
  y = _dense(h_new, meta, _offset("mlp/dense0/kernel", HID, WID),
             _offset("mlp/dense0/bias", HID, WID), HID, WID, HP, WID)
  y = _layer_norm_relu(y, meta, _offset("mlp/norm0/scale", HID, WID),
                       _offset("mlp/norm0/bias", HID, WID), WID)
  y = _dense(y, meta, _offset("mlp/dense1/kernel", HID, WID),
             _offset("mlp/dense1/bias", HID, WID), WID, WID, WID, WID)
  y = _layer_norm_relu(y, meta, _offset("mlp/norm1/scale", HID, WID),
                       _offset("mlp/norm1/bias", HID, WID), WID)
  out = _dense(y, meta, _offset("mlp/dense2/kernel", HID, WID),
               _offset("mlp/dense2/bias", HID, WID), WID, OUTPUTS, WID, F)
  u = (_column(out, 0) * UPDATE_SCALE) * tl.exp(_column(out, 1) * UPDATE_SCALE)
  if tl.load(actor_ptr + b * T + t) != 0.0:  # the critic's noise is never read
    noise = tl.load(noise_ptr + b * P + offs, mask=valid, other=0.0)
    u = u + (_column(out, 2) * UPDATE_SCALE) * noise
  tl.store(u_ptr + b * P + offs, u, mask=valid)


# ----------------------------------------------------------------------------- launch plan

@dataclasses.dataclass(frozen=True)
class OpenConfig:
  """Elements per chunk (one program each) and warps per program."""
  block: int = 64
  moments_warps: int = 4
  network_warps: int = 4


DEFAULT_OPEN_CONFIG = OpenConfig()


def open_constexprs(hidden: int, width: int, meta_size: int) -> dict:
  """network_kernel's constexprs for a network (GRU hidden size, MLP width)."""
  return dict(HID=hidden, WID=width, HP=max(16, triton.next_power_of_2(hidden)), K=meta_size)


def moments(launch, p, g, momenta, start, length, batch: int, params: int, chunks: int,
            config: OpenConfig = DEFAULT_OPEN_CONFIG):
  """(momenta_new (B, 6, P), partials (B, C, 16)).

  launch(kernel, grid, num_warps, args, out_shapes, **constexprs) runs `kernel` on the
  positional args followed by new float32 outputs of out_shapes, and returns the outputs.
  """
  if batch * chunks == 0:
    raise ValueError("optim4rl.kernels: nothing to launch for an empty problem")
  return launch(moments_kernel, (batch * chunks,), config.moments_warps,
                (p, g, momenta, start, length, params, chunks),
                ((batch, len(DECAYS), params), (batch, chunks, 16)), BLOCK=config.block)


def network(launch, meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor,
            inv_rms, layer, actor, training, batch_proportion, *, hidden: int, width: int,
            batch: int, params: int, chunks: int, tensors: int,
            config: OpenConfig = DEFAULT_OPEN_CONFIG):
  """(u (B, P), carry_new (B, HID, P))."""
  if batch * chunks == 0:
    raise ValueError("optim4rl.kernels: nothing to launch for an empty problem")
  return launch(network_kernel, (batch * chunks,), config.network_warps,
                (meta, p, g, momenta_new, carry, dormancy, noise, start, length, tensor,
                 inv_rms, layer, actor, training, batch_proportion, params, chunks, tensors),
                ((batch, params), (batch, hidden, params)), BLOCK=config.block,
                **open_constexprs(hidden, width, meta.shape[-1]))


__all__ = ["DEFAULT_OPEN_CONFIG", "OpenConfig", "moments", "moments_kernel", "network",
           "network_kernel", "open_constexprs"]
