"""Triton kernels of the fused learned-optimizer step, and the launch plan that runs them.

Layout (structure of arrays, as every backend): gradients g (B, P), hidden states h (B, ROWS, P)
with row r of parameter i at r * P + i, meta-parameters flat (B, K) in the order of
optim4rl.rules.NET_LEAVES. B is a batch of independent problems (vmap), 1 when unbatched.

A program works on BLOCK parameters of one batch entry. Per-parameter scalars (g, the
direction) are [BLOCK] vectors; the hidden units of a layer are the columns of a [BLOCK, 16]
tile (GRU tiles use 8 of the 16 columns, the rest stays exactly zero), and every layer is a
`tl.dot` with a zero-padded 16 x 16 weight tile, in full fp32 (input_precision="ieee").
Why tiles and not one vector per hidden unit with scalar weight loads: that unrolled form
is ~10^4 MLIR ops per kernel, and Triton's coalescing pass is quadratic in it (compiling
for sm_90 on a 2-core machine: 98 s for the smallest rule's backward, over 15 min for
Optim4RL's); the tiles keep each kernel at a few hundred ops (seconds to compile). The
math mirrors optim4rl/rules/reference.py.

Net sizes come from the caller: the launch plan passes each rule's (in, out) sizes from
optim4rl.rules.Rule.nets as constexprs (`rule_constexprs`), and the kernels check them
against the inputs and outputs each rule's math has. The constants below are copies of
optim4rl/rules/constants.py (this module does not import optim4rl, and so not JAX);
tests/rules/test_constants.py checks them, the rule ids and `_leaf` against the rules.

Backward recomputes the forward from the inputs (no tape in memory). The meta cotangent of
a block is a handful of dots (a tape tile transposed times a cotangent tile: the sum over
the block's parameters). Each backward program walks a fixed, strided set of blocks and
keeps those sums in registers, then writes one row of `partials` (B, programs, K);
`reduce_kernel` adds the rows in row order. No atomics, and the split depends only on P:
the meta gradient is bitwise repeatable.

The launch plan (`forward`, `backward`) is written once against a `launch` callback, so the
JAX wiring (jax_triton) and the CPU tests (torch tensors, TRITON_INTERPRET=1) share it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import triton
import triton.language as tl

# Sizes and constants: copies of optim4rl.rules.constants (checked by tests/rules).
H = tl.constexpr(8)        # GRU hidden size
G = tl.constexpr(24)       # GRU gates: reset, update, candidate
D1 = tl.constexpr(16)      # MLP hidden sizes
D2 = tl.constexpr(16)
W = tl.constexpr(16)       # tile width: every layer is padded to 16 units
LOG_EPS = tl.constexpr(1e-18)
ROOT_EPS = tl.constexpr(1e-18)
PUBLIC_ROOT_EPS = tl.constexpr(1e-8)
M_SIGN_BIAS = tl.constexpr(1.0)
L2L_P = tl.constexpr(10.0)
EXP_L2L_P = tl.constexpr(22026.465794806718)  # e^10, rounds to float32(jnp.exp(10.0))
FLT_MIN = tl.constexpr(1.1754943508222875e-38)  # smallest normal float32: denormal policy

# Rule ids (optim4rl.rules.Rule.kernel_id): which per-element math a kernel runs.
OPTIM4RL = tl.constexpr(0)
OPTIM4RL_PUBLIC = tl.constexpr(1)
LINEAR_OPTIM = tl.constexpr(2)
L2LGD2 = tl.constexpr(3)


# ----------------------------------------------------------------------------- layout

@triton.constexpr_function
def offset_in(sizes, name):
  """Offset of leaf `name` in a flat vector laid out as `sizes`, ((leaf, size), ...)."""
  offset = 0
  for leaf, size in sizes:
    if leaf == name:
      return offset
    offset += size
  raise ValueError(name)


@triton.constexpr_function
def _leaf(name, n_in, n_out):
  """Offset of a leaf inside one net's slice of the flat meta vector (rules.NET_LEAVES)."""
  return offset_in((("wx", n_in * G), ("wh", H * G), ("bx", G), ("bh", G), ("w1", H * D1),
                    ("b1", D1), ("w2", D1 * D2), ("b2", D2), ("w3", D2 * n_out), ("b3", n_out),
                    ("end", 0)), name)


