// SIMD math policy for the CPU backend: T = one native register of floats (16 with AVX-512,
// 8 with AVX2, 4 otherwise). A wider generic vector than the machine's registers is not an
// option: GCC scalarises its compares and selects (measured 9x slower on AVX2). exp/log/tanh
// are Cephes-style polynomials (about 1-2 ulp) written with vector operations, because libm
// has no vector entry points we can rely on.
#pragma once
#include <cstdint>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace o4r::cpu {

#if defined(__AVX512F__)
constexpr int W = 16;  // parameters per SIMD block
#elif defined(__AVX2__) && defined(__FMA__)
#define O4R_AVX2 1
constexpr int W = 8;
#else
constexpr int W = 4;
#endif
typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

struct VecMath {
  static inline vf splat(float x) { return vf{} + x; }
  static inline vf select(vi mask, vf a, vf b) { return mask ? a : b; }

  static inline vf fma(vf a, vf b, vf c) {  // a b + c, one rounding
#if defined(__AVX512F__)
    return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(O4R_AVX2)
    return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    vf r;
    for (int i = 0; i < W; ++i) r[i] = __builtin_fmaf(a[i], b[i], c[i]);
    return r;
#endif
  }

  static inline vf sqrt(vf x) {
#if defined(__AVX512F__)
    return (vf)_mm512_sqrt_ps((__m512)x);
#elif defined(O4R_AVX2)
    return (vf)_mm256_sqrt_ps((__m256)x);
#else
    vf r;
    for (int i = 0; i < W; ++i) r[i] = __builtin_sqrtf(x[i]);
    return r;
#endif
  }

  // 1/x: 14-bit estimate refined by one Newton step (about 1 ulp), cheaper than vdivps.
  static inline vf rcp(vf x) {
#if defined(__AVX512F__)
    vf r = (vf)_mm512_rcp14_ps((__m512)x);
    return r * (2.0f - x * r);
#elif defined(O4R_AVX2)
    vf r = (vf)_mm256_rcp_ps((__m256)x);  // 12-bit estimate: after one step about 2 ulp
    return r * (2.0f - x * r);
#else
    return 1.0f / x;
#endif
  }

  static inline vf pow2i(vi k) { return (vf)((k + 127) << 23); }  // 2^k, -126 <= k <= 127

  // e^r for |r| <= ln2 / 2 (Cephes expf polynomial).
  static inline vf exp_reduced(vf r) {
    vf y = splat(1.9875691500e-4f);
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    return y;
  }

  static inline vf exp(vf x) {
#if defined(__AVX512F__)
    // exp(x) = 2^k e^r, |r| <= ln2 / 2; vscalefps applies 2^k with IEEE overflow/underflow.
    vf xc = select(x > 89.0f, splat(89.0f), x);
    xc = select(xc < -104.0f, splat(-104.0f), xc);  // NaN passes both
    vf k = (vf)_mm512_roundscale_ps((__m512)(xc * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT);
    vf r = xc - k * 0.693359375f + k * 2.12194440e-4f;
    vf y = exp_reduced(r);
    return (vf)_mm512_scalef_ps((__m512)y, (__m512)k);
#else
    // exp(x) = 2^k e^r, |r| <= ln2 / 2; 2^k applied in two halves so k = 128 cannot overflow.
#if defined(O4R_AVX2)
    // vroundps, and min/max clamps with x as their second operand, so that NaN passes.
    vf xc = (vf)_mm256_min_ps(_mm256_set1_ps(88.7228f), (__m256)x);
    xc = (vf)_mm256_max_ps(_mm256_set1_ps(-87.3365f), (__m256)xc);
    vf fk = (vf)_mm256_round_ps((__m256)(xc * 1.44269504088896341f),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vi k = (vi)_mm256_cvtps_epi32((__m256)fk);
#else
    vf xc = select(x > 88.7228f, splat(88.7228f), x);
    xc = select(xc < -87.3365f, splat(-87.3365f), xc);  // NaN passes both
    vf kf = xc * 1.44269504088896341f + 0.5f;
    vi k = __builtin_convertvector(kf, vi);
    k += (__builtin_convertvector(k, vf) > kf);  // truncation -> floor (true is -1)
    vf fk = __builtin_convertvector(k, vf);
#endif
    vf r = xc - fk * 0.693359375f + fk * 2.12194440e-4f;
    vf y = exp_reduced(r);
    vi k1 = k >> 1;
    vf res = y * pow2i(k1) * pow2i(k - k1);
    res = select(x > 88.7228f, splat(__builtin_inff()), res);
    return select(x < -87.3365f, splat(0.0f), res);  // flush to zero, as XLA on CPU
#endif
  }

  static inline vf log(vf x) {
    // x = m 2^e with m in [sqrt(1/2), sqrt(2)); log x = log1p(m - 1) + e ln 2.
    vi bits = (vi)x;
    vi e = ((bits >> 23) & 0xff) - 126;
    vf m = (vf)((bits & 0x807fffff) | 0x3f000000);  // in [0.5, 1)
    vi small = m < 0.707106781186547524f;
    e += small;  // true is -1
    m = select(small, m + m, m) - 1.0f;
    vf fe = __builtin_convertvector(e, vf);
    vf z = m * m;
    vf y = splat(7.0376836292e-2f);
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y += fe * -2.12194440e-4f;
    y += -0.5f * z;
    vf res = m + y + fe * 0.693359375f;
    res = select(x == __builtin_inff(), x, res);
    res = select(x == 0.0f, splat(-__builtin_inff()), res);
    res = select(x < 0.0f, splat(__builtin_nanf("")), res);
    return select(x != x, x, res);
  }

  static inline vf tanh(vf x) {
    vf ax = select(x < 0.0f, -x, x);
    vf z = x * x;  // small |x|: odd polynomial, avoids cancellation near 0
    vf p = splat(-5.70498872745e-3f);
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    vf small = p * z * x + x;
    vf e2 = exp(select(ax > 44.0f, splat(44.0f), ax) * 2.0f);  // tanh(44) is 1 in float
    vf big = 1.0f - 2.0f * rcp(e2 + 1.0f);
    big = select(x < 0.0f, -big, big);
    return select(ax < 0.625f, small, big);
  }
};

}  // namespace o4r::cpu
