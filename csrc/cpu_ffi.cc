// CPU backend: XLA FFI handlers for the fused forward and backward of every rule.
//
// Work is split into blocks of W parameters (one SIMD register per value) and the blocks
// of all batch entries are spread over OpenMP threads. The backward recomputes the forward
// per block and accumulates meta-parameter cotangents in per-thread lane accumulators,
// flushed to double precision every kFlushBlocks blocks; per-thread partials are summed in
// thread order, so results are deterministic for a given thread count. The module also
// registers OPEN's forward (open_cpu_ffi.cc) and reports what both were built with.
#include <omp.h>

#include <algorithm>
#include <vector>

#include <pybind11/pybind11.h>

#include "cpu_block.h"
#include "cpu_simd.h"
#include "ffi_common.h"
#include "open_py_info.h"
#include "optim4rl_math.h"
#include "py_info.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace py = pybind11;

namespace o4r::cpu {
namespace {

constexpr int64_t kFlushBlocks = 32;     // lane sums stay short: fp32 error stays ~1e-7
constexpr int64_t kMinParallelBlocks = 64;  // below this, threads cost more than they save

struct Problem {  // one fused call: B independent (meta, g, h) triples of P parameters
  int64_t batch, params, blocks;  // blocks per batch entry
};

// HT: the hidden state's storage, float or bfloat16 bits (uint16_t); arithmetic is float.
template <int RULE, class HT>
void forward(const float* meta, const float* g, const HT* h, float* dir, HT* h_new,
             Problem pr, float clip) {
  constexpr int R = hidden_rows<RULE>();
  constexpr int K = meta_size<RULE>();
  const int64_t total = pr.batch * pr.blocks;
#pragma omp parallel if (total >= kMinParallelBlocks)
  {
  FlushDenormals ftz;
#pragma omp for schedule(static)
  for (int64_t task = 0; task < total; ++task) {
    const int64_t b = task / pr.blocks, i0 = (task % pr.blocks) * W;
    const int64_t n = std::min<int64_t>(W, pr.params - i0);
    const int64_t off = b * pr.params + i0, hoff = b * R * pr.params + i0;
    vf hv[R], hn[R];
    for (int r = 0; r < R; ++r) hv[r] = load(h + hoff + r * pr.params, n);
    Step<vf, VecMath, RULE> s;
    s.forward(meta + b * K, load(g + off, n), hv, hn, clip);
    store(dir + off, s.direction, n);
    for (int r = 0; r < R; ++r) store(h_new + hoff + r * pr.params, hn[r], n);
  }
  }
}

struct LaneAcc {  // meta cotangent accumulator, one vector per meta-parameter
  vf* a;
  inline void operator()(int idx, vf v) { a[idx] += v; }
};
struct MaskedLaneAcc {  // for the last, partial block: padded lanes add nothing
  vf* a;
  vi valid;
  inline void operator()(int idx, vf v) { a[idx] += valid ? v : vf{}; }
};

template <int RULE, class HT>
void backward(const float* meta, const float* g, const HT* h, const float* d_dir,
              const HT* d_h_new, float* d_meta, HT* d_h, Problem pr, float clip) {
  constexpr int R = hidden_rows<RULE>();
  constexpr int K = meta_size<RULE>();
  const int64_t total = pr.batch * pr.blocks;
  const int threads = total >= kMinParallelBlocks ? omp_get_max_threads() : 1;
  std::vector<std::vector<double>> partial(threads);  // per thread: [its batch range][K]
  std::vector<int64_t> first_batch(threads, 0);

#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t lo = total * t / nt, hi = total * (t + 1) / nt;
    if (lo < hi) {
      const int64_t b_lo = lo / pr.blocks, b_hi = (hi - 1) / pr.blocks;
      first_batch[t] = b_lo;
      std::vector<double>& part = partial[t];
      part.assign((b_hi - b_lo + 1) * K, 0.0);
      std::vector<vf> lanes(K, vf{});
      auto flush = [&](int64_t b) {
        double* dst = part.data() + (b - b_lo) * K;
        for (int k = 0; k < K; ++k) {
          double s = 0.0;
          for (int l = 0; l < W; ++l) s += lanes[k][l];
          dst[k] += s;
          lanes[k] = vf{};
        }
      };
      int64_t since_flush = 0, cur_b = b_lo;
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t b = task / pr.blocks, i0 = (task % pr.blocks) * W;
        if (b != cur_b || since_flush == kFlushBlocks) {
          flush(cur_b);
          cur_b = b;
          since_flush = 0;
        }
        const int64_t n = std::min<int64_t>(W, pr.params - i0);
        const int64_t off = b * pr.params + i0, hoff = b * R * pr.params + i0;
        const float* p = meta + b * K;
        vf hv[R], hn[R], dhn[R], dh[R];
        for (int r = 0; r < R; ++r) {
          hv[r] = load(h + hoff + r * pr.params, n);
          dhn[r] = load(d_h_new + hoff + r * pr.params, n);
        }
        Step<vf, VecMath, RULE> s;
        s.forward(p, load(g + off, n), hv, hn, clip);
        if (n == W) {
          LaneAcc acc{lanes.data()};
          s.backward(p, load(d_dir + off, n), dhn, dh, acc);
        } else {
          MaskedLaneAcc acc{lanes.data(), lane_mask(n)};
          s.backward(p, load(d_dir + off, n), dhn, dh, acc);
        }
        for (int r = 0; r < R; ++r) store(d_h + hoff + r * pr.params, dh[r], n);
        ++since_flush;
      }
      flush(cur_b);
    }
  }
  std::vector<double> sum(pr.batch * K, 0.0);
  for (int t = 0; t < threads; ++t) {
    double* dst = sum.data() + first_batch[t] * K;
    for (size_t k = 0; k < partial[t].size(); ++k) dst[k] += partial[t][k];
  }
  for (int64_t k = 0; k < pr.batch * K; ++k) d_meta[k] = static_cast<float>(sum[k]);
}