# ----------------------------------------------------------------------------- elementwise math

@triton.jit
def _sigmoid(x):
  return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
  # Triton has no portable tanh (libdevice does not run in the interpreter). Odd Taylor
  # series below 0.3 (error < 1e-8 relative), (1 - e) / (1 + e) with e = exp(-2|x|) above;
  # +-inf -> +-1 and NaN -> NaN as tanh.
  x2 = x * x
  small = x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * (
      -0.05396825396825397 + x2 * (0.021869488536155203 + x2 * -0.008863235529902197)))))
  e = tl.exp(-2.0 * tl.abs(x))
  big = (1.0 - e) / (1.0 + e)
  big = tl.where(x < 0.0, -big, big)
  return tl.where(tl.abs(x) < 0.3, small, big)


@triton.jit
def _relu(x):
  return tl.where(x < 0.0, 0.0, x)  # keeps NaN, as jax.nn.relu (tl.maximum would drop it)


@triton.jit
def _dot(a, b):
  return tl.dot(a, b, input_precision="ieee")  # true fp32, no TF32 rounding


# ----------------------------------------------------------------------------- tiles

@triton.jit
def _vec(p, OFF: tl.constexpr, N: tl.constexpr):
  """p[OFF : OFF + N] as a zero-padded [1, W] row."""
  c = tl.arange(0, W)
  return tl.load(p + OFF + c, mask=c < N, other=0.0)[None, :]


@triton.jit
def _mat(p, OFF: tl.constexpr, STRIDE: tl.constexpr, NR: tl.constexpr, NC: tl.constexpr):
  """Zero-padded [W, W] tile of the row-major matrix p[OFF + r * STRIDE + c], r < NR, c < NC."""
  r = tl.arange(0, W)[:, None]
  c = tl.arange(0, W)[None, :]
  return tl.load(p + OFF + r * STRIDE + c, mask=(r < NR) & (c < NC), other=0.0)


@triton.jit
def _store_mat(p, OFF: tl.constexpr, STRIDE: tl.constexpr, NR: tl.constexpr, NC: tl.constexpr,
               tile):
  r = tl.arange(0, W)[:, None]
  c = tl.arange(0, W)[None, :]
  tl.store(p + OFF + r * STRIDE + c, tile, mask=(r < NR) & (c < NC))


@triton.jit
def _row(tile, k: tl.constexpr):
  return tl.sum(tl.where(tl.arange(0, W)[:, None] == k, tile, 0.0), axis=0)


@triton.jit
def _column(tile, k: tl.constexpr):
  return tl.sum(tl.where(tl.arange(0, W)[None, :] == k, tile, 0.0), axis=1)


@triton.jit
def _hidden_ptrs(base, P, offs, ROW0: tl.constexpr):
  """Pointers to hidden rows ROW0 .. ROW0 + W - 1 of the block as a [BLOCK, W] tile.
  64-bit: row * P exceeds 2^31 for large P."""
  rows = ROW0 + tl.arange(0, W)
  return base + offs[:, None] + rows.to(tl.int64)[None, :] * P


@triton.jit
def _load_hidden(base, P, offs, mask, ROW0: tl.constexpr):
  keep = mask[:, None] & (tl.arange(0, W) < H)[None, :]
  return tl.load(_hidden_ptrs(base, P, offs, ROW0), mask=keep, other=0.0)


@triton.jit
def _store_hidden(base, P, offs, mask, ROW0: tl.constexpr, tile):
  keep = mask[:, None] & (tl.arange(0, W) < H)[None, :]
  tl.store(_hidden_ptrs(base, P, offs, ROW0), tile, mask=keep)


# ----------------------------------------------------------------------------- one GRU+MLP net

