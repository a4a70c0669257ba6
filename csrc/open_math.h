// Per-element math of OPEN (optim4rl/rules/open.py): momenta, features, the GRU cell and the
// LayerNorm MLP, and the update before the mean over all tensors is taken out.
//
// Templated, as optim4rl_math.h, on the value type T (one SIMD lane or one thread per
// element) and a math policy M (exp, log, tanh, sqrt, select, fma), and on the network's
// sizes: GRU hidden size HID and MLP width WID (8, 16: the default network; 16, 32: the
// larger one). Meta-parameters are the published flat vector (OpenLayout); the per-tensor
// normalisation is folded into a copy of the GRU's input weights per tensor (TensorWeights),
// so an element only needs its raw features.
//
// The constants and the layout are copies of optim4rl/rules/open.py, the one source of truth:
// tests/rules/test_constants.py parses this file and asks the compiled library (open_py_info.h).
#pragma once
#include <cstdint>

#include "optim4rl_math.h"

// Full unrolling on the CPU: the network's accumulators then stay in registers (measured
// about 5% faster for the default network than GCC's own choice, the same for the larger).
#if defined(__CUDACC__)
#define OPEN_UNROLL O4R_UNROLL
#else
#define OPEN_UNROLL _Pragma("GCC unroll 64")
#endif

namespace o4r::open {

constexpr int kMomenta = 6;
constexpr float kLogEps = 1e-13f;        // inside log(|m| + eps) and log(|g| + eps)
constexpr float kNormEps = 1e-5f;        // under the root of the per-tensor RMS
constexpr float kLayerNormEps = 1e-6f;
constexpr float kUpdateScale = 0.001f;   // of o0, inside exp of o1, of the noise's o2
constexpr int kNormalised = 15;  // p, 6 signs, 6 logs, sign g, log g
constexpr int kFeatures = 19;    // ... then training, layer, batch proportion, dormancy (raw)
constexpr int kOutputs = 3;
constexpr int kTraining = 15, kLayer = 16, kBatch = 17, kDormancy = 18;  // feature indices

// Offsets in the published flat vector: the flax dict {"gru_params", "params"} flattened with
// sorted keys, bias before kernel/scale, kernels (in, out) row-major.
template <int HID, int WID>
struct OpenLayout {
  static constexpr int kHidden = HID, kWidth = WID;
  static constexpr int hn_bias = 0;
  static constexpr int hn_kernel = hn_bias + HID;
  static constexpr int hr_kernel = hn_kernel + HID * HID;
  static constexpr int hz_kernel = hr_kernel + HID * HID;
  static constexpr int in_bias = hz_kernel + HID * HID;
  static constexpr int in_kernel = in_bias + HID;
  static constexpr int ir_bias = in_kernel + kFeatures * HID;
  static constexpr int ir_kernel = ir_bias + HID;
  static constexpr int iz_bias = ir_kernel + kFeatures * HID;
  static constexpr int iz_kernel = iz_bias + HID;
  static constexpr int dense0_bias = iz_kernel + kFeatures * HID;
  static constexpr int dense0_kernel = dense0_bias + WID;
  static constexpr int norm0_bias = dense0_kernel + HID * WID;
  static constexpr int norm0_scale = norm0_bias + WID;
  static constexpr int dense1_bias = norm0_scale + WID;
  static constexpr int dense1_kernel = dense1_bias + WID;
  static constexpr int norm1_bias = dense1_kernel + WID * WID;
  static constexpr int norm1_scale = norm1_bias + WID;
  static constexpr int dense2_bias = norm1_scale + WID;
  static constexpr int dense2_kernel = dense2_bias + kOutputs;
  static constexpr int size = dense2_kernel + WID * kOutputs;
};

// Calls f(OpenLayout<HID, WID>{}) for the supported network sizes; false for others.
template <class F>
bool dispatch_net(int hidden, int width, F&& f) {
  if (hidden == 8 && width == 16) { f(OpenLayout<8, 16>{}); return true; }
  if (hidden == 16 && width == 32) { f(OpenLayout<16, 32>{}); return true; }
  return false;
}

inline int open_meta_size(int hidden, int width) {
  int size = -1;
  dispatch_net(hidden, width, [&](auto layout) { size = decltype(layout)::size; });
  return size;
}

// The GRU's weights regrouped by gate (r | z | n: column c = gate * HID + j), read from the
// flat vector one entry at a time, so that a CUDA block can stage them cooperatively.
template <class L>
O4R_FN float input_weight(const float* meta, int feature, int c) {
  const int gate = c / L::kHidden, j = c % L::kHidden;
  const int kernel = gate == 0 ? L::ir_kernel : gate == 1 ? L::iz_kernel : L::in_kernel;
  return meta[kernel + feature * L::kHidden + j];
}
template <class L>
O4R_FN float input_bias(const float* meta, int c) {
  const int gate = c / L::kHidden, j = c % L::kHidden;
  return meta[(gate == 0 ? L::ir_bias : gate == 1 ? L::iz_bias : L::in_bias) + j];
}
template <class L>
O4R_FN float hidden_weight(const float* meta, int k, int c) {
  const int gate = c / L::kHidden, j = c % L::kHidden;
  const int kernel = gate == 0 ? L::hr_kernel : gate == 1 ? L::hz_kernel : L::hn_kernel;
  return meta[kernel + k * L::kHidden + j];
}
template <class L>
O4R_FN float hidden_bias(const float* meta, int c) {  // hr and hz have none
  return c < 2 * L::kHidden ? 0.0f : meta[L::hn_bias + c - 2 * L::kHidden];
}

// The hidden side of the GRU, regrouped, and the MLP read in place from the flat vector.
template <int HID, int WID>
struct Weights {
  using L = OpenLayout<HID, WID>;
  static constexpr int G = 3 * HID;
  static constexpr int kEntries = HID * G + G;  // what set() fills
  float wh[HID][G];  // hidden kernels
  float bh[G];       // hidden biases: 0 (hr and hz have none) | hn
  const float* mlp;  // the flat vector

