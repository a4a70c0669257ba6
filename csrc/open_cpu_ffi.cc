// CPU backend of OPEN: the XLA FFI handler of the flat forward step over all tensors of a
// parameter tree (optim4rl/backends/open_step.py says what the operands are).
//
// Each tensor is cut into blocks of W elements (one SIMD vector per value; a block never
// straddles two tensors, so a block has one set of per-tensor weights). Two passes:
//   1. update the momenta and sum, per tensor, the squares of the 15 normalised features, over
//      contiguous per-thread ranges of blocks: lane sums in float, flushed to per-thread double sums every kFlushBlocks blocks and at
//      each tensor's end; the thread sums are added in thread order (deterministic for a given
//      thread count);
//   2. once, fold each tensor's 1/RMS and its proportions into its copy of the GRU's input
//      weights (open_math.h: TensorWeights); then features, GRU and MLP per element, over
//      chunks of blocks taken by whichever thread is free.
// The logs of the features are recomputed in pass 2: cheaper than writing and reading them.
// Leading dimensions of every operand are batch dimensions (vmap_method="broadcast_all"),
// stepped one after the other.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_block.h"
#include "cpu_simd.h"
#include "open_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace o4r::open::cpu {
namespace {

using o4r::cpu::FlushDenormals;
using o4r::cpu::load;
using o4r::cpu::store;
using o4r::cpu::vf;
using o4r::cpu::vi;
using o4r::cpu::VecMath;
using o4r::cpu::advise_huge_pages;
using o4r::cpu::lane_mask;
using o4r::cpu::W;

constexpr int64_t kFlushBlocks = 32;        // float lane sums stay short
constexpr int64_t kMinParallelBlocks = 16;  // below this, threads cost more than they save
constexpr int64_t kChunkBlocks = 64;        // pass 2's unit of work

// One batch entry's operands (P elements, T tensors).
struct Entry {
  const float *meta, *p, *g, *momenta, *carry;
  const int32_t* segments;
  const float *layer, *actor, *dormancy, *noise;
  float training, batch;
  float *u, *momenta_new, *carry_new;
};

// The blocks of the tensors: tensor t holds blocks [first[t], first[t + 1]).
struct Blocks {
  std::vector<int64_t> first;

  explicit Blocks(const int32_t* segments, int64_t tensors) : first(tensors + 1, 0) {
    for (int64_t t = 0; t < tensors; ++t)
      first[t + 1] = first[t] + (segments[t + 1] - segments[t] + W - 1) / W;
  }
  int64_t count() const { return first.back(); }
  int64_t tensor_of(int64_t block) const {  // the non-empty tensor holding `block`
    return std::upper_bound(first.begin(), first.end(), block) - first.begin() - 1;
  }
};

template <int HID, int WID>
void step(const Entry& e, int64_t P, int64_t T, const Weights<HID, WID>& w) {
  const Blocks blocks(e.segments, T);
  const int64_t nb = blocks.count();
  const int threads = nb >= kMinParallelBlocks ? omp_get_max_threads() : 1;
  std::vector<double> sums(static_cast<size_t>(threads) * T * kNormalised, 0.0);
  std::vector<TensorWeights<HID>> tensors(T);

#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    const int th = omp_get_thread_num(), nth = omp_get_num_threads();
    const int64_t lo = nb * th / nth, hi = nb * (th + 1) / nth;

    // Pass 1: momenta and the per-tensor sums of squares.
    if (lo < hi) {
      double* my = sums.data() + static_cast<size_t>(th) * T * kNormalised;
      vf lanes[kNormalised];
      auto flush = [&](int64_t t) {
        for (int i = 0; i < kNormalised; ++i) {
          double s = 0.0;
          for (int l = 0; l < W; ++l) s += lanes[i][l];
          my[t * kNormalised + i] += s;
          lanes[i] = vf{};
        }
      };
      for (auto& v : lanes) v = vf{};
      int64_t t = blocks.tensor_of(lo), since_flush = 0;
      for (int64_t b = lo; b < hi; ++b) {
        if (b >= blocks.first[t + 1] || since_flush == kFlushBlocks) {
          flush(t);
          since_flush = 0;
          while (b >= blocks.first[t + 1]) ++t;
        }
        const int64_t i0 = e.segments[t] + (b - blocks.first[t]) * W;
        const int64_t n = std::min<int64_t>(W, e.segments[t + 1] - i0);
        const vf g = load(e.g + i0, n);
        vf m[kMomenta], x[kNormalised];
        for (int k = 0; k < kMomenta; ++k) {
          m[k] = update_momentum<vf, VecMath>(load(e.momenta + k * P + i0, n), g, k);
          store(e.momenta_new + k * P + i0, m[k], n);
        }
        raw_features<vf, VecMath>(load(e.p + i0, n), g, m, x);
        if (n < W) {  // padded lanes add nothing (their logs are not 0)
          const vi valid = lane_mask(n);
          for (auto& v : x) v = valid ? v : vf{};
        }
        for (int i = 0; i < kNormalised; ++i) lanes[i] += x[i] * x[i];
        ++since_flush;
      }
      flush(t);
    }
#pragma omp barrier
#pragma omp single
    for (int64_t t = 0; t < T; ++t) {
      const int64_t count = e.segments[t + 1] - e.segments[t];
      if (count == 0) continue;
      double total[kNormalised] = {};
      for (int k = 0; k < nth; ++k)
        for (int i = 0; i < kNormalised; ++i)
          total[i] += sums[(static_cast<size_t>(k) * T + t) * kNormalised + i];
      float inv_rms[kNormalised];
      for (int i = 0; i < kNormalised; ++i)  // as the reference: the mean in float
        inv_rms[i] = 1.0f / std::sqrt(kNormEps + static_cast<float>(total[i] / count));
      tensors[t].template fold<WID>(e.meta, inv_rms, e.training, e.layer[t], e.batch,
                                    e.actor[t] != 0.0f);
    }  // implicit barrier: every tensor's weights are ready

    // Pass 2: features, network, update and carry. No sums here, so chunks go to whichever
    // thread is free (the machine is often shared) without changing any result.
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t c = 0; c < nb; c += kChunkBlocks) {
      int64_t t = blocks.tensor_of(c);
      for (int64_t b = c; b < std::min(nb, c + kChunkBlocks); ++b) {
        while (b >= blocks.first[t + 1]) ++t;
        const int64_t i0 = e.segments[t] + (b - blocks.first[t]) * W;
        const int64_t n = std::min<int64_t>(W, e.segments[t + 1] - i0);
        const vf g = load(e.g + i0, n);
        vf m[kMomenta], x[kNormalised + 1], h[HID], h_new[HID];
        for (int k = 0; k < kMomenta; ++k) m[k] = load(e.momenta_new + k * P + i0, n);
        raw_features<vf, VecMath>(load(e.p + i0, n), g, m, x);
        x[kNormalised] = load(e.dormancy + i0, n);
        for (int k = 0; k < HID; ++k) h[k] = load(e.carry + k * P + i0, n);
        const vf noise = tensors[t].actor ? load(e.noise + i0, n) : vf{};
        const vf u = element_update<vf, VecMath, HID, WID>(w, tensors[t], x, noise, h, h_new);
        store(e.u + i0, u, n);
        for (int k = 0; k < HID; ++k) store(e.carry_new + k * P + i0, h_new[k], n);
      }
    }
  }
}

