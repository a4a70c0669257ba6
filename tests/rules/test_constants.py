"""One source of truth: the constants, the rule table and the flat meta-parameter layout are
written once in optim4rl/rules; every backend's own copy is checked against them here.

  C++/CUDA: the source of csrc/optim4rl_math.h (shared by both), parsed, so an edit fails
            even before a rebuild; and what the compiled libraries report (py_info.h).
  Triton:   the constexprs, rule ids and `_leaf` layout of kernels/step.py, and the sizes
            its launch plan passes to the kernels.
  OPEN:     the constants and flat layout of csrc/open_math.h (source and CPU library)
            against optim4rl/rules/open.py.
"""
import dataclasses
import importlib
import math
import os
import re

import numpy as np
import pytest

from optim4rl import rules
from optim4rl.backends import registry
from optim4rl.rules import constants as C
from optim4rl.rules import open as open_spec

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "csrc")
PLAIN_RULES = {name: spec for name, spec in rules.RULES.items() if not spec.odd}
LEAF_NAMES = tuple(leaf for _, leaf in C.NET_LEAVES)
# Python constant -> name of the copy in the header and in the Triton module.
FLOATS = {"LOG_EPS": ("kLogEps", "LOG_EPS"), "ROOT_EPS": ("kRootEps", "ROOT_EPS"),
          "PUBLIC_ROOT_EPS": ("kPublicRootEps", "PUBLIC_ROOT_EPS"),
          "M_SIGN_BIAS": ("kMSignBias", "M_SIGN_BIAS"), "L2L_P": ("kL2LP", "L2L_P"),
          "EXP_L2L_P": ("kExpL2LP", "EXP_L2L_P"), "FLT_MIN": ("kFltMin", "FLT_MIN")}


def f32(x):
  return np.float32(x)


def expected_constants():
  """The values every backend must have, as the compiled libraries report them."""
  out = {"HIDDEN": C.HIDDEN, "GATES": C.GATES, "MLP_DIMS": tuple(C.MLP_DIMS)}
  out.update({name: f32(getattr(C, name)) for name in FLOATS})
  return out


def expected_rules():
  """{rule name: (kernel id, [(in, out, net offset, net size, {leaf: offset})], rows, K)}."""
  return {name: (spec.kernel_id,
                 [(n_in, n_out, spec.net_offsets[i], spec.net_size(i),
                   {leaf: off for (_, leaf), off in spec.leaf_offsets(i).items()})
                  for i, (n_in, n_out) in enumerate(spec.nets)],
                 spec.hidden_rows, spec.meta_size)
          for name, spec in PLAIN_RULES.items()}


def test_python_table_is_self_consistent():
  assert C.GATES == 3 * C.HIDDEN
  assert f32(C.EXP_L2L_P) == f32(math.exp(C.L2L_P))
  assert f32(C.FLT_MIN) == np.finfo(np.float32).tiny
  for spec in rules.RULES.values():
    plain = PLAIN_RULES[spec.math]  # an odd rule runs its plain rule's kernel on its nets
    assert spec.kernel_id == plain.kernel_id and spec.nets == plain.nets
    assert spec.hidden_rows == C.HIDDEN * len(spec.nets)
    assert tuple(spec.leaf_shapes(0)) == C.NET_LEAVES
  ids = [spec.kernel_id for spec in PLAIN_RULES.values()]
  assert sorted(ids) == list(range(len(ids))), "kernel ids must be 0, 1, ... without gaps"


# ----------------------------------------------------------------------------- C++ / CUDA

def _read(name):
  with open(os.path.join(CSRC, name)) as f:
    return re.sub(r"//[^\n]*", "", f.read())  # comments may mention anything


