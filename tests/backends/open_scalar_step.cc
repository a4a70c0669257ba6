// Host build of the CUDA backend's OPEN path: the per-thread functions of csrc/open_math.h
// (moments_element, stage_weights, network_element) with ScalarMath, chunk by chunk as
// open_cuda_ffi.cu runs them (its thread loop made a plain loop), in plain IEEE float.
// test_scalar_path.py runs it as the two stages of the GPU plan.
//
// Usage: open_scalar_step moments|network IN OUT. One batch entry; float32 unless said.
//   moments IN: int64 P, C; p[P], g[P], momenta[6 P], int32 start[C], int32 length[C].
//           OUT: momenta_new[6 P], partials[C 16] (each chunk's sums, in element order).
//   network IN: int32 hidden, width; int64 P, C, T; meta[K], p[P], g[P], momenta_new[6 P],
//           carry[H P], dormancy[P], noise[P], int32 start[C], length[C], tensor[C],
//           inv_rms[T 16], layer[T], actor[T], training, batch.
//           OUT: u[P], carry_new[H P].
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "open_math.h"
#include "scalar_math.h"

namespace {

using namespace o4r::open;
using o4r::ScalarMath;

template <class X>
bool read(FILE* f, std::vector<X>& v, int64_t n) {
  v.resize(n);
  return fread(v.data(), sizeof(X), n, f) == static_cast<size_t>(n);
}
template <class X>
bool read(FILE* f, X* x) { return fread(x, sizeof(X), 1, f) == 1; }
template <class X>
void write(FILE* f, const std::vector<X>& v) { fwrite(v.data(), sizeof(X), v.size(), f); }

int moments(FILE* in, FILE* out) {
  int64_t P, C;
  std::vector<float> p, g, momenta;
  std::vector<int32_t> start, length;
  if (!read(in, &P) || !read(in, &C) || !read(in, p, P) || !read(in, g, P) ||
      !read(in, momenta, kMomenta * P) || !read(in, start, C) || !read(in, length, C))
    return 2;
  std::vector<float> momenta_new(kMomenta * P), partials(C * 16, 0.0f);
  for (int64_t c = 0; c < C; ++c) {
    for (int e = 0; e < length[c]; ++e) {
      float x[kNormalised];
      moments_element<ScalarMath>(p.data(), g.data(), momenta.data(), P, start[c] + e,
                                  momenta_new.data(), x);
      for (int f = 0; f < kNormalised; ++f) partials[c * 16 + f] += x[f] * x[f];
    }
  }
  write(out, momenta_new);
  write(out, partials);
  return 0;
}

template <int HID, int WID>
int network(FILE* in, FILE* out) {
  using L = OpenLayout<HID, WID>;
  int64_t P, C, T;
  std::vector<float> meta, p, g, momenta_new, carry, dormancy, noise, inv_rms, layer, actor;
  std::vector<int32_t> start, length, tensor;
  float training, batch;
  if (!read(in, &P) || !read(in, &C) || !read(in, &T) || !read(in, meta, L::size) ||
      !read(in, p, P) || !read(in, g, P) || !read(in, momenta_new, kMomenta * P) ||
      !read(in, carry, HID * P) || !read(in, dormancy, P) || !read(in, noise, P) ||
      !read(in, start, C) || !read(in, length, C) || !read(in, tensor, C) ||
      !read(in, inv_rms, T * 16) || !read(in, layer, T) || !read(in, actor, T) ||
      !read(in, &training) || !read(in, &batch))
    return 2;
  std::vector<float> u(P), carry_new(HID * P);
  Weights<HID, WID> w;
  TensorWeights<HID> tw;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t t = tensor[c];
    stage_weights<HID, WID>(meta.data(), inv_rms.data() + t * 16, training, layer[t], batch,
                            actor[t], 0, 1, w, tw);
    for (int e = 0; e < length[c]; ++e) {
      const int64_t i = start[c] + e;
      u[i] = network_element<ScalarMath, HID, WID>(
          w, tw, p.data(), g.data(), momenta_new.data(), carry.data(), dormancy.data(),
          noise.data(), P, i, carry_new.data());
    }
  }
  write(out, u);
  write(out, carry_new);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return 1;
  FILE* in = fopen(argv[2], "rb");
  FILE* out = fopen(argv[3], "wb");
  if (!in || !out) return 1;
  int rc = 3;
  if (std::strcmp(argv[1], "moments") == 0) {
    rc = moments(in, out);
  } else if (std::strcmp(argv[1], "network") == 0) {
    int32_t hidden, width;
    if (!read(in, &hidden) || !read(in, &width)) return 2;
    dispatch_net(hidden, width, [&](auto layout) {
      using N = decltype(layout);
      rc = network<N::kHidden, N::kWidth>(in, out);
    });
  }
  fclose(in);
  fclose(out);
  return rc;
}
