// Per-element math of every learned update rule: forward, and backward by recomputation.
//
// Shared by the CPU backend (T = a SIMD vector of floats, one lane per parameter) and the
// CUDA backend (T = float, one thread per parameter). Everything is templated on the value
// type T and a math policy M (exp, log, tanh, sqrt, select), so the same source is the
// specification of both. It mirrors optim4rl/reference.py line by line.
//
// Meta-parameters are one flat float array; each GRU+MLP "net" occupies NetLayout<IN,OUT>
// floats in the order of optim4rl.rules.NET_LEAVES. Hidden states are rows of a (rows, P)
// array, 8 rows per net.
//
// The constants, rule ids, nets and layout below are copies of optim4rl/rules (constants.py,
// table.py), the one source of truth: tests/rules/test_constants.py parses this file and asks
// the compiled libraries (py_info.h) and fails on any mismatch.
#pragma once
#include <type_traits>

#if defined(__CUDACC__)
#define O4R_FN __host__ __device__ __forceinline__
#define O4R_CONST __host__ __device__ constexpr
#define O4R_UNROLL _Pragma("unroll")
#else
#define O4R_FN inline __attribute__((always_inline))
#define O4R_CONST constexpr
#define O4R_UNROLL  // GCC's own unrolling measured faster than forced full unrolling
#endif