  O4R_FN void set(const float* meta, int entry) {  // entry < kEntries
    if (entry < HID * G) wh[entry / G][entry % G] = hidden_weight<L>(meta, entry / G, entry % G);
    else bh[entry - HID * G] = hidden_bias<L>(meta, entry - HID * G);
  }
  void load(const float* meta) {
    for (int entry = 0; entry < kEntries; ++entry) set(meta, entry);
    mlp = meta;
  }
};

// One tensor's input side: x_i / rms_i W_ij = x_i (W_ij / rms_i) for the 15 normalised
// features, the dormancy's row (raw) after them, and the three proportions (the same for every
// element of the tensor) in the bias.
template <int HID>
struct TensorWeights {
  static constexpr int G = 3 * HID;
  float wx[kNormalised + 1][G];
  float bx[G];
  bool actor;

  // Column c from the features' 1/RMS (inv_rms[15]) and the proportions.
  template <int WID>
  O4R_FN void fold_column(const float* meta, const float* inv_rms, float training, float layer,
                          float batch, int c) {
    using L = OpenLayout<HID, WID>;
    for (int i = 0; i < kNormalised; ++i) wx[i][c] = input_weight<L>(meta, i, c) * inv_rms[i];
    wx[kNormalised][c] = input_weight<L>(meta, kDormancy, c);
    bx[c] = input_bias<L>(meta, c) + training * input_weight<L>(meta, kTraining, c) +
            layer * input_weight<L>(meta, kLayer, c) + batch * input_weight<L>(meta, kBatch, c);
  }
  template <int WID>
  void fold(const float* meta, const float* inv_rms, float training, float layer, float batch,
            bool is_actor) {
    for (int c = 0; c < G; ++c) fold_column<WID>(meta, inv_rms, training, layer, batch, c);
    actor = is_actor;
  }
};

// The momenta's decays (a function: a namespace-scope array would be host-only in CUDA).
O4R_FN float decay(int k) {
  constexpr float kDecays[kMomenta] = {0.1f, 0.5f, 0.9f, 0.99f, 0.999f, 0.9999f};
  return kDecays[k];
}

// m <- b m + (1 - b) g, rounded as XLA's CPU fusion does: fma(b, m, (1 - b) g).
template <class T, class M>
O4R_FN T update_momentum(T m, T g, int k) {
  return M::fma(M::splat(decay(k)), m, (1.0f - decay(k)) * g);
}

template <class T, class M>
O4R_FN T sign(T x) {  // jnp.sign: zeros and NaN pass through
  return M::select(x > 0.0f, M::splat(1.0f), M::select(x < 0.0f, M::splat(-1.0f), x));
}

template <class T, class M>
O4R_FN T log_abs(T x) {
  return M::log(M::select(x < 0.0f, -x, x) + kLogEps);
}

// The 15 features before normalisation: p, sign(m_k), log(|m_k| + eps), sign g, log(|g| + eps);
// `m`: the updated momenta.
template <class T, class M>
O4R_FN void raw_features(T p, T g, const T* m, T* x) {
  x[0] = p;
OPEN_UNROLL
  for (int k = 0; k < kMomenta; ++k) {
    x[1 + k] = sign<T, M>(m[k]);
    x[1 + kMomenta + k] = log_abs<T, M>(m[k]);
  }
  x[13] = sign<T, M>(g);
  x[14] = log_abs<T, M>(g);
}

// y = relu(LayerNorm(y)) in place, the reference's two-pass variance and rounding order.
template <class T, class M, int N>
O4R_FN void layer_norm_relu(T* y, const float* __restrict__ bias, const float* __restrict__ scale) {
  T mean = y[0];
OPEN_UNROLL
  for (int j = 1; j < N; ++j) mean += y[j];
  mean = mean / static_cast<float>(N);
  T var = M::splat(0.0f);
OPEN_UNROLL
  for (int j = 0; j < N; ++j) {
    y[j] -= mean;
    var += y[j] * y[j];
  }
  T inv = 1.0f / M::sqrt(var / static_cast<float>(N) + kLayerNormEps);
OPEN_UNROLL
  for (int j = 0; j < N; ++j) y[j] = relu<T, M>(y[j] * inv * scale[j] + bias[j]);
}

// out[N] = b + x[IN] @ K (kernel (IN, N) row-major), each sum in order of the inputs. C
// outputs at a time: their accumulators stay in registers and each x[i] is read once per
// chunk, which matters where x does not fit in registers (IN = 32).
template <class T, int IN, int N, int C = 16>
O4R_FN void dense(const T* x, const float* __restrict__ kernel, const float* __restrict__ bias,
                  T* out) {
OPEN_UNROLL
  for (int j0 = 0; j0 < N; j0 += C) {
    T a[C];
OPEN_UNROLL
    for (int j = 0; j < C; ++j)
      if (j0 + j < N) a[j] = T{} + bias[j0 + j];
OPEN_UNROLL
    for (int i = 0; i < IN; ++i) {
      const T xi = x[i];
OPEN_UNROLL
      for (int j = 0; j < C; ++j)
        if (j0 + j < N) a[j] += xi * kernel[i * N + j0 + j];
    }
OPEN_UNROLL
    for (int j = 0; j < C; ++j)
      if (j0 + j < N) out[j0 + j] = a[j];
  }
}

// The network on one element: raw features x[15] (normalised through tw) and dormancy x[15],
// the carry h[HID] -> h_new[HID]; returns the update u before the mean.
template <class T, class M, int HID, int WID>
O4R_FN T element_update(const Weights<HID, WID>& w, const TensorWeights<HID>& tw, const T* x,
                        T noise, const T* h, T* h_new) {
  using L = OpenLayout<HID, WID>;
  constexpr int G = 3 * HID;
  T gx[G], gh[G];
  dense<T, kNormalised + 1, G>(x, &tw.wx[0][0], tw.bx, gx);  // x[15]: dormancy
  dense<T, HID, G>(h, &w.wh[0][0], w.bh, gh);
  // flax GRUCell: r, z = sigmoid(.), n = tanh(x_n + r (W_hn h + b_hn)), h' = (1 - z) n + z h.
OPEN_UNROLL
  for (int j = 0; j < HID; ++j) {
    T r = sigmoid<T, M>(gx[j] + gh[j]);
    T z = sigmoid<T, M>(gx[HID + j] + gh[HID + j]);
    T n = M::tanh(gx[2 * HID + j] + r * gh[2 * HID + j]);
    h_new[j] = (1.0f - z) * n + z * h[j];
  }
  const float* p = w.mlp;
  T y0[WID], y1[WID], o[kOutputs];
  dense<T, HID, WID>(h_new, p + L::dense0_kernel, p + L::dense0_bias, y0);
  layer_norm_relu<T, M, WID>(y0, p + L::norm0_bias, p + L::norm0_scale);
  dense<T, WID, WID>(y0, p + L::dense1_kernel, p + L::dense1_bias, y1);
  layer_norm_relu<T, M, WID>(y1, p + L::norm1_bias, p + L::norm1_scale);
  dense<T, WID, kOutputs>(y1, p + L::dense2_kernel, p + L::dense2_bias, o);
  T u = (kUpdateScale * o[0]) * M::exp(kUpdateScale * o[1]);
  if (tw.actor) u = u + (kUpdateScale * o[2]) * noise;  // critic: noise never read
  return u;
}

// ----------------------------------------------------------------------------- GPU plan
// One thread's work in the two launches of the GPU plan (open_cuda_ffi.cu runs them per CUDA
// thread; tests/backends/open_scalar_step.cc, for the host). Pointers are a batch entry's.

// First launch: element i's momenta updated and stored, and its raw features x.
template <class M>
O4R_FN void moments_element(const float* p, const float* g, const float* momenta, int64_t P,
                            int64_t i, float* momenta_new, float* x) {
  float m[kMomenta];
OPEN_UNROLL
  for (int k = 0; k < kMomenta; ++k) {
    m[k] = update_momentum<float, M>(momenta[k * P + i], g[i], k);
    momenta_new[k * P + i] = m[k];
  }
  raw_features<float, M>(p[i], g[i], m, x);
}

// Second launch, once per chunk by `threads` threads together: the weights of the chunk's
// tensor from the flat vector `flat` (which must outlive w) and its 1/RMS (inv_rms[16]).
template <int HID, int WID>
O4R_FN void stage_weights(const float* flat, const float* inv_rms, float training, float layer,
                          float batch, float actor, int thread, int threads,
                          Weights<HID, WID>& w, TensorWeights<HID>& tw) {
  for (int e = thread; e < Weights<HID, WID>::kEntries; e += threads) w.set(flat, e);
  for (int c = thread; c < 3 * HID; c += threads)
    tw.template fold_column<WID>(flat, inv_rms, training, layer, batch, c);
  if (thread == 0) {
    w.mlp = flat;
    tw.actor = actor != 0.0f;
  }
}

// Second launch, per element: u (returned) and the new carry.
template <class M, int HID, int WID>
O4R_FN float network_element(const Weights<HID, WID>& w, const TensorWeights<HID>& tw,
                             const float* p, const float* g, const float* momenta_new,
                             const float* carry, const float* dormancy, const float* noise,
                             int64_t P, int64_t i, float* carry_new) {
  float m[kMomenta], x[kNormalised + 1], h[HID], h_new[HID];
OPEN_UNROLL
  for (int k = 0; k < kMomenta; ++k) m[k] = momenta_new[k * P + i];
  raw_features<float, M>(p[i], g[i], m, x);
  x[kNormalised] = dormancy[i];
OPEN_UNROLL
  for (int k = 0; k < HID; ++k) h[k] = carry[k * P + i];
  const float eps = tw.actor ? noise[i] : 0.0f;  // the critic's noise is never read
  const float u = element_update<float, M, HID, WID>(w, tw, x, eps, h, h_new);
OPEN_UNROLL
  for (int k = 0; k < HID; ++k) carry_new[k * P + i] = h_new[k];
  return u;
}

}  // namespace o4r::open