def parse_header():
  """(constants, {rule name: kernel id}, {kernel id: [(in, out), ...]}, layout function) as
  written in csrc/optim4rl_math.h (rule names from py_info.h's rule_name)."""
  text = _read("optim4rl_math.h")
  consts = {}
  for kind, name, expr in re.findall(r"^constexpr (int|float) (\w+) = ([^;]+);", text, re.M):
    consts[name] = (int(eval(expr, {}, dict(consts))) if kind == "int"  # e.g. G = 3 * H
                    else f32(float(expr.rstrip("f"))))
  enum = re.search(r"enum RuleId : int \{([^}]*)\}", text).group(1)
  ids = {k.strip(): int(v) for k, v in (item.split("=") for item in enum.split(","))}
  names = dict(re.findall(r'case (\w+): return "(\w+)";', _read("py_info.h")))
  rule_ids = {names[k]: v for k, v in ids.items()}
  nets = {}
  pattern = (r"struct RuleNets<(\w+)>\s*\{\s*using N1 = NetLayout<(\d+), (\d+)>;\s*"
             r"using N2 = NetLayout<(\d+), (\d+)>;\s*static constexpr int kNets = (\d+);")
  for rule, i1, o1, i2, o2, k in re.findall(pattern, text):
    nets[ids[rule]] = [(int(i1), int(o1)), (int(i2), int(o2))][:int(k)]
  body = re.search(r"struct NetLayout \{(.*?)\};", text, re.S).group(1)
  fields = re.findall(r"static constexpr int (\w+) = ([^;,]+);", body)

  def layout(n_in, n_out):
    """{leaf: offset} and the size of NetLayout<n_in, n_out>, evaluated from the source."""
    env = {"IN": n_in, "OUT": n_out, "H": consts["H"], "G": consts["G"], "D1": consts["D1"],
           "D2": consts["D2"]}
    for name, expr in fields:
      env[name] = int(eval(expr, {}, env))
    return {leaf: env[leaf] for leaf in LEAF_NAMES}, env["size"], [n for n, _ in fields]
  return consts, rule_ids, nets, layout


def test_header_constants_match_rules():
  consts, _, _, _ = parse_header()
  assert consts["H"] == C.HIDDEN and consts["G"] == C.GATES
  assert (consts["D1"], consts["D2"]) == tuple(C.MLP_DIMS)
  for name, (cpp, _) in FLOATS.items():
    assert consts[cpp] == f32(getattr(C, name)), (cpp, consts[cpp], getattr(C, name))


def test_header_rule_table_and_layout_match_rules():
  _, rule_ids, nets, layout = parse_header()
  assert rule_ids == {name: spec.kernel_id for name, spec in PLAIN_RULES.items()}
  for name, spec in PLAIN_RULES.items():
    assert nets[spec.kernel_id] == list(spec.nets), name
    for i, (n_in, n_out) in enumerate(spec.nets):
      offsets, size, order = layout(n_in, n_out)
      assert [n for n in order if n in LEAF_NAMES] == list(LEAF_NAMES), "leaf order"
      want = {leaf: off for (_, leaf), off in spec.leaf_offsets(i).items()}
      assert offsets == want and size == spec.net_size(i), (name, i)


def _library_report(lib):
  consts = lib.constants()
  consts = {k: (tuple(v) if k == "MLP_DIMS" else v if isinstance(v, int) else f32(v))
            for k, v in consts.items()}
  table = {name: (r["id"], [(n["in"], n["out"], n["offset"], n["size"], dict(n["leaf_offsets"]))
                            for n in r["nets"]], r["hidden_rows"], r["meta_size"])
           for name, r in lib.rules().items()}
  return consts, table


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_compiled_library_matches_rules(backend):
  """What the library was compiled with (a stale build fails here, the source above)."""
  lib = registry.LIBRARIES[backend]()
  if lib is None:
    if backend == "cpu":  # the CPU library is always built by pip install -e .
      pytest.fail("optim4rl._cpu is not built: pip install --no-build-isolation -e .")
    pytest.skip("optim4rl._cuda is not built (no nvcc at install time)")
  consts, table = _library_report(lib)
  assert consts == expected_constants()
  assert table == expected_rules()
  for name, spec in PLAIN_RULES.items():
    assert lib.meta_size(spec.kernel_id) == spec.meta_size
    assert lib.hidden_rows(spec.kernel_id) == spec.hidden_rows


# ----------------------------------------------------------------------------- Triton

@pytest.fixture(scope="module")
def triton_step():
  pytest.importorskip("triton")
  return importlib.import_module("optim4rl.kernels.step")


def _value(x):
  return getattr(x, "value", x)  # tl.constexpr -> its Python value


def test_triton_constants_match_rules(triton_step):
  ks = triton_step
  assert _value(ks.H) == C.HIDDEN and _value(ks.G) == C.GATES
  assert (_value(ks.D1), _value(ks.D2)) == tuple(C.MLP_DIMS)
  for name, (_, triton_name) in FLOATS.items():
    got = _value(getattr(ks, triton_name))
    assert f32(got) == f32(getattr(C, name)), (triton_name, got, getattr(C, name))


