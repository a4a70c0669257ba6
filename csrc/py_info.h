// What a compiled library was built with, for Python: the constants, rule ids, nets and the
// flat meta-parameter layout of optim4rl_math.h. tests/rules/test_constants.py compares them
// with optim4rl/rules, the one source of truth. Included by cpu_ffi.cc and cuda_ffi.cu.
#pragma once
#include <pybind11/pybind11.h>

#include "ffi_common.h"
#include "optim4rl_math.h"

namespace o4r {

// The Python name (optim4rl.rules.RULES) of each kernel's rule id.
inline const char* rule_name(int rule) {
  switch (rule) {
    case kOptim4RL: return "optim4rl";
    case kOptim4RLPublic: return "optim4rl_public";
    case kLinearOptim: return "linear_optim";
    case kL2LGD2: return "l2lgd2";
  }
  return nullptr;
}

template <class L>
pybind11::dict net_info(int offset) {
  pybind11::dict d, leaves;
  d["in"] = L::kIn;
  d["out"] = L::kOut;
  d["offset"] = offset;
  d["size"] = L::size;
  leaves["wx"] = L::wx;
  leaves["wh"] = L::wh;
  leaves["bx"] = L::bx;
  leaves["bh"] = L::bh;
  leaves["w1"] = L::w1;
  leaves["b1"] = L::b1;
  leaves["w2"] = L::w2;
  leaves["b2"] = L::b2;
  leaves["w3"] = L::w3;
  leaves["b3"] = L::b3;
  d["leaf_offsets"] = leaves;
  return d;
}

// {name: {id, nets: [{in, out, offset, size, leaf_offsets}], hidden_rows, meta_size}} for
// every rule id the dispatcher knows (ids 0..63 are probed, so an id missing from
// rule_name shows up as a None key rather than silently).
inline pybind11::dict rules_info() {
  pybind11::dict out;
  for (int id = 0; id < 64; ++id) {
    dispatch_rule(id, [&](auto tag) {
      constexpr int R = decltype(tag)::value;
      using N = RuleNets<R>;
      pybind11::dict d;
      pybind11::list nets;
      nets.append(net_info<typename N::N1>(0));
      if constexpr (N::kNets == 2) nets.append(net_info<typename N::N2>(N::N1::size));
      d["id"] = R;
      d["nets"] = nets;
      d["hidden_rows"] = hidden_rows<R>();
      d["meta_size"] = meta_size<R>();
      const char* name = rule_name(R);
      if (name) {
        out[name] = d;
      } else {
        out[pybind11::none()] = d;
      }
    });
  }
  return out;
}

inline pybind11::dict constants_info() {
  pybind11::dict d;
  d["HIDDEN"] = H;
  d["GATES"] = G;
  d["MLP_DIMS"] = pybind11::make_tuple(D1, D2);
  d["LOG_EPS"] = kLogEps;
  d["ROOT_EPS"] = kRootEps;
  d["PUBLIC_ROOT_EPS"] = kPublicRootEps;
  d["M_SIGN_BIAS"] = kMSignBias;
  d["L2L_P"] = kL2LP;
  d["EXP_L2L_P"] = kExpL2LP;
  d["FLT_MIN"] = kFltMin;
  return d;
}

inline void add_info(pybind11::module_& m) {
  m.def("meta_size", &meta_size_of, "flat meta-parameter count of a rule id");
  m.def("hidden_rows", &hidden_rows_of, "hidden-state rows of a rule id");
  m.def("constants", &constants_info, "the constants this library was compiled with");
  m.def("rules", &rules_info, "rule ids, nets and flat meta-parameter layout, by rule name");
}

}  // namespace o4r
