// Host-side glue of the CPU handlers: blocks of W values in and out of memory, and the
// denormal mode of their worker threads. Shared by cpu_ffi.cc and open_cpu_ffi.cc.
#pragma once
#include <xmmintrin.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <sys/mman.h>

#include <cstdint>
#include <cstring>

#include "cpu_simd.h"

namespace o4r::cpu {

// Lanes l < n set (all ones), the rest clear: the valid lanes of a block of n < W values.
inline vi lane_mask(int64_t n) {
  vi lane;
  for (int l = 0; l < W; ++l) lane[l] = l;
  return lane < static_cast<int32_t>(n);
}

// Load W values starting at x (n valid, rest zero) and store n of them back. Masked moves
// where there are (a memcpy of a runtime size is a libc call per vector).
inline vf load(const float* x, int64_t n) {
#if defined(__AVX512F__)
  return (vf)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), x);
#elif defined(O4R_AVX2)
  if (n == W) return (vf)_mm256_loadu_ps(x);
  return (vf)_mm256_maskload_ps(x, (__m256i)lane_mask(n));
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
#elif defined(O4R_AVX2)
  if (n == W) _mm256_storeu_ps(x, (__m256)v);
  else _mm256_maskstore_ps(x, (__m256i)lane_mask(n), (__m256)v);
#else
  if (n == W) std::memcpy(x, &v, sizeof(vf));
  else std::memcpy(x, &v, sizeof(float) * n);
#endif
}

// The same for a hidden state kept in bfloat16 (XLA's BF16 buffers are uint16_t): widened
// exactly on load, rounded to nearest even on store as XLA's convert does, NaN kept quiet.
typedef uint16_t vbf16 __attribute__((vector_size(2 * W)));
typedef uint32_t vu __attribute__((vector_size(4 * W)));
inline vf load(const uint16_t* x, int64_t n) {
  vbf16 b = {};
  if (n == W) std::memcpy(&b, x, sizeof(b));
  else std::memcpy(&b, x, sizeof(uint16_t) * n);
  return (vf)(__builtin_convertvector(b, vu) << 16);
}
inline void store(uint16_t* x, vf v, int64_t n) {
  const vu bits = (vu)v;
  vu rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  rounded = (vu)((v != v) ? (vi)((bits >> 16) | 0x40u) : (vi)rounded);
  const vbf16 b = __builtin_convertvector(rounded, vbf16);
  if (n == W) std::memcpy(x, &b, sizeof(b));
  else std::memcpy(x, &b, sizeof(uint16_t) * n);
}

// Ask for transparent huge pages on a large output buffer before its first write. XLA hands
// the handlers fresh buffers (mmapped by malloc when large), whose first touch costs one page
// fault per 4 KB: a third of the forward's time at P = 1e6 was system time. With 2 MB pages
// it is one fault per 2 MB. Only whole 2 MB pages inside the buffer are advised; where THP is
// off or the range is already populated, the call changes nothing.
inline void advise_huge_pages(void* data, size_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
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
