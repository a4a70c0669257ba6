// CUDA backend: XLA FFI handlers (platform CUDA) running the per-element math of
// optim4rl_math.h with one thread per parameter (scalar_math.h; its host build is tested).
//
// Forward: meta-parameters of the batch entry are staged in shared memory; hidden-state rows
// are read and written coalesced (row r of element i is at r * P + i).
// Backward: recomputes the forward per thread; meta-parameter cotangents are reduced
// hierarchically and deterministically: warp shuffles -> one shared-memory slot per warp ->
// fixed-order sum per block into scratch -> a second kernel sums blocks in fixed order.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include <pybind11/pybind11.h>

#include "ffi_common.h"
#include "optim4rl_math.h"
#include "py_info.h"
#include "scalar_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace py = pybind11;

namespace o4r::cuda {
namespace {

constexpr int kForwardThreads = 256;
constexpr int kBackwardThreads = 128;  // 4 warps: (1 + 4) * K floats of shared memory
constexpr int kWarps = kBackwardThreads / 32;
constexpr int kMaxBlocksPerBatch = 1024;

template <int RULE>
__global__ void forward_kernel(const float* __restrict__ meta, const float* __restrict__ g,
                               const float* __restrict__ h, float* __restrict__ dir,
                               float* __restrict__ h_new, int64_t P, float clip) {
  constexpr int R = hidden_rows<RULE>(), K = meta_size<RULE>();
  __shared__ float p[K];
  const int64_t b = blockIdx.y;
  for (int k = threadIdx.x; k < K; k += blockDim.x) p[k] = meta[b * K + k];
  __syncthreads();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < P; i += stride) {
    const int64_t hoff = b * R * P + i;
    float hv[R], hn[R];
#pragma unroll
    for (int r = 0; r < R; ++r) hv[r] = h[hoff + r * P];
    Step<float, ScalarMath, RULE> s;
    s.forward(p, g[b * P + i], hv, hn, clip);
    dir[b * P + i] = s.direction;
#pragma unroll
    for (int r = 0; r < R; ++r) h_new[hoff + r * P] = hn[r];
  }
}

struct WarpAcc {  // sums a value over the warp; lane 0 adds it to the warp's shared slot
  float* slot;
  __device__ __forceinline__ void operator()(int idx, float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if ((threadIdx.x & 31) == 0) slot[idx] += v;
  }
};

template <int RULE>
__global__ void backward_kernel(const float* __restrict__ meta, const float* __restrict__ g,
                                const float* __restrict__ h, const float* __restrict__ d_dir,
                                const float* __restrict__ d_h_new, float* __restrict__ d_h,
                                float* __restrict__ block_partials, int64_t P, float clip) {
  constexpr int R = hidden_rows<RULE>(), K = meta_size<RULE>();
  extern __shared__ float smem[];
  float* p = smem;                // K meta-parameters
  float* slots = smem + K;        // kWarps x K cotangent partials
  const int64_t b = blockIdx.y;
  for (int k = threadIdx.x; k < K; k += blockDim.x) p[k] = meta[b * K + k];
  for (int k = threadIdx.x; k < kWarps * K; k += blockDim.x) slots[k] = 0.0f;
  __syncthreads();
  WarpAcc acc{slots + (threadIdx.x / 32) * K};
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  // Whole warps iterate together (shuffles need every lane); idle lanes carry zeros.
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x; base < P; base += stride) {
    const int64_t i = base + threadIdx.x;
    const bool active = i < P;
    const int64_t hoff = b * R * P + i;
    float hv[R], hn[R], dhn[R], dh[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      hv[r] = active ? h[hoff + r * P] : 0.0f;
      dhn[r] = active ? d_h_new[hoff + r * P] : 0.0f;
    }
    Step<float, ScalarMath, RULE> s;
    s.forward(p, active ? g[b * P + i] : 0.0f, hv, hn, clip);
    s.backward(p, active ? d_dir[b * P + i] : 0.0f, dhn, dh, acc);
    if (active) {
#pragma unroll
      for (int r = 0; r < R; ++r) d_h[hoff + r * P] = dh[r];
    }
  }
  __syncthreads();
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    float sum = 0.0f;
    for (int w = 0; w < kWarps; ++w) sum += slots[w * K + k];
    block_partials[(b * gridDim.x + blockIdx.x) * K + k] = sum;
  }
}

__global__ void reduce_blocks_kernel(const float* __restrict__ block_partials, float* __restrict__ d_meta,
                                     int blocks, int K) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (k >= K) return;
  float sum = 0.0f;
  for (int j = 0; j < blocks; ++j) sum += block_partials[(b * blocks + j) * K + k];
  d_meta[b * K + k] = sum;
}

struct Problem {
  int64_t batch, params;
  int blocks;  // blocks per batch entry
};