namespace o4r {

constexpr int H = 8;       // GRU hidden size
constexpr int G = 3 * H;   // gates: reset, update, candidate
constexpr int D1 = 16;     // MLP hidden sizes
constexpr int D2 = 16;

constexpr float kLogEps = 1e-18f;
constexpr float kRootEps = 1e-18f;
constexpr float kPublicRootEps = 1e-8f;
constexpr float kMSignBias = 1.0f;
constexpr float kL2LP = 10.0f;
constexpr float kExpL2LP = 22026.465794806718f;  // e^10
constexpr float kFltMin = 1.1754943508222875e-38f;  // smallest normal float: denormal policy

enum RuleId : int { kOptim4RL = 0, kOptim4RLPublic = 1, kLinearOptim = 2, kL2LGD2 = 3 };

template <int IN, int OUT>
struct NetLayout {
  static constexpr int kIn = IN, kOut = OUT;
  static constexpr int wx = 0;
  static constexpr int wh = wx + IN * G;
  static constexpr int bx = wh + H * G;
  static constexpr int bh = bx + G;
  static constexpr int w1 = bh + G;
  static constexpr int b1 = w1 + H * D1;
  static constexpr int w2 = b1 + D1;
  static constexpr int b2 = w2 + D1 * D2;
  static constexpr int w3 = b2 + D2;
  static constexpr int b3 = w3 + D2 * OUT;
  static constexpr int size = b3 + OUT;
};

// Everything the backward needs from one net's forward.
template <class T, int IN, int OUT>
struct NetTape {
  T x[IN], h[H];                 // inputs
  T r[H], z[H], n[H], hn[H];     // gates; hn = Wh_n h + bh_n
  T h_new[H], a1[D1], a2[D2];    // GRU output and MLP activations (post-ReLU)
  T out[OUT];
};

template <class T, class M>
O4R_FN T relu(T x) { return M::select(x < 0.0f, M::splat(0.0f), x); }  // keeps NaN, as XLA

template <class T, class M>
O4R_FN T sigmoid(T x) { return 1.0f / (1.0f + M::exp(-x)); }

// Forward of one GRU (hidden H) followed by the MLP [D1, D2] -> OUT, recording its tape.
template <class T, class M, int IN, int OUT>
O4R_FN void net_forward(const float* __restrict__ p, NetTape<T, IN, OUT>& t) {
  using L = NetLayout<IN, OUT>;
  T gx[G], gh[G];
O4R_UNROLL
  for (int j = 0; j < G; ++j) {
    T ax = M::splat(p[L::bx + j]);
    T ah = M::splat(p[L::bh + j]);
O4R_UNROLL
    for (int i = 0; i < IN; ++i) ax += t.x[i] * p[L::wx + i * G + j];
O4R_UNROLL
    for (int k = 0; k < H; ++k) ah += t.h[k] * p[L::wh + k * G + j];
    gx[j] = ax;
    gh[j] = ah;
  }
O4R_UNROLL
  for (int j = 0; j < H; ++j) {
    t.r[j] = sigmoid<T, M>(gx[j] + gh[j]);
    t.z[j] = sigmoid<T, M>(gx[H + j] + gh[H + j]);
    t.hn[j] = gh[2 * H + j];
    t.n[j] = M::tanh(gx[2 * H + j] + t.r[j] * t.hn[j]);
    t.h_new[j] = (1.0f - t.z[j]) * t.n[j] + t.z[j] * t.h[j];
  }
O4R_UNROLL
  for (int j = 0; j < D1; ++j) {
    T a = M::splat(p[L::b1 + j]);
O4R_UNROLL
    for (int k = 0; k < H; ++k) a += t.h_new[k] * p[L::w1 + k * D1 + j];
    t.a1[j] = relu<T, M>(a);
  }
O4R_UNROLL
  for (int j = 0; j < D2; ++j) {
    T a = M::splat(p[L::b2 + j]);
O4R_UNROLL
    for (int k = 0; k < D1; ++k) a += t.a1[k] * p[L::w2 + k * D2 + j];
    t.a2[j] = relu<T, M>(a);
  }
O4R_UNROLL
  for (int o = 0; o < OUT; ++o) {
    T a = M::splat(p[L::b3 + o]);
O4R_UNROLL
    for (int k = 0; k < D2; ++k) a += t.a2[k] * p[L::w3 + k * OUT + o];
    t.out[o] = a;
  }
}

// Backward of one net. d_out: cotangent of the MLP output; d_h_new: cotangent of the new
// hidden state (from later steps). Writes the cotangent of the old hidden state to d_h and
// adds the meta-parameter cotangents through acc(index, value) (index into the flat
// meta vector, `base` = this net's offset). Cotangents of the inputs x are not needed:
// the gradient features are under stop-gradient.
template <class T, class M, int IN, int OUT, class Acc>
O4R_FN void net_backward(const float* __restrict__ p, int base, const NetTape<T, IN, OUT>& t,
                         const T* d_out, const T* d_h_new, T* d_h, Acc& acc) {
  using L = NetLayout<IN, OUT>;
  T d2[D2], d1[D1], dhn[H];
O4R_UNROLL
  for (int o = 0; o < OUT; ++o) acc(base + L::b3 + o, d_out[o]);
O4R_UNROLL
  for (int k = 0; k < D2; ++k) {
    T s = M::splat(0.0f);
O4R_UNROLL
    for (int o = 0; o < OUT; ++o) {
      s += d_out[o] * p[L::w3 + k * OUT + o];
      acc(base + L::w3 + k * OUT + o, t.a2[k] * d_out[o]);
    }
    d2[k] = M::select(t.a2[k] > 0.0f, s, M::splat(0.0f));
  }
O4R_UNROLL
  for (int k = 0; k < D1; ++k) {
    T s = M::splat(0.0f);
O4R_UNROLL
    for (int j = 0; j < D2; ++j) {
      s += d2[j] * p[L::w2 + k * D2 + j];
      acc(base + L::w2 + k * D2 + j, t.a1[k] * d2[j]);
    }
    d1[k] = M::select(t.a1[k] > 0.0f, s, M::splat(0.0f));
  }
O4R_UNROLL
  for (int j = 0; j < D2; ++j) acc(base + L::b2 + j, d2[j]);
O4R_UNROLL
  for (int k = 0; k < H; ++k) {
    T s = d_h_new[k];
O4R_UNROLL
    for (int j = 0; j < D1; ++j) {
      s += d1[j] * p[L::w1 + k * D1 + j];
      acc(base + L::w1 + k * D1 + j, t.h_new[k] * d1[j]);
    }
    dhn[k] = s;
  }
O4R_UNROLL
  for (int j = 0; j < D1; ++j) acc(base + L::b1 + j, d1[j]);

  // GRU: h' = (1 - z) n + z h, n = tanh(gx_n + r hn), r = sig(.), z = sig(.).
  T gpx[G], gph[G];  // cotangents of the x-side and h-side gate pre-activations
O4R_UNROLL
  for (int j = 0; j < H; ++j) {
    T dn = dhn[j] * (1.0f - t.z[j]);
    T dz = dhn[j] * (t.h[j] - t.n[j]);
    T dn_pre = dn * (1.0f - t.n[j] * t.n[j]);
    T dr_pre = dn_pre * t.hn[j] * t.r[j] * (1.0f - t.r[j]);
    T dz_pre = dz * t.z[j] * (1.0f - t.z[j]);
    gpx[j] = dr_pre;
    gpx[H + j] = dz_pre;
    gpx[2 * H + j] = dn_pre;
    gph[j] = dr_pre;
    gph[H + j] = dz_pre;
    gph[2 * H + j] = dn_pre * t.r[j];
    d_h[j] = dhn[j] * t.z[j];
  }
O4R_UNROLL
  for (int j = 0; j < G; ++j) {
    acc(base + L::bx + j, gpx[j]);
    acc(base + L::bh + j, gph[j]);
O4R_UNROLL
    for (int i = 0; i < IN; ++i) acc(base + L::wx + i * G + j, t.x[i] * gpx[j]);
  }
O4R_UNROLL
  for (int k = 0; k < H; ++k) {
    T s = d_h[k];
O4R_UNROLL
    for (int j = 0; j < G; ++j) {
      s += gph[j] * p[L::wh + k * G + j];
      acc(base + L::wh + k * G + j, t.h[k] * gph[j]);
    }
    d_h[k] = s;
  }
}

// The denormal policy of every backend (optim4rl.rules.reference.flush_denormal): a gradient
// with |g| < FLT_MIN counts as a zero of its sign. Explicit, so that it holds whatever the
// FPU's mode: the CPU backend runs with DAZ/FTZ, CUDA keeps denormals. g * 0 keeps the sign
// (no -ffast-math anywhere); NaN and +-inf fail the comparison and pass unchanged.
template <class T, class M>
O4R_FN T flush_denormal(T g) {
  T a = M::select(g < 0.0f, -g, g);
  return M::select(a < kFltMin, g * 0.0f, g);
}

// Gradient features shared by the rules.
template <class T, class M>
struct Features {
  T g, sign, log_abs;
  O4R_FN Features(T g_in, float clip) {
    g = g_in;
    if (clip > 0.0f) {  // NaN stays NaN, as jnp.clip
      g = M::select(g > clip, M::splat(clip), g);
      g = M::select(g < -clip, M::splat(-clip), g);
    }
    g = flush_denormal<T, M>(g);
    sign = M::select(g > 0.0f, M::splat(1.0f), M::select(g < 0.0f, M::splat(-1.0f), g));
    log_abs = M::log(M::select(g < 0.0f, -g, g) + kLogEps);
  }
};

// The nets of each rule: (in, out) sizes of optim4rl.rules.Rule.nets. One-net rules carry an
// unused N2 so that Step's members have a type.
template <int RULE> struct RuleNets;
template <> struct RuleNets<kOptim4RL> {
  using N1 = NetLayout<2, 2>; using N2 = NetLayout<1, 1>; static constexpr int kNets = 2;
};
template <> struct RuleNets<kOptim4RLPublic> {
  using N1 = NetLayout<1, 1>; using N2 = NetLayout<1, 1>; static constexpr int kNets = 2;
};
template <> struct RuleNets<kLinearOptim> {
  using N1 = NetLayout<2, 3>; using N2 = NetLayout<1, 1>; static constexpr int kNets = 1;
};
template <> struct RuleNets<kL2LGD2> {
  using N1 = NetLayout<2, 1>; using N2 = NetLayout<1, 1>; static constexpr int kNets = 1;
};

template <int RULE>
O4R_CONST int hidden_rows() { return H * RuleNets<RULE>::kNets; }

template <int RULE>
O4R_CONST int meta_size() {
  return RuleNets<RULE>::N1::size + (RuleNets<RULE>::kNets == 2 ? RuleNets<RULE>::N2::size : 0);
}

// Calls f(std::integral_constant<int, RULE>) for a runtime rule id; false if unknown.
template <class F>
bool dispatch_rule(int rule, F&& f) {
  switch (rule) {
    case kOptim4RL: f(std::integral_constant<int, kOptim4RL>{}); return true;
    case kOptim4RLPublic: f(std::integral_constant<int, kOptim4RLPublic>{}); return true;
    case kLinearOptim: f(std::integral_constant<int, kLinearOptim>{}); return true;
    case kL2LGD2: f(std::integral_constant<int, kL2LGD2>{}); return true;
  }
  return false;
}

inline int meta_size_of(int rule) {
  int size = -1;
  dispatch_rule(rule, [&](auto tag) { size = meta_size<decltype(tag)::value>(); });
  return size;
}

inline int hidden_rows_of(int rule) {
  int rows = -1;
  dispatch_rule(rule, [&](auto tag) { rows = hidden_rows<decltype(tag)::value>(); });
  return rows;
}

// The whole per-element computation of one rule. `forward` sets up the tapes and the
// direction (update at learning rate 1); `backward` needs a prior `forward` on the same
// object and maps (d_direction, d_h_new[rows]) to (d_h[rows], meta cotangents via acc).
template <class T, class M, int RULE>
struct Step {
  using N1 = typename RuleNets<RULE>::N1;
  using N2 = typename RuleNets<RULE>::N2;
  static constexpr int kRows = hidden_rows<RULE>();

