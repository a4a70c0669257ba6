// CUDA backend of OPEN: the two launches of the GPU plan in optim4rl/backends/open_step.py,
// over chunks of elements that never straddle two tensors (one CUDA block per chunk, one
// thread per element; start, length and tensor of each chunk come from the plan).
//
//   moments: momenta updated (open_math.h: update_momentum) and, per chunk, the sums of
//            squares of the 15 normalised features: warp shuffles, one shared slot per warp,
//            the warps added in order (deterministic), written to partials (B, C, 16).
//   network: the block stages the flat meta-parameters, the GRU's hidden side (Weights) and
//            its tensor's input side with the 1/RMS and proportions folded in (TensorWeights,
//            from inv_rms (B, T, 16), which the plan sums from the partials) in shared memory;
//            then the network per thread.
// The per-thread work is open_math.h's (moments_element, stage_weights, network_element),
// ScalarMath (scalar_math.h) the math policy; tests/backends/test_scalar_path.py runs the
// same functions for the host.
// Leading dimensions of every operand are batch dimensions (vmap_method="broadcast_all"):
// blockIdx.y is the batch entry.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "open_math.h"
#include "scalar_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace o4r::open::cuda {
namespace {

constexpr int kMaxBlock = 256;
constexpr int kPartials = 16;  // per chunk: the 15 sums, then 0

__global__ void __launch_bounds__(kMaxBlock)
moments_kernel(const float* __restrict__ p, const float* __restrict__ g,
               const float* __restrict__ momenta, const int32_t* __restrict__ start,
               const int32_t* __restrict__ length, int64_t P, int64_t C,
               float* __restrict__ momenta_new, float* __restrict__ partials) {
  const int64_t b = blockIdx.y, chunk = b * C + blockIdx.x;
  float x[kNormalised] = {};  // inactive threads add zeros
  if (static_cast<int>(threadIdx.x) < length[chunk])
    moments_element<ScalarMath>(p + b * P, g + b * P, momenta + b * kMomenta * P, P,
                                start[chunk] + int64_t(threadIdx.x),
                                momenta_new + b * kMomenta * P, x);
  __shared__ float slots[kMaxBlock / 32][kNormalised];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int f = 0; f < kNormalised; ++f) {
    float v = x[f] * x[f];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) slots[warp][f] = v;
  }
  __syncthreads();
  if (threadIdx.x < kPartials) {
    float sum = 0.0f;
    if (threadIdx.x < kNormalised)
      for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) sum += slots[w][threadIdx.x];
    partials[chunk * kPartials + threadIdx.x] = sum;
  }
}

template <int HID, int WID>
__global__ void __launch_bounds__(kMaxBlock)
network_kernel(const float* __restrict__ meta, const float* __restrict__ p,
               const float* __restrict__ g, const float* __restrict__ momenta_new,
               const float* __restrict__ carry, const float* __restrict__ dormancy,
               const float* __restrict__ noise, const int32_t* __restrict__ start,
               const int32_t* __restrict__ length, const int32_t* __restrict__ tensor,
               const float* __restrict__ inv_rms, const float* __restrict__ layer,
               const float* __restrict__ actor, const float* __restrict__ training,
               const float* __restrict__ batch, int64_t P, int64_t C, int64_t T,
               float* __restrict__ u, float* __restrict__ carry_new) {
  using L = OpenLayout<HID, WID>;
  __shared__ float flat[L::size];
  __shared__ Weights<HID, WID> w;
  __shared__ TensorWeights<HID> tw;
  const int64_t b = blockIdx.y, chunk = b * C + blockIdx.x;
  const int64_t bt = b * T + tensor[chunk];
  for (int k = threadIdx.x; k < L::size; k += blockDim.x) flat[k] = meta[b * L::size + k];
  __syncthreads();
  stage_weights<HID, WID>(flat, inv_rms + bt * kPartials, training[b], layer[bt], batch[b],
                          actor[bt], threadIdx.x, blockDim.x, w, tw);
  __syncthreads();
  if (static_cast<int>(threadIdx.x) >= length[chunk]) return;
  const int64_t i = start[chunk] + int64_t(threadIdx.x);
  u[b * P + i] = network_element<ScalarMath, HID, WID>(
      w, tw, p + b * P, g + b * P, momenta_new + b * kMomenta * P, carry + b * HID * P,
      dormancy + b * P, noise + b * P, P, i, carry_new + b * HID * P);
}

ffi::Error invalid(const char* what) { return ffi::Error::InvalidArgument(what); }

