// Scalar math policy for optim4rl_math.h: T = float, one parameter at a time. The CUDA
// backend runs it with one thread per parameter; tests/backends/test_scalar_path.py compiles
// the same code for the host (scalar_step.cc) and checks it against the reference, so the
// CUDA per-element path is tested on machines without a GPU.
#pragma once
#include <math.h>

#include "optim4rl_math.h"

namespace o4r {

struct ScalarMath {
  static O4R_FN float splat(float x) { return x; }
  static O4R_FN float select(bool m, float a, float b) { return m ? a : b; }
  static O4R_FN float exp(float x) { return expf(x); }
  static O4R_FN float log(float x) { return logf(x); }
  static O4R_FN float tanh(float x) { return tanhf(x); }
  static O4R_FN float sqrt(float x) { return sqrtf(x); }
  static O4R_FN float fma(float a, float b, float c) { return fmaf(a, b, c); }
  static O4R_FN float rcp(float x) { return 1.0f / x; }
};

}  // namespace o4r
