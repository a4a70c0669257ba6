// Host-side glue of the CPU handlers: blocks of W values in and out of memory, and the
// denormal mode of their worker threads. Shared by cpu_ffi.cc and open_cpu_ffi.cc.
#pragma once
#include <xmmintrin.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

#include "cpu_simd.h"

namespace o4r::cpu {

// Load W values starting at x (n valid, rest zero) and store n of them back. Masked moves
// where there are (a memcpy of a runtime size is a libc call per vector).
inline vf load(const float* x, int64_t n) {
#if defined(__AVX512F__)
  return (vf)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), x);
#else
  vf v = {};
  if (n == W) std::memcpy(&v, x, sizeof(vf));
  else std::memcpy(&v, x, sizeof(float) * n);
  return v;
#endif
}
inline void store(float* x, vf v, int64_t n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(x, static_cast<__mmask16>((1u << n) - 1), (__m512)v);
#else
  if (n == W) std::memcpy(x, &v, sizeof(vf));
  else std::memcpy(x, &v, sizeof(float) * n);
#endif
}

// Denormals flushed to zero on every worker thread, as XLA does on CPU: activations near
// 1e-38 would otherwise hit the slow microcode path. Speed only: the denormal policy for the
// gradient input is explicit in the shared math (flush_denormal), the same on every backend.
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }
 private:
  unsigned saved_;
};

}  // namespace o4r::cpu
