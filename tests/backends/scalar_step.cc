// Host build of the CUDA backend's per-element path: Step<float, ScalarMath, RULE> of
// csrc/optim4rl_math.h, one parameter at a time, in plain IEEE float (no FTZ/DAZ, no fast
// math). Compiled and run by test_scalar_path.py.
//
// Usage: scalar_step IN OUT. IN: int32 rule, float32 clip, int64 P, then float32 meta[K],
// g[P], h[R*P], d_dir[P], d_h_new[R*P] (rows of length P). OUT: float32 dir[P], h_new[R*P],
// d_meta[K] (summed in double), d_h[R*P].
#include <cstdint>
#include <cstdio>
#include <vector>

#include "optim4rl_math.h"
#include "scalar_math.h"

namespace {

struct SumAcc {
  double* sum;
  void operator()(int idx, float v) { sum[idx] += v; }
};

bool read(FILE* f, void* dst, size_t bytes) { return fread(dst, 1, bytes, f) == bytes; }

template <int RULE>
int run(FILE* in, FILE* out, float clip, int64_t P) {
  using namespace o4r;
  constexpr int R = hidden_rows<RULE>(), K = meta_size<RULE>();
  std::vector<float> meta(K), g(P), h(R * P), d_dir(P), d_h_new(R * P);
  if (!read(in, meta.data(), 4 * K) || !read(in, g.data(), 4 * P) ||
      !read(in, h.data(), 4 * R * P) || !read(in, d_dir.data(), 4 * P) ||
      !read(in, d_h_new.data(), 4 * R * P))
    return 2;
  std::vector<float> dir(P), h_new(R * P), d_h(R * P), d_meta(K);
  std::vector<double> sum(K, 0.0);
  SumAcc acc{sum.data()};
  for (int64_t i = 0; i < P; ++i) {
    float hv[R], hn[R], dhn[R], dh[R];
    for (int r = 0; r < R; ++r) {
      hv[r] = h[r * P + i];
      dhn[r] = d_h_new[r * P + i];
    }
    Step<float, ScalarMath, RULE> s;
    s.forward(meta.data(), g[i], hv, hn, clip);
    s.backward(meta.data(), d_dir[i], dhn, dh, acc);
    dir[i] = s.direction;
    for (int r = 0; r < R; ++r) {
      h_new[r * P + i] = hn[r];
      d_h[r * P + i] = dh[r];
    }
  }
  for (int k = 0; k < K; ++k) d_meta[k] = static_cast<float>(sum[k]);
  fwrite(dir.data(), 4, P, out);
  fwrite(h_new.data(), 4, R * P, out);
  fwrite(d_meta.data(), 4, K, out);
  fwrite(d_h.data(), 4, R * P, out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return 1;
  FILE* in = fopen(argv[1], "rb");
  FILE* out = fopen(argv[2], "wb");
  if (!in || !out) return 1;
  int32_t rule;
  float clip;
  int64_t P;
  if (!read(in, &rule, 4) || !read(in, &clip, 4) || !read(in, &P, 8)) return 2;
  int rc = 3;  // unknown rule id
  o4r::dispatch_rule(rule, [&](auto tag) { rc = run<decltype(tag)::value>(in, out, clip, P); });
  fclose(in);
  fclose(out);
  return rc;
}