ffi::Error describe(int rule, ffi::AnyBuffer::Dimensions g_dims, size_t meta_n, size_t g_n,
                    size_t h_n, Problem* pr) {
  CallShape shape;
  if (auto e = validate_call(rule, g_dims, meta_n, g_n, h_n, &shape); e.failure()) return e;
  *pr = Problem{shape.batch, shape.params, (shape.params + W - 1) / W};
  return ffi::Error::Success();
}

// HD: the hidden state's dtype (F32, or BF16 for the opt-in 16-bit state).
template <ffi::DataType HD>
ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> meta, ffi::Buffer<ffi::F32> g,
                       ffi::Buffer<HD> h, ffi::ResultBuffer<ffi::F32> dir,
                       ffi::ResultBuffer<HD> h_new, int32_t rule, float clip) {
  Problem pr;
  if (auto e = describe(rule, g.dimensions(), meta.element_count(), g.element_count(),
                        h.element_count(), &pr); e.failure())
    return e;
  if (pr.params == 0) return ffi::Error::Success();
  advise_huge_pages(dir->typed_data(), dir->size_bytes());
  advise_huge_pages(h_new->typed_data(), h_new->size_bytes());
  dispatch_rule(rule, [&](auto tag) {
    forward<decltype(tag)::value>(meta.typed_data(), g.typed_data(), h.typed_data(),
                                  dir->typed_data(), h_new->typed_data(), pr, clip);
  });
  return ffi::Error::Success();
}

template <ffi::DataType HD>
ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> meta, ffi::Buffer<ffi::F32> g,
                        ffi::Buffer<HD> h, ffi::Buffer<ffi::F32> d_dir,
                        ffi::Buffer<HD> d_h_new, ffi::ResultBuffer<ffi::F32> d_meta,
                        ffi::ResultBuffer<HD> d_h, int32_t rule, float clip) {
  Problem pr;
  if (auto e = describe(rule, g.dimensions(), meta.element_count(), g.element_count(),
                        h.element_count(), &pr); e.failure())
    return e;
  if (d_dir.element_count() != g.element_count() || d_h_new.element_count() != h.element_count())
    return ffi::Error::InvalidArgument("optim4rl: cotangent sizes do not match");
  if (pr.params == 0) {
    std::fill_n(d_meta->typed_data(), d_meta->element_count(), 0.0f);
    return ffi::Error::Success();
  }
  advise_huge_pages(d_h->typed_data(), d_h->size_bytes());
  dispatch_rule(rule, [&](auto tag) {
    backward<decltype(tag)::value>(meta.typed_data(), g.typed_data(), h.typed_data(),
                                   d_dir.typed_data(), d_h_new.typed_data(),
                                   d_meta->typed_data(), d_h->typed_data(), pr, clip);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace o4r::cpu

// OPEN's forward, defined in open_cpu_ffi.cc.
extern "C" XLA_FFI_Error* Optim4rlCpuOpenForward(XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(Optim4rlCpuForward, o4r::cpu::ForwardImpl<ffi::F32>,
                              o4r::forward_signature<ffi::F32>(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Optim4rlCpuBackward, o4r::cpu::BackwardImpl<ffi::F32>,
                              o4r::backward_signature<ffi::F32>(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Optim4rlCpuForwardBf16, o4r::cpu::ForwardImpl<ffi::BF16>,
                              o4r::forward_signature<ffi::BF16>(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Optim4rlCpuBackwardBf16, o4r::cpu::BackwardImpl<ffi::BF16>,
                              o4r::backward_signature<ffi::BF16>(ffi::Ffi::Bind()));

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "optim4rl CPU backend: XLA FFI handlers";
  m.def("registrations", []() {
    py::dict d;
    d["optim4rl_cpu_forward"] = py::capsule(reinterpret_cast<void*>(Optim4rlCpuForward));
    d["optim4rl_cpu_backward"] = py::capsule(reinterpret_cast<void*>(Optim4rlCpuBackward));
    d["optim4rl_cpu_forward_bf16"] = py::capsule(reinterpret_cast<void*>(Optim4rlCpuForwardBf16));
    d["optim4rl_cpu_backward_bf16"] =
        py::capsule(reinterpret_cast<void*>(Optim4rlCpuBackwardBf16));
    d["optim4rl_cpu_open_forward"] = py::capsule(reinterpret_cast<void*>(Optim4rlCpuOpenForward));
    return d;
  });
  o4r::add_info(m);
  o4r::open::add_info(m);
  m.def("num_threads", []() { return omp_get_max_threads(); });
  m.def("simd_lanes", []() { return o4r::cpu::W; },
        "floats per SIMD register the kernels were built for (16 AVX-512, 8 AVX2, 4 other)");
}