  NetTape<T, N1::kIn, N1::kOut> t1;
  NetTape<T, N2::kIn, N2::kOut> t2;
  T g, direction;
  T aux0, aux1, aux2, aux3;  // rule-specific values the backward reuses

  // h: hidden state, kRows values; h_new receives kRows values.
  O4R_FN void forward(const float* __restrict__ p, T g_in, const T* h, T* h_new, float clip) {
    Features<T, M> f(g_in, clip);
    g = f.g;
O4R_UNROLL
    for (int k = 0; k < H; ++k) t1.h[k] = h[k];
    if constexpr (RULE == kOptim4RL) {
      t1.x[0] = f.sign;
      t1.x[1] = f.log_abs;
      t2.x[0] = 2.0f * f.log_abs;
    } else if constexpr (RULE == kOptim4RLPublic) {
      t1.x[0] = f.g;
      t2.x[0] = f.g * f.g;
    } else if constexpr (RULE == kLinearOptim) {
      t1.x[0] = f.sign;
      t1.x[1] = f.log_abs;
    } else {  // kL2LGD2
      T scaled = f.log_abs * (1.0f / kL2LP);
      auto big = scaled >= -1.0f;
      t1.x[0] = M::select(big, scaled, M::splat(-1.0f));
      t1.x[1] = M::select(big, f.sign, f.g * kExpL2LP);
    }
    net_forward<T, M>(p, t1);
    if constexpr (RuleNets<RULE>::kNets == 2) {
O4R_UNROLL
      for (int k = 0; k < H; ++k) t2.h[k] = h[H + k];
      net_forward<T, M>(p + N1::size, t2);
    }
O4R_UNROLL
    for (int k = 0; k < H; ++k) h_new[k] = t1.h_new[k];
    if constexpr (RuleNets<RULE>::kNets == 2) {
O4R_UNROLL
      for (int k = 0; k < H; ++k) h_new[H + k] = t2.h_new[k];
    }

    if constexpr (RULE == kOptim4RL) {
      T tn = M::tanh(t1.out[0] + kMSignBias);
      // Hard sign of tanh (NaN stays NaN, as the straight-through expression does).
      T m_sign = M::select(tn >= 0.0f, M::splat(1.0f), M::select(tn < 0.0f, M::splat(-1.0f), tn));
      T m = f.sign * m_sign * M::exp(t1.out[1]);
      T v = M::exp(t2.out[0]);
      T q = 1.0f / M::sqrt(v + kRootEps);
      direction = -m * q;
      aux0 = tn;
      aux1 = m;
      aux2 = q;
      aux3 = v;
    } else if constexpr (RULE == kOptim4RLPublic) {
      T m = f.sign * M::exp(t1.out[0]);
      T v = M::exp(t2.out[0]);
      T q = 1.0f / M::sqrt(v + kPublicRootEps);
      direction = -m * q;
      aux1 = m;
      aux2 = q;
      aux3 = v;
    } else if constexpr (RULE == kLinearOptim) {
      aux0 = M::exp(t1.out[0]);
      aux1 = M::exp(t1.out[1]);
      direction = -(aux0 * f.g + aux1 * t1.out[2]);
    } else {
      direction = -M::exp(t1.out[0]) * f.g;
    }
  }