def test_triton_rule_ids_and_layout_match_rules(triton_step):
  ks = triton_step
  # Every rule id constexpr is named after its rule (OPTIM4RL_PUBLIC: optim4rl_public).
  ids = {name: _value(getattr(ks, name.upper())) for name in PLAIN_RULES}
  assert ids == {name: spec.kernel_id for name, spec in PLAIN_RULES.items()}
  for name, spec in PLAIN_RULES.items():
    for i, (n_in, n_out) in enumerate(spec.nets):
      got = {leaf: _value(ks._leaf(leaf, n_in, n_out)) for leaf in LEAF_NAMES}
      want = {leaf: off for (_, leaf), off in spec.leaf_offsets(i).items()}
      assert got == want, (name, i)
      assert _value(ks._leaf("end", n_in, n_out)) == spec.net_size(i)


def _recorded_launches(ks, rule):
  calls = []

  def launch(kernel, grid, num_warps, args, out_shapes, **constexprs):
    calls.append((kernel, constexprs))
    return tuple(np.zeros(s, np.float32) for s in out_shapes)
  meta = np.zeros((1, rule.meta_size), np.float32)
  g, h = np.zeros((1, 40), np.float32), np.zeros((1, rule.hidden_rows, 40), np.float32)
  ks.forward(launch, rule, meta, g, h, 1.0, 1, 40)
  ks.backward(launch, rule, meta, g, h, g, h, 1.0, 1, 40, ks.Config(backward_programs=2))
  return calls


@pytest.mark.parametrize("name", PLAIN_RULES)
def test_triton_launch_plan_takes_net_sizes_from_the_rule(triton_step, name):
  ks, spec = triton_step, PLAIN_RULES[name]
  (in1, out1), (in2, out2) = spec.nets[0], (spec.nets + ((0, 0),))[1]
  want = dict(RULE=spec.kernel_id, IN1=in1, OUT1=out1, IN2=in2, OUT2=out2,
              ROWS=spec.hidden_rows, K=spec.meta_size)
  calls = _recorded_launches(ks, spec)
  assert [c[0] for c in calls] == [ks.forward_kernel, ks.backward_kernel, ks.reduce_kernel]
  for _, constexprs in calls[:2]:
    assert {k: constexprs[k] for k in want} == want
  assert calls[2][1]["K"] == spec.meta_size
  # Nothing hard-coded: other sizes in the table reach the kernels as they are.
  other = dataclasses.replace(spec, nets=((3, 5),))
  forward = _recorded_launches(ks, other)[0][1]
  assert (forward["IN1"], forward["OUT1"], forward["IN2"], forward["OUT2"]) == (3, 5, 0, 0)
  assert (forward["K"], forward["ROWS"]) == (other.meta_size, C.HIDDEN)


# ----------------------------------------------------------------------------- OPEN

OPEN_FLOATS = {"LOG_EPS": "kLogEps", "NORM_EPS": "kNormEps", "LAYER_NORM_EPS": "kLayerNormEps",
               "UPDATE_SCALE": "kUpdateScale"}
OPEN_INTS = {"NORMALISED": "kNormalised", "FEATURES": "kFeatures", "OUTPUTS": "kOutputs"}


def open_offsets(net):
  """{"group/layer/leaf": offset} and the size of optim4rl/rules/open.py's published layout."""
  offsets, at = {}, 0
  for (group, layer, leaf), shape in open_spec.layout(net):
    offsets[f"{group}/{layer}/{leaf}"] = at
    at += math.prod(shape)
  return offsets, at


