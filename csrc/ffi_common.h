// Host-side glue shared by the CPU and CUDA FFI handlers: validation of buffer sizes (rule
// dispatch is in optim4rl_math.h). Leading dimensions of every operand are batch dimensions
// (vmap uses broadcast_all), so a call is `batch` independent (meta, g, h) triples of
// `params` each.
#pragma once
#include <cstdint>
#include <utility>

#include "optim4rl_math.h"
#include "xla/ffi/api/ffi.h"

namespace o4r {

struct CallShape {
  int64_t batch, params;
};

inline xla::ffi::Error validate_call(int rule, xla::ffi::AnyBuffer::Dimensions g_dims,
                                     size_t meta_n, size_t g_n, size_t h_n, CallShape* shape) {
  using xla::ffi::Error;
  const int K = meta_size_of(rule), R = hidden_rows_of(rule);
  if (K < 0) return Error::InvalidArgument("optim4rl: unknown rule id");
  if (g_dims.size() < 1) return Error::InvalidArgument("optim4rl: gradients must be rank >= 1");
  const int64_t P = g_dims.back();
  if (meta_n % K != 0)
    return Error::InvalidArgument("optim4rl: meta-parameter size does not match the rule");
  const int64_t B = meta_n / K;
  if (static_cast<int64_t>(g_n) != B * P || static_cast<int64_t>(h_n) != B * R * P)
    return Error::InvalidArgument("optim4rl: gradient/hidden-state sizes do not match");
  *shape = CallShape{B, P};
  return Error::Success();
}

// Both calls take float32 buffers but for the hidden state and its cotangents, of dtype HD
// (F32; BF16 for the opt-in 16-bit state on CPU), return two, and have attributes rule
// (int32) and clip (float32), identically on every platform (optim4rl/backends/registry.py
// makes them): forward (meta, g, h) -> (direction, h_new); backward (meta, g, h,
// d_direction, d_h_new) -> (d_meta, d_h). `binding` carries the platform's context arguments.
template <class Binding>
auto with_attributes(Binding binding) {
  return std::move(binding).template Attr<int32_t>("rule").template Attr<float>("clip");
}

template <xla::ffi::DataType HD = xla::ffi::F32, class Binding>
auto forward_signature(Binding binding) {
  using xla::ffi::Buffer;
  using xla::ffi::F32;
  return with_attributes(std::move(binding)
                             .template Arg<Buffer<F32>>()   // meta
                             .template Arg<Buffer<F32>>()   // g
                             .template Arg<Buffer<HD>>()    // h
                             .template Ret<Buffer<F32>>()   // direction
                             .template Ret<Buffer<HD>>());  // h_new
}

template <xla::ffi::DataType HD = xla::ffi::F32, class Binding>
auto backward_signature(Binding binding) {
  using xla::ffi::Buffer;
  using xla::ffi::F32;
  return with_attributes(std::move(binding)
                             .template Arg<Buffer<F32>>()   // meta
                             .template Arg<Buffer<F32>>()   // g
                             .template Arg<Buffer<HD>>()    // h
                             .template Arg<Buffer<F32>>()   // d_direction
                             .template Arg<Buffer<HD>>()    // d_h_new
                             .template Ret<Buffer<F32>>()   // d_meta
                             .template Ret<Buffer<HD>>());  // d_h
}

}  // namespace o4r