ffi::Error invalid(const char* what) { return ffi::Error::InvalidArgument(what); }

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> meta, ffi::Buffer<ffi::F32> p,
                       ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> momenta,
                       ffi::Buffer<ffi::F32> carry, ffi::Buffer<ffi::S32> segments,
                       ffi::Buffer<ffi::F32> layer, ffi::Buffer<ffi::F32> actor,
                       ffi::Buffer<ffi::F32> dormancy, ffi::Buffer<ffi::F32> noise,
                       ffi::Buffer<ffi::F32> training, ffi::Buffer<ffi::F32> batch,
                       ffi::ResultBuffer<ffi::F32> u, ffi::ResultBuffer<ffi::F32> momenta_new,
                       ffi::ResultBuffer<ffi::F32> carry_new, int32_t hidden, int32_t width) {
  const int K = open_meta_size(hidden, width);
  if (K < 0) return invalid("OPEN: unsupported network (hidden, width); expected (8, 16) or (16, 32)");
  if (p.dimensions().size() < 1 || segments.dimensions().size() < 1)
    return invalid("OPEN: parameters and segments must be rank >= 1");
  if (meta.element_count() % K != 0)
    return invalid("OPEN: meta-parameter size does not match the network");
  const int64_t B = meta.element_count() / K;
  const int64_t P = p.dimensions().back();
  const int64_t T = segments.dimensions().back() - 1;
  const auto n = [](const auto& buffer) { return static_cast<int64_t>(buffer.element_count()); };
  if (T < 0 || n(segments) != B * (T + 1) || n(layer) != B * T || n(actor) != B * T)
    return invalid("OPEN: segments, layer and actor sizes do not match");
  if (n(p) != B * P || n(g) != B * P || n(dormancy) != B * P || n(noise) != B * P ||
      n(momenta) != B * kMomenta * P || n(carry) != B * hidden * P || n(training) != B ||
      n(batch) != B)
    return invalid("OPEN: operand sizes do not match");
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* s = segments.typed_data() + b * (T + 1);
    if (s[0] != 0 || s[T] != P) return invalid("OPEN: segments must run from 0 to P");
    for (int64_t t = 0; t < T; ++t)
      if (s[t + 1] < s[t]) return invalid("OPEN: segments must not decrease");
  }
  if (P == 0) return ffi::Error::Success();
  advise_huge_pages(u->typed_data(), u->size_bytes());
  advise_huge_pages(momenta_new->typed_data(), momenta_new->size_bytes());
  advise_huge_pages(carry_new->typed_data(), carry_new->size_bytes());
  dispatch_net(hidden, width, [&](auto layout) {
    using L = decltype(layout);
    Weights<L::kHidden, L::kWidth> w;
    for (int64_t b = 0; b < B; ++b) {
      Entry e{meta.typed_data() + b * K, p.typed_data() + b * P, g.typed_data() + b * P,
              momenta.typed_data() + b * kMomenta * P, carry.typed_data() + b * hidden * P,
              segments.typed_data() + b * (T + 1), layer.typed_data() + b * T,
              actor.typed_data() + b * T, dormancy.typed_data() + b * P,
              noise.typed_data() + b * P, training.typed_data()[b], batch.typed_data()[b],
              u->typed_data() + b * P, momenta_new->typed_data() + b * kMomenta * P,
              carry_new->typed_data() + b * hidden * P};
      w.load(e.meta);
      step<L::kHidden, L::kWidth>(e, P, T, w);
    }
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace o4r::open::cpu

XLA_FFI_DEFINE_HANDLER_SYMBOL(Optim4rlCpuOpenForward, o4r::open::cpu::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // meta (K,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // p (P,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g (P,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // momenta (6, P)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // carry (H, P)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // segments (T + 1,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // layer (T,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // actor (T,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dormancy (P,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // noise (P,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // training ()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // batch ()
                                  .Ret<ffi::Buffer<ffi::F32>>()  // u (P,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // momenta (6, P)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // carry (H, P)
                                  .Attr<int32_t>("hidden")
                                  .Attr<int32_t>("width"));