ffi::Error launch_error() {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    return ffi::Error::Internal(std::string("optim4rl CUDA (OPEN): ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

int64_t count(const ffi::Buffer<ffi::F32>& x) { return static_cast<int64_t>(x.element_count()); }
int64_t count(const ffi::Buffer<ffi::S32>& x) { return static_cast<int64_t>(x.element_count()); }

// B, P and C from the gradients (B.., P) and the chunk starts (B.., C), with the block size.
ffi::Error shape(const ffi::Buffer<ffi::F32>& g, const ffi::Buffer<ffi::S32>& start,
                 int32_t block, int64_t* B, int64_t* P, int64_t* C) {
  if (block < 32 || block > kMaxBlock || block % 32 != 0)
    return invalid("OPEN CUDA: block must be a multiple of 32 in [32, 256]");
  if (g.dimensions().size() < 1 || start.dimensions().size() < 1)
    return invalid("OPEN CUDA: gradients and chunk starts must be rank >= 1");
  *P = g.dimensions().back();
  *C = start.dimensions().back();
  *B = *C > 0 ? count(start) / *C : 0;
  if (*B > 65535) return invalid("OPEN CUDA: at most 65535 batch entries");
  if (count(g) != *B * *P) return invalid("OPEN CUDA: gradient and chunk batch sizes differ");
  if (*C < (*P + block - 1) / block) return invalid("OPEN CUDA: too few chunks for P");
  return ffi::Error::Success();
}

ffi::Error MomentsImpl(cudaStream_t stream, ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> g,
                       ffi::Buffer<ffi::F32> momenta, ffi::Buffer<ffi::S32> start,
                       ffi::Buffer<ffi::S32> length, ffi::ResultBuffer<ffi::F32> momenta_new,
                       ffi::ResultBuffer<ffi::F32> partials, int32_t block) {
  int64_t B, P, C;
  if (auto e = shape(g, start, block, &B, &P, &C); e.failure()) return e;
  if (count(p) != B * P || count(momenta) != B * kMomenta * P || count(length) != B * C ||
      static_cast<int64_t>(partials->element_count()) != B * C * kPartials)
    return invalid("OPEN CUDA: moments operand sizes do not match");
  if (B * C == 0) return ffi::Error::Success();
  moments_kernel<<<dim3(C, B), block, 0, stream>>>(
      p.typed_data(), g.typed_data(), momenta.typed_data(), start.typed_data(),
      length.typed_data(), P, C, momenta_new->typed_data(), partials->typed_data());
  return launch_error();
}

ffi::Error NetworkImpl(cudaStream_t stream, ffi::Buffer<ffi::F32> meta, ffi::Buffer<ffi::F32> p,
                       ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> momenta_new,
                       ffi::Buffer<ffi::F32> carry, ffi::Buffer<ffi::F32> dormancy,
                       ffi::Buffer<ffi::F32> noise, ffi::Buffer<ffi::S32> start,
                       ffi::Buffer<ffi::S32> length, ffi::Buffer<ffi::S32> tensor,
                       ffi::Buffer<ffi::F32> inv_rms, ffi::Buffer<ffi::F32> layer,
                       ffi::Buffer<ffi::F32> actor, ffi::Buffer<ffi::F32> training,
                       ffi::Buffer<ffi::F32> batch, ffi::ResultBuffer<ffi::F32> u,
                       ffi::ResultBuffer<ffi::F32> carry_new, int32_t hidden, int32_t width,
                       int32_t block) {
  const int K = open_meta_size(hidden, width);
  if (K < 0) return invalid("OPEN CUDA: unsupported network (hidden, width); expected (8, 16) or (16, 32)");
  int64_t B, P, C;
  if (auto e = shape(g, start, block, &B, &P, &C); e.failure()) return e;
  if (layer.dimensions().size() < 1) return invalid("OPEN CUDA: layer must be rank >= 1");
  const int64_t T = layer.dimensions().back();
  if (count(meta) != B * K || count(p) != B * P || count(dormancy) != B * P ||
      count(noise) != B * P || count(momenta_new) != B * kMomenta * P ||
      count(carry) != B * hidden * P || count(length) != B * C || count(tensor) != B * C ||
      count(inv_rms) != B * T * kPartials || count(layer) != B * T || count(actor) != B * T ||
      count(training) != B || count(batch) != B)
    return invalid("OPEN CUDA: network operand sizes do not match");
  if (B * C == 0) return ffi::Error::Success();
  dispatch_net(hidden, width, [&](auto layout) {
    using L = decltype(layout);
    network_kernel<L::kHidden, L::kWidth><<<dim3(C, B), block, 0, stream>>>(
        meta.typed_data(), p.typed_data(), g.typed_data(), momenta_new.typed_data(),
        carry.typed_data(), dormancy.typed_data(), noise.typed_data(), start.typed_data(),
        length.typed_data(), tensor.typed_data(), inv_rms.typed_data(), layer.typed_data(),
        actor.typed_data(), training.typed_data(), batch.typed_data(), P, C, T,
        u->typed_data(), carry_new->typed_data());
  });
  return launch_error();
}

}  // namespace
}  // namespace o4r::open::cuda

XLA_FFI_DEFINE_HANDLER_SYMBOL(Optim4rlCudaOpenMoments, o4r::open::cuda::MomentsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // p (P,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g (P,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // momenta (6, P)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // chunk starts (C,)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // chunk lengths (C,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // momenta_new (6, P)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // partials (C, 16)
                                  .Attr<int32_t>("block"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(Optim4rlCudaOpenNetwork, o4r::open::cuda::NetworkImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // meta (K,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // p (P,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g (P,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // momenta_new (6, P)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // carry (H, P)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dormancy (P,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // noise (P,)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // chunk starts (C,)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // chunk lengths (C,)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // chunk tensors (C,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // inv_rms (T, 16)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // layer (T,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // actor (T,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // training ()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // batch ()
                                  .Ret<ffi::Buffer<ffi::F32>>()  // u (P,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // carry_new (H, P)
                                  .Attr<int32_t>("hidden")
                                  .Attr<int32_t>("width")
                                  .Attr<int32_t>("block"));
