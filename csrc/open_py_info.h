// What a compiled library was built with for OPEN, for Python: the constants and the flat
// meta-parameter layout of open_math.h. tests/rules/test_constants.py compares them with
// optim4rl/rules/open.py, the one source of truth.
#pragma once
#include <pybind11/pybind11.h>

#include "open_math.h"

namespace o4r::open {

inline pybind11::dict constants_info() {
  pybind11::dict d;
  pybind11::list decays;
  for (int k = 0; k < kMomenta; ++k) decays.append(decay(k));
  d["DECAYS"] = pybind11::tuple(decays);
  d["LOG_EPS"] = kLogEps;
  d["NORM_EPS"] = kNormEps;
  d["LAYER_NORM_EPS"] = kLayerNormEps;
  d["UPDATE_SCALE"] = kUpdateScale;
  d["NORMALISED"] = kNormalised;
  d["FEATURES"] = kFeatures;
  d["OUTPUTS"] = kOutputs;
  d["NETS"] = pybind11::make_tuple(pybind11::make_tuple(8, 16), pybind11::make_tuple(16, 32));
  return d;
}

// {"gru/hn/bias": offset, ...} in the published order, and "size"; None for a network the
// kernels do not support.
inline pybind11::object layout_info(int hidden, int width) {
  pybind11::object out = pybind11::none();
  dispatch_net(hidden, width, [&](auto layout) {
    using L = decltype(layout);
    pybind11::dict d;
    d["gru/hn/bias"] = L::hn_bias;
    d["gru/hn/kernel"] = L::hn_kernel;
    d["gru/hr/kernel"] = L::hr_kernel;
    d["gru/hz/kernel"] = L::hz_kernel;
    d["gru/in/bias"] = L::in_bias;
    d["gru/in/kernel"] = L::in_kernel;
    d["gru/ir/bias"] = L::ir_bias;
    d["gru/ir/kernel"] = L::ir_kernel;
    d["gru/iz/bias"] = L::iz_bias;
    d["gru/iz/kernel"] = L::iz_kernel;
    d["mlp/dense0/bias"] = L::dense0_bias;
    d["mlp/dense0/kernel"] = L::dense0_kernel;
    d["mlp/norm0/bias"] = L::norm0_bias;
    d["mlp/norm0/scale"] = L::norm0_scale;
    d["mlp/dense1/bias"] = L::dense1_bias;
    d["mlp/dense1/kernel"] = L::dense1_kernel;
    d["mlp/norm1/bias"] = L::norm1_bias;
    d["mlp/norm1/scale"] = L::norm1_scale;
    d["mlp/dense2/bias"] = L::dense2_bias;
    d["mlp/dense2/kernel"] = L::dense2_kernel;
    d["size"] = L::size;
    out = d;
  });
  return out;
}

inline void add_info(pybind11::module_& m) {
  m.def("open_constants", &constants_info, "OPEN's constants this library was compiled with");
  m.def("open_layout", &layout_info, pybind11::arg("hidden"), pybind11::arg("width"),
        "OPEN's flat meta-parameter offsets for a network (None if unsupported)");
}

}  // namespace o4r::open
