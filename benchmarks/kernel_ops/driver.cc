// The cpu kernels' per-element code for callgrind (benchmarks/kernel_ops.py): Optim4RL's
// forward on 8,192 parameters (fwd_blocks), then the backward kernel's work, the forward
// recomputed and its VJP (fwdbwd_blocks), each block of W parameters as cpu_ffi.cc runs it.
#include <cstdio>
#include <vector>
#include "cpu_block.h"
#include "optim4rl_math.h"
using namespace o4r;
using namespace o4r::cpu;
constexpr int RULE = kOptim4RL;
constexpr int R = hidden_rows<RULE>(), K = meta_size<RULE>();
struct Acc { vf* a; inline void operator()(int i, vf v) { a[i] += v; } };
__attribute__((noinline)) void fwd_blocks(const float* meta, const float* g, const float* h,
                                          float* dir, float* hn_out, int64_t P) {
  for (int64_t i0 = 0; i0 < P; i0 += W) {
    vf hv[R], hn[R];
    for (int r = 0; r < R; ++r) hv[r] = load(h + r * P + i0, W);
    Step<vf, VecMath, RULE> s;
    s.forward(meta, load(g + i0, W), hv, hn, 1.0f);
    store(dir + i0, s.direction, W);
    for (int r = 0; r < R; ++r) store(hn_out + r * P + i0, hn[r], W);
  }
}
__attribute__((noinline)) void fwdbwd_blocks(const float* meta, const float* g, const float* h,
                                             const float* ddir, const float* dhn_in, float* dh_out,
                                             vf* lanes, int64_t P) {
  for (int64_t i0 = 0; i0 < P; i0 += W) {
    vf hv[R], hn[R], dhn[R], dh[R];
    for (int r = 0; r < R; ++r) { hv[r] = load(h + r * P + i0, W); dhn[r] = load(dhn_in + r * P + i0, W); }
    Step<vf, VecMath, RULE> s;
    s.forward(meta, load(g + i0, W), hv, hn, 1.0f);
    Acc acc{lanes};
    s.backward(meta, load(ddir + i0, W), dhn, dh, acc);
    for (int r = 0; r < R; ++r) store(dh_out + r * P + i0, dh[r], W);
  }
}
int main() {
  const int64_t P = 8192;
  std::vector<float> meta(K), g(P), h(R * P), dir(P), hn(R * P), ddir(P), dhn(R * P), dh(R * P);
  for (int k = 0; k < K; ++k) meta[k] = 0.1f * ((k * 37) % 17 - 8);
  for (int64_t i = 0; i < P; ++i) { g[i] = 1e-3f * ((i * 13) % 29 - 14); ddir[i] = 0.5f; }
  for (int64_t i = 0; i < R * P; ++i) { h[i] = 0.05f * ((i * 7) % 21 - 10); dhn[i] = 0.1f; }
  std::vector<vf> lanes(K, vf{});
  FlushDenormals ftz;
  fwd_blocks(meta.data(), g.data(), h.data(), dir.data(), hn.data(), P);
  fwdbwd_blocks(meta.data(), g.data(), h.data(), ddir.data(), dhn.data(), dh.data(), lanes.data(), P);
  float s = 0;
  for (int64_t i = 0; i < P; ++i) s += dir[i] + dh[i];
  // Lanes per block, parameters, and a checksum so that nothing is optimised away.
  printf("%d %lld %g\n", W, static_cast<long long>(P), s);
}