ffi::Error describe(int rule, ffi::AnyBuffer::Dimensions g_dims, size_t meta_n, size_t g_n,
                    size_t h_n, int threads, Problem* pr) {
  CallShape shape;
  if (auto e = validate_call(rule, g_dims, meta_n, g_n, h_n, &shape); e.failure()) return e;
  if (shape.batch > 65535) return ffi::Error::InvalidArgument("optim4rl: at most 65535 batch entries on CUDA");
  const int64_t needed = (shape.params + threads - 1) / threads;
  *pr = Problem{shape.batch, shape.params,
                static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, kMaxBlocksPerBatch)))};
  return ffi::Error::Success();
}

ffi::Error launch_error() {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return ffi::Error::Internal(std::string("optim4rl CUDA: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(cudaStream_t stream, ffi::Buffer<ffi::F32> meta, ffi::Buffer<ffi::F32> g,
                       ffi::Buffer<ffi::F32> h, ffi::ResultBuffer<ffi::F32> dir,
                       ffi::ResultBuffer<ffi::F32> h_new, int32_t rule, float clip) {
  Problem pr;
  if (auto e = describe(rule, g.dimensions(), meta.element_count(), g.element_count(),
                        h.element_count(), kForwardThreads, &pr); e.failure())
    return e;
  if (pr.params == 0) return ffi::Error::Success();
  dispatch_rule(rule, [&](auto tag) {
    dim3 grid(pr.blocks, pr.batch);
    forward_kernel<decltype(tag)::value><<<grid, kForwardThreads, 0, stream>>>(
        meta.typed_data(), g.typed_data(), h.typed_data(), dir->typed_data(),
        h_new->typed_data(), pr.params, clip);
  });
  return launch_error();
}

ffi::Error BackwardImpl(cudaStream_t stream, ffi::ScratchAllocator scratch,
                        ffi::Buffer<ffi::F32> meta, ffi::Buffer<ffi::F32> g,
                        ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> d_dir,
                        ffi::Buffer<ffi::F32> d_h_new, ffi::ResultBuffer<ffi::F32> d_meta,
                        ffi::ResultBuffer<ffi::F32> d_h, int32_t rule, float clip) {
  Problem pr;
  if (auto e = describe(rule, g.dimensions(), meta.element_count(), g.element_count(),
                        h.element_count(), kBackwardThreads, &pr); e.failure())
    return e;
  if (d_dir.element_count() != g.element_count() || d_h_new.element_count() != h.element_count())
    return ffi::Error::InvalidArgument("optim4rl: cotangent sizes do not match");
  const int K = meta_size_of(rule);
  if (pr.params == 0) {
    cudaMemsetAsync(d_meta->typed_data(), 0, sizeof(float) * d_meta->element_count(), stream);
    return launch_error();
  }
  auto partials = scratch.Allocate(sizeof(float) * pr.batch * pr.blocks * K, 16);
  if (!partials.has_value()) return ffi::Error::Internal("optim4rl CUDA: scratch allocation failed");
  float* block_partials = static_cast<float*>(*partials);
  dispatch_rule(rule, [&](auto tag) {
    dim3 grid(pr.blocks, pr.batch);
    const size_t shared = sizeof(float) * (1 + kWarps) * K;
    backward_kernel<decltype(tag)::value><<<grid, kBackwardThreads, shared, stream>>>(
        meta.typed_data(), g.typed_data(), h.typed_data(), d_dir.typed_data(),
        d_h_new.typed_data(), d_h->typed_data(), block_partials, pr.params, clip);
  });
  dim3 rgrid((K + 255) / 256, pr.batch);
  reduce_blocks_kernel<<<rgrid, 256, 0, stream>>>(block_partials, d_meta->typed_data(), pr.blocks, K);
  return launch_error();
}

}  // namespace
}  // namespace o4r::cuda

XLA_FFI_DEFINE_HANDLER_SYMBOL(Optim4rlCudaForward, o4r::cuda::ForwardImpl,
                              o4r::forward_signature(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(Optim4rlCudaBackward, o4r::cuda::BackwardImpl,
                              o4r::backward_signature(ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()));

// OPEN's handlers (open_cuda_ffi.cu).
extern "C" XLA_FFI_Error* Optim4rlCudaOpenMoments(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* Optim4rlCudaOpenNetwork(XLA_FFI_CallFrame* call_frame);

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "optim4rl CUDA backend: XLA FFI handlers (platform CUDA)";
  m.def("registrations", []() {
    py::dict d;
    d["optim4rl_cuda_forward"] = py::capsule(reinterpret_cast<void*>(Optim4rlCudaForward));
    d["optim4rl_cuda_backward"] = py::capsule(reinterpret_cast<void*>(Optim4rlCudaBackward));
    d["optim4rl_cuda_open_moments"] = py::capsule(reinterpret_cast<void*>(Optim4rlCudaOpenMoments));
    d["optim4rl_cuda_open_network"] = py::capsule(reinterpret_cast<void*>(Optim4rlCudaOpenNetwork));
    return d;
  });
  o4r::add_info(m);
}