  template <class Acc>
  O4R_FN void backward(const float* __restrict__ p, T d_dir, const T* d_h_new, T* d_h, Acc& acc) {
    T d1[N1::kOut], d2[N2::kOut];
    if constexpr (RULE == kOptim4RL || RULE == kOptim4RLPublic) {
      // direction = -m q, q = (v + eps)^-1/2, v = exp(o_v): d o_v = d_dir m q^3 v / 2.
      T m = aux1, q = aux2, v = aux3;
      T d_m = -q * d_dir;
      d2[0] = 0.5f * d_dir * m * q * q * q * v;
      if constexpr (RULE == kOptim4RL) {
        // m = sign * m_sign * exp(o2); m_sign straight-through of tanh(o1 + b).
        T sign_exp = M::select(aux0 >= 0.0f, m, -m);  // sign * exp(o2) = m / m_sign
        d1[1] = d_m * m;
        d1[0] = d_m * sign_exp * (1.0f - aux0 * aux0);
      } else {
        d1[0] = d_m * m;
      }
    } else if constexpr (RULE == kLinearOptim) {
      d1[0] = -d_dir * aux0 * g;
      d1[1] = -d_dir * aux1 * t1.out[2];
      d1[2] = -d_dir * aux1;
    } else {
      d1[0] = d_dir * direction;
    }
    net_backward<T, M>(p, 0, t1, d1, d_h_new, d_h, acc);
    if constexpr (RuleNets<RULE>::kNets == 2) {
      net_backward<T, M>(p + N1::size, N1::size, t2, d2, d_h_new + H, d_h + H, acc);
    }
  }
};

}  // namespace o4r