@triton.jit
def _net_forward(p, x, h, IN: tl.constexpr, OUT: tl.constexpr):
  """GRU (gates r, z, n) then MLP [16, 16] with ReLU. x: IN [BLOCK] vectors; h: [BLOCK, W]
  (columns >= H zero). Returns the tape (r, z, n, hn, h_new, a1, a2, out) of [BLOCK, W]
  tiles; columns >= H of h_new and >= OUT of out are exactly zero."""
  WH: tl.constexpr = _leaf("wh", IN, OUT)
  BX: tl.constexpr = _leaf("bx", IN, OUT)
  BH: tl.constexpr = _leaf("bh", IN, OUT)
  unit = tl.arange(0, W)[None, :] < H
  pre_x = ()  # per gate: x-side pre-activation, and the h-side one
  pre_h = ()
  for q in tl.static_range(3):
    gx = _vec(p, BX + q * H, H)
    for i in tl.static_range(IN):
      gx += x[i][:, None] * _vec(p, i * G + q * H, H)
    pre_x += (tl.where(unit, gx, 0.0),)  # padding columns: inf * 0 would be NaN
    pre_h += (_dot(h, _mat(p, WH + q * H, G, H, H)) + _vec(p, BH + q * H, H),)
  r = _sigmoid(pre_x[0] + pre_h[0])
  z = _sigmoid(pre_x[1] + pre_h[1])
  hn = pre_h[2]
  n = _tanh(pre_x[2] + r * hn)
  h_new = (1.0 - z) * n + z * h
  w1 = _mat(p, _leaf("w1", IN, OUT), D1, H, D1)
  a1 = _relu(_dot(h_new, w1) + _vec(p, _leaf("b1", IN, OUT), D1))
  w2 = _mat(p, _leaf("w2", IN, OUT), D2, D1, D2)
  a2 = _relu(_dot(a1, w2) + _vec(p, _leaf("b2", IN, OUT), D2))
  out = _dot(a2, _mat(p, _leaf("w3", IN, OUT), OUT, D2, OUT)) + _vec(p, _leaf("b3", IN, OUT), OUT)
  return r, z, n, hn, h_new, a1, a2, out