def parse_open_header():
  """(constants, decays, layout function) as written in csrc/open_math.h."""
  text = _read("open_math.h")
  value = lambda name: re.search(rf"\b{name} = ([^;,]+)[;,]", text).group(1).strip()
  consts = {name: f32(float(value(cpp).rstrip("f"))) for name, cpp in OPEN_FLOATS.items()}
  consts.update({name: int(value(cpp)) for name, cpp in OPEN_INTS.items()})
  consts.update({name: int(value(name)) for name in ("kTraining", "kDormancy", "kMomenta")})
  decays = re.search(r"kDecays\[kMomenta\] = \{([^}]*)\}", text).group(1)
  decays = tuple(f32(float(x.strip().rstrip("f"))) for x in decays.split(","))
  body = re.search(r"struct OpenLayout \{(.*?)\};", text, re.S).group(1)
  fields = [f for f in re.findall(r"static constexpr int (\w+) = ([^;,]+);", body)]

  def layout(net):
    env = {"HID": net.hidden, "WID": net.width, "kFeatures": consts["FEATURES"],
           "kOutputs": consts["OUTPUTS"]}
    offsets = {}
    for name, expr in fields:
      env[name] = int(eval(expr, {}, env))
      if name != "size":
        layer, leaf = name.rsplit("_", 1)
        group = "gru" if layer in ("hn", "hr", "hz", "in", "ir", "iz") else "mlp"
        offsets[f"{group}/{layer}/{leaf}"] = env[name]
    return offsets, env["size"]
  return consts, decays, layout


def expected_open_constants():
  out = {name: f32(getattr(open_spec, name)) for name in OPEN_FLOATS}
  out.update({name: getattr(open_spec, name) for name in OPEN_INTS})
  return out


def test_open_header_matches_rules():
  consts, decays, layout = parse_open_header()
  assert {k: consts[k] for k in (*OPEN_FLOATS, *OPEN_INTS)} == expected_open_constants()
  assert decays == tuple(f32(b) for b in open_spec.DECAYS)
  assert consts["kMomenta"] == len(open_spec.DECAYS)
  # The raw features follow the normalised ones: training, layer, batch, dormancy.
  assert consts["kTraining"] == open_spec.NORMALISED
  assert consts["kDormancy"] == open_spec.FEATURES - 1
  for net in open_spec.NETS.values():
    offsets, size = layout(net)
    want, want_size = open_offsets(net)
    assert list(offsets) == list(want), "leaf order"
    assert offsets == want and size == want_size == open_spec.flat_size(net), net


def test_compiled_library_reports_open_as_rules():
  """OPEN's constants and layout as the CPU library was compiled with them."""
  lib = registry.LIBRARIES["cpu"]()
  if lib is None:
    pytest.fail("optim4rl._cpu is not built: pip install --no-build-isolation -e .")
  if not hasattr(lib, "open_constants"):
    pytest.fail("optim4rl._cpu predates the OPEN kernel: pip install --no-build-isolation -e .")
  consts = lib.open_constants()
  got = {name: f32(consts[name]) for name in OPEN_FLOATS}
  got.update({name: consts[name] for name in OPEN_INTS})
  assert got == expected_open_constants()
  assert tuple(f32(b) for b in consts["DECAYS"]) == tuple(f32(b) for b in open_spec.DECAYS)
  assert {tuple(n) for n in consts["NETS"]} == set(open_spec.NETS.values())
  for net in open_spec.NETS.values():
    report = dict(lib.open_layout(*net))
    size = report.pop("size")
    want, want_size = open_offsets(net)
    assert report == want and size == want_size, net
  assert lib.open_layout(8, 32) is None


def test_triton_open_constants_and_layout_match_rules():
  pytest.importorskip("triton")
  ks = importlib.import_module("optim4rl.kernels.open_step")
  for name in ("LOG_EPS", "LAYER_NORM_EPS", "UPDATE_SCALE"):
    assert f32(_value(getattr(ks, name))) == f32(getattr(open_spec, name)), name
  assert tuple(f32(b) for b in ks.DECAYS) == tuple(f32(b) for b in open_spec.DECAYS)
  assert _value(ks.MOMENTA) == len(open_spec.DECAYS)
  assert _value(ks.FEATURES) == open_spec.FEATURES and _value(ks.OUTPUTS) == open_spec.OUTPUTS
  assert (_value(ks.TRAINING), _value(ks.LAYER), _value(ks.BATCH), _value(ks.DORMANCY)) == (
      open_spec.NORMALISED, open_spec.NORMALISED + 1, open_spec.NORMALISED + 2,
      open_spec.FEATURES - 1)
  assert _value(ks.F) == open_spec.NORMALISED + 1  # the feature tile: 15 and the dormancy
  offset = getattr(ks._offset, "fn", ks._offset)  # the plain function behind the decorator
  for net in open_spec.NETS.values():
    want, size = open_offsets(net)
    assert {name: offset(name, *net) for name in want} == want, net
    assert offset("size", *net) == size == open_spec.flat_size(net)
    assert ks.open_constexprs(*net, size)["K"] == size