@triton.jit
def _net_backward(p, keep, x, h, tape, d_out, d_h_new, IN: tl.constexpr, OUT: tl.constexpr):
  """(d_h [BLOCK, W], meta cotangent summed over the block) from the cotangents of the net
  output (OUT vectors) and of h_new ([BLOCK, W]). keep: [BLOCK, 1] valid parameters.

  The meta cotangent is 7 [W, W] tiles: w3, w2, w1, wh of gates r, z, n, and `vecs`, whose
  rows hold the vectors b3, b2, b1, bx (3 gates), bh (3 gates), wx (per input, 3 gates);
  `_store_grads` writes them to their places in the flat layout."""
  r, z, n, hn, h_new, a1, a2, _ = tape
  rows = tl.arange(0, W)[:, None]
  cols = tl.arange(0, W)[None, :]
  d_o = tl.zeros_like(h)
  for o in tl.static_range(OUT):
    d_o += tl.where(cols == o, d_out[o][:, None], 0.0)
  d_o = tl.where(keep, d_o, 0.0)  # padding lanes: their cotangents may be inf * 0
  w3 = _mat(p, _leaf("w3", IN, OUT), OUT, D2, OUT)
  w2 = _mat(p, _leaf("w2", IN, OUT), D2, D1, D2)
  w1 = _mat(p, _leaf("w1", IN, OUT), D1, H, D1)
  d2 = tl.where(a2 > 0.0, _dot(d_o, tl.trans(w3)), 0.0)  # as jax.nn.relu's derivative
  d1 = tl.where(a1 > 0.0, _dot(d2, tl.trans(w2)), 0.0)
  dhn = d_h_new + _dot(d1, tl.trans(w1))  # cotangent of h_new: MLP and later steps
  vecs = (tl.where(rows == 0, tl.sum(d_o, axis=0)[None, :], 0.0)
          + tl.where(rows == 1, tl.sum(d2, axis=0)[None, :], 0.0)
          + tl.where(rows == 2, tl.sum(d1, axis=0)[None, :], 0.0))
  # GRU: h' = (1 - z) n + z h, n = tanh(gx_n + r hn), r = sig(gx_r + gh_r), z = sig(gx_z + gh_z).
  dn = dhn * (1.0 - z) * (1.0 - n * n)
  dr = dn * hn * r * (1.0 - r)
  dz = dhn * (h - n) * z * (1.0 - z)
  d_pre_x = (dr, dz, dn)           # cotangents of the x-side gate pre-activations
  d_pre_h = (dr, dz, dn * r)       # and of the h-side ones (hn = Wh_n h + bh_n)
  d_h = dhn * z
  d_wh = ()
  for q in tl.static_range(3):
    wh = _mat(p, _leaf("wh", IN, OUT) + q * H, G, H, H)
    d_h += _dot(d_pre_h[q], tl.trans(wh))
    d_wh += (_dot(tl.trans(h), d_pre_h[q]),)
    vecs += tl.where(rows == 3 + q, tl.sum(d_pre_x[q], axis=0)[None, :], 0.0)
    vecs += tl.where(rows == 6 + q, tl.sum(d_pre_h[q], axis=0)[None, :], 0.0)
    for i in tl.static_range(IN):
      d_wx = tl.sum(x[i][:, None] * d_pre_x[q], axis=0)
      vecs += tl.where(rows == 9 + 3 * i + q, d_wx[None, :], 0.0)
  grads = (_dot(tl.trans(a2), d_o), _dot(tl.trans(a1), d2), _dot(tl.trans(h_new), d1),
           d_wh[0], d_wh[1], d_wh[2], vecs)
  return d_h, grads


@triton.jit
def _zero_grads():
  zero = tl.zeros([W, W], tl.float32)
  return zero, zero, zero, zero, zero, zero, zero


@triton.jit
def _add_grads(a, b):
  return a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5], a[6] + b[6]


@triton.jit
def _store_grads(part, grads, IN: tl.constexpr, OUT: tl.constexpr):
  """Write the tiles of `_net_backward` into one net's slice of a flat meta vector."""
  w3, w2, w1, wh_r, wh_z, wh_n, vecs = grads
  _store_mat(part, _leaf("w3", IN, OUT), OUT, D2, OUT, w3)
  _store_mat(part, _leaf("w2", IN, OUT), D2, D1, D2, w2)
  _store_mat(part, _leaf("w1", IN, OUT), D1, H, D1, w1)
  _store_mat(part, _leaf("wh", IN, OUT), G, H, H, wh_r)
  _store_mat(part, _leaf("wh", IN, OUT) + H, G, H, H, wh_z)
  _store_mat(part, _leaf("wh", IN, OUT) + 2 * H, G, H, H, wh_n)
  c = tl.arange(0, W)
  tl.store(part + _leaf("b3", IN, OUT) + c, _row(vecs, 0), mask=c < OUT)
  tl.store(part + _leaf("b2", IN, OUT) + c, _row(vecs, 1), mask=c < D2)
  tl.store(part + _leaf("b1", IN, OUT) + c, _row(vecs, 2), mask=c < D1)
  for q in tl.static_range(3):
    tl.store(part + _leaf("bx", IN, OUT) + q * H + c, _row(vecs, 3 + q), mask=c < H)
    tl.store(part + _leaf("bh", IN, OUT) + q * H + c, _row(vecs, 6 + q), mask=c < H)
    for i in tl.static_range(IN):
      tl.store(part + i * G + q * H + c, _row(vecs, 9 + 3 * i + q), mask=c < H)


# ----------------------------------------------------------------------------- the four rules

@triton.jit
def _rule_inputs(g, clip, RULE: tl.constexpr):
  """Clipped gradient, its sign, and the inputs of net 1 and net 2 (as reference.step);
  no second net: x2 = ()."""
  clipped = tl.where(g > clip, clip, g)  # NaN stays NaN, as jnp.clip
  clipped = tl.where(clipped < -clip, -clip, clipped)
  g = tl.where(clip > 0.0, clipped, g)
  # The denormal policy (reference.flush_denormal): |g| < FLT_MIN is a zero of g's sign,
  # explicitly, whatever the GPU's or the interpreter's denormal mode.
  g = tl.where(tl.abs(g) < FLT_MIN, g * 0.0, g)
  sign = tl.where(g > 0.0, 1.0, tl.where(g < 0.0, -1.0, g))  # jnp.sign: 0 -> 0, NaN -> NaN
  log_abs = tl.log(tl.abs(g) + LOG_EPS)
  tl.static_assert(RULE == OPTIM4RL or RULE == OPTIM4RL_PUBLIC or RULE == LINEAR_OPTIM
                   or RULE == L2LGD2, "optim4rl.kernels: unknown rule id")
  if RULE == OPTIM4RL:
    x1 = (sign, log_abs)
    x2 = (2.0 * log_abs,)
  elif RULE == OPTIM4RL_PUBLIC:
    x1 = (g,)
    x2 = (g * g,)
  elif RULE == LINEAR_OPTIM:
    x1 = (sign, log_abs)
    x2 = ()
  else:  # L2L preprocessing: |g| >= e^-p -> (log|g| / p, sign g), else (-1, e^p g)
    scaled = log_abs / L2L_P
    big = scaled >= -1.0
    x1 = (tl.where(big, scaled, -1.0), tl.where(big, sign, EXP_L2L_P * g))
    x2 = ()
  return g, sign, x1, x2


@triton.jit
def _direction(g, sign, o1, o2, RULE: tl.constexpr):
  """The update at learning rate 1 from the outputs o1 (net 1) and o2 (net 2), as vectors."""
  if RULE == OPTIM4RL:
    t = _tanh(o1[0] + M_SIGN_BIAS)
    m_sign = tl.where(t >= 0.0, 1.0, tl.where(t < 0.0, -1.0, t))  # hard sign, NaN stays NaN
    return -(sign * m_sign * tl.exp(o1[1])) / tl.sqrt(tl.exp(o2[0]) + ROOT_EPS)
  elif RULE == OPTIM4RL_PUBLIC:
    return -sign * tl.exp(o1[0]) / tl.sqrt(tl.exp(o2[0]) + PUBLIC_ROOT_EPS)
  elif RULE == LINEAR_OPTIM:
    return -(tl.exp(o1[0]) * g + tl.exp(o1[1]) * o1[2])
  else:
    return -tl.exp(o1[0]) * g


@triton.jit
def _direction_backward(g, sign, o1, o2, d_dir, RULE: tl.constexpr):
  """Cotangents (d_o1, d_o2) of the net outputs from that of the direction."""
  if RULE == OPTIM4RL or RULE == OPTIM4RL_PUBLIC:
    # direction = -m q, q = (v + eps)^-1/2, v = exp(o2[0]): d o2 = d_dir m q^3 v / 2.
    if RULE == OPTIM4RL:
      t = _tanh(o1[0] + M_SIGN_BIAS)
      e = tl.exp(o1[1])
      m = sign * tl.where(t >= 0.0, 1.0, tl.where(t < 0.0, -1.0, t)) * e
      v = tl.exp(o2[0])
      q = 1.0 / tl.sqrt(v + ROOT_EPS)
    else:
      m = sign * tl.exp(o1[0])
      v = tl.exp(o2[0])
      q = 1.0 / tl.sqrt(v + PUBLIC_ROOT_EPS)
    d_m = -q * d_dir
    d2 = (0.5 * d_dir * m * q * q * q * v,)
    if RULE == OPTIM4RL:
      # m_sign is straight-through: its cotangent passes to tanh(o1[0] + b) unchanged.
      d1 = (d_m * sign * e * (1.0 - t * t), d_m * m)
    else:
      d1 = (d_m * m,)
  elif RULE == LINEAR_OPTIM:
    a = tl.exp(o1[0])
    b = tl.exp(o1[1])
    d1 = (-d_dir * a * g, -d_dir * b * o1[2], -d_dir * b)
    d2 = ()  # one net
  else:
    d1 = (-d_dir * tl.exp(o1[0]) * g,)
    d2 = ()  # one net
  return d1, d2


@triton.jit
def _outputs(out, OUT: tl.constexpr):
  o = ()
  for k in tl.static_range(OUT):
    o += (_column(out, k),)
  return o


# ----------------------------------------------------------------------------- kernels

@triton.jit
def _check_sizes(IN1: tl.constexpr, OUT1: tl.constexpr, IN2: tl.constexpr, OUT2: tl.constexpr,
                 ROWS: tl.constexpr, K: tl.constexpr):
  """The caller's sizes (from optim4rl.rules.Rule) against this module's layout."""
  tl.static_assert(ROWS == (2 * H if IN2 > 0 else H), "optim4rl.kernels: ROWS != H * nets")
  tl.static_assert(K == _leaf("end", IN1, OUT1) + (_leaf("end", IN2, OUT2) if IN2 > 0 else 0),
                   "optim4rl.kernels: K is not the meta size of the nets (IN1, OUT1, IN2, OUT2)")
  tl.static_assert((D1 == W) and (D2 == W))
  tl.static_assert((OUT1 <= W) and (OUT2 <= W) and (OUT1 > 0) and (IN1 > 0))


@triton.jit
def forward_kernel(meta_ptr, g_ptr, h_ptr, P, clip, n_blocks, dir_ptr, h_new_ptr,
                   RULE: tl.constexpr, IN1: tl.constexpr, OUT1: tl.constexpr,
                   IN2: tl.constexpr, OUT2: tl.constexpr, ROWS: tl.constexpr, K: tl.constexpr,
                   BLOCK: tl.constexpr):
  """direction (B, P) and h_new (B, ROWS, P); grid = B * n_blocks, one block per program.
  Net sizes (in, out) of the rule's nets: IN2 = OUT2 = 0 when it has one net."""
  _check_sizes(IN1, OUT1, IN2, OUT2, ROWS, K)
  S1: tl.constexpr = _leaf("end", IN1, OUT1)
  pid = tl.program_id(0)
  b = (pid // n_blocks).to(tl.int64)
  offs = (pid % n_blocks).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
  mask = offs < P
  p = meta_ptr + b * K
  h_base = h_ptr + b * ROWS * P
  h_new_base = h_new_ptr + b * ROWS * P
  g, sign, x1, x2 = _rule_inputs(tl.load(g_ptr + b * P + offs, mask=mask, other=0.0), clip, RULE)
  tl.static_assert(len(x1) == IN1 and len(x2) == IN2, "optim4rl.kernels: net inputs != IN1, IN2")
  t1 = _net_forward(p, x1, _load_hidden(h_base, P, offs, mask, 0), IN1, OUT1)
  _store_hidden(h_new_base, P, offs, mask, 0, t1[4])
  o1 = _outputs(t1[7], OUT1)
  o2 = o1  # unused unless there is a second net
  if IN2 > 0:
    t2 = _net_forward(p + S1, x2, _load_hidden(h_base, P, offs, mask, H), IN2, OUT2)
    _store_hidden(h_new_base, P, offs, mask, H, t2[4])
    o2 = _outputs(t2[7], OUT2)
  tl.store(dir_ptr + b * P + offs, _direction(g, sign, o1, o2, RULE), mask=mask)


@triton.jit
def backward_kernel(meta_ptr, g_ptr, h_ptr, d_dir_ptr, d_h_new_ptr, P, clip, n_blocks, programs,
                    partials_ptr, d_h_ptr, RULE: tl.constexpr, IN1: tl.constexpr,
                    OUT1: tl.constexpr, IN2: tl.constexpr, OUT2: tl.constexpr,
                    ROWS: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr):
  """d_h (B, ROWS, P) and partials (B, programs, K); grid = B * programs. Program j of a
  batch entry handles blocks j, j + programs, ... and writes their summed meta cotangent."""
  _check_sizes(IN1, OUT1, IN2, OUT2, ROWS, K)
  S1: tl.constexpr = _leaf("end", IN1, OUT1)
  pid = tl.program_id(0)
  b = (pid // programs).to(tl.int64)
  p = meta_ptr + b * K
  h_base = h_ptr + b * ROWS * P
  dhn_base = d_h_new_ptr + b * ROWS * P
  dh_base = d_h_ptr + b * ROWS * P
  acc1 = _zero_grads()
  acc2 = _zero_grads()
  for blk in range(pid % programs, n_blocks, programs):
    offs = blk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)  # blk * BLOCK < P: no overflow
    mask = offs < P
    d_dir = tl.load(d_dir_ptr + b * P + offs, mask=mask, other=0.0)
    g, sign, x1, x2 = _rule_inputs(tl.load(g_ptr + b * P + offs, mask=mask, other=0.0), clip,
                                   RULE)
    tl.static_assert(len(x1) == IN1 and len(x2) == IN2, "optim4rl.kernels: inputs != IN1, IN2")
    h1 = _load_hidden(h_base, P, offs, mask, 0)
    t1 = _net_forward(p, x1, h1, IN1, OUT1)
    o1 = _outputs(t1[7], OUT1)
    if IN2 > 0:
      h2 = _load_hidden(h_base, P, offs, mask, H)
      t2 = _net_forward(p + S1, x2, h2, IN2, OUT2)
      d1, d2 = _direction_backward(g, sign, o1, _outputs(t2[7], OUT2), d_dir, RULE)
      tl.static_assert(len(d1) == OUT1 and len(d2) == OUT2, "optim4rl.kernels: outputs != OUT")
      d_h2, grads2 = _net_backward(p + S1, mask[:, None], x2, h2, t2, d2,
                                   _load_hidden(dhn_base, P, offs, mask, H), IN2, OUT2)
      _store_hidden(dh_base, P, offs, mask, H, d_h2)
      acc2 = _add_grads(acc2, grads2)
    else:
      d1, d2 = _direction_backward(g, sign, o1, o1, d_dir, RULE)
      tl.static_assert(len(d1) == OUT1 and len(d2) == 0, "optim4rl.kernels: outputs != OUT")
    d_h1, grads1 = _net_backward(p, mask[:, None], x1, h1, t1, d1,
                                 _load_hidden(dhn_base, P, offs, mask, 0), IN1, OUT1)
    _store_hidden(dh_base, P, offs, mask, 0, d_h1)
    acc1 = _add_grads(acc1, grads1)
  part = partials_ptr + pid.to(tl.int64) * K  # row (b, pid % programs) of (B, programs, K)
  _store_grads(part, acc1, IN1, OUT1)
  if IN2 > 0:
    _store_grads(part + S1, acc2, IN2, OUT2)


@triton.jit
def reduce_kernel(src_ptr, rows, n_out, dst_ptr, K: tl.constexpr, ROWS: tl.constexpr,
                  COLS: tl.constexpr):
  """dst[b, j, :] = sum of src[b, j * ROWS + i, :] for i = 0, 1, ... in that order.
  src (B, rows, K), dst (B, n_out, K), n_out = cdiv(rows, ROWS);
  grid = B * n_out * cdiv(K, COLS)."""
  N_COL_BLOCKS: tl.constexpr = (K + COLS - 1) // COLS
  pid = tl.program_id(0)
  cols = (pid % N_COL_BLOCKS) * COLS + tl.arange(0, COLS)
  j = (pid // N_COL_BLOCKS) % n_out
  b = (pid // N_COL_BLOCKS // n_out).to(tl.int64)
  first = j * ROWS
  src = src_ptr + (b * rows + first) * K + cols
  acc = tl.zeros([COLS], tl.float32)
  for _ in range(tl.minimum(rows - first, ROWS)):
    acc += tl.load(src, mask=cols < K, other=0.0)
    src += K
  tl.store(dst_ptr + (b * n_out + j) * K + cols, acc, mask=cols < K)


# ----------------------------------------------------------------------------- launch plan

@dataclasses.dataclass(frozen=True)
class Config:
  """Block sizes, warps, and the number of backward programs per batch entry (each keeps
  its meta cotangent in registers; more programs means more partial rows to add).

  Chosen from ptxas' resource usage for sm_90 (not yet from timings): the largest blocks
  that compile without register spills for every rule (Optim4RL: forward 168 registers,
  backward 210; the backward holds two nets' tapes and their meta-cotangent tiles)."""
  forward_block: int = 64
  forward_warps: int = 4
  backward_block: int = 16
  backward_warps: int = 8
  backward_programs: int = 1024
  reduce_rows: int = 32
  reduce_cols: int = 128


DEFAULT_CONFIG = Config()


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def rule_constexprs(rule) -> dict:
  """The constexprs of forward_kernel/backward_kernel for `rule` (an optim4rl.rules.Rule,
  or anything with its kernel_id, nets, hidden_rows and meta_size): the net sizes come from
  the rule table, the one source; the kernels check them against their own layout."""
  if not 1 <= len(rule.nets) <= 2:
    raise ValueError(f"optim4rl.kernels: rules have one or two nets, got {rule.nets}")
  (in1, out1), (in2, out2) = rule.nets[0], (rule.nets[1] if len(rule.nets) == 2 else (0, 0))
  return dict(RULE=rule.kernel_id, IN1=in1, OUT1=out1, IN2=in2, OUT2=out2,
              ROWS=rule.hidden_rows, K=rule.meta_size)


def forward(launch, rule, meta, g, h, clip: float, batch: int, params: int,
            config: Config = DEFAULT_CONFIG):
  """(direction (B, P), h_new (B, ROWS, P)) of `rule` (an optim4rl.rules.Rule).

  launch(kernel, grid, num_warps, args, out_shapes, **constexprs) runs `kernel` on the
  positional args followed by new float32 outputs of out_shapes, and returns the outputs.
  """
  if batch * params == 0:
    raise ValueError("optim4rl.kernels: nothing to launch for an empty problem")
  n_blocks = cdiv(params, config.forward_block)
  return launch(forward_kernel, (batch * n_blocks,), config.forward_warps,
                (meta, g, h, params, np.float32(clip), n_blocks),
                ((batch, params), (batch, rule.hidden_rows, params)),
                BLOCK=config.forward_block, **rule_constexprs(rule))


def backward(launch, rule, meta, g, h, d_dir, d_h_new, clip: float, batch: int, params: int,
             config: Config = DEFAULT_CONFIG):
  """(d_meta (B, K), d_h (B, ROWS, P)); the cotangent of g is zero by definition."""
  if batch * params == 0:
    raise ValueError("optim4rl.kernels: nothing to launch for an empty problem")
  n_blocks = cdiv(params, config.backward_block)
  programs = min(n_blocks, config.backward_programs)
  partials, d_h = launch(
      backward_kernel, (batch * programs,), config.backward_warps,
      (meta, g, h, d_dir, d_h_new, params, np.float32(clip), n_blocks, programs),
      ((batch, programs, rule.meta_size), (batch, rule.hidden_rows, params)),
      BLOCK=config.backward_block, **rule_constexprs(rule))
  rows = programs
  while rows > 1:
    n_out = cdiv(rows, config.reduce_rows)
    (partials,) = launch(reduce_kernel,
                         (batch * n_out * cdiv(rule.meta_size, config.reduce_cols),), 4,
                         (partials, rows, n_out), ((batch, n_out, rule.meta_size),),
                         K=rule.meta_size, ROWS=config.reduce_rows, COLS=config.reduce_cols)
    rows = n_out
  return partials.reshape(batch, rule.meta_size), d_h
