"""The cpu kernels' executed instruction mix per parameter, and the rates it allows (not a
test).

Builds benchmarks/kernel_ops/driver.cc (the kernels' per-element code, -O3 -march=native as
the library) and runs it under valgrind's callgrind, which counts every executed instruction
by address; objdump names them. Per block of W parameters (one SIMD register each) that is
per parameter in vector instructions. The multiply-class ones (FMA and multiply) issue on the
FP multiply pipes, whose rate is what `cpu_fma_peak` measures, so
  ceiling = (FMA instructions per second at the measured peak) x W / (multiply-class per block)
is the most params/s (forward) or param-steps/s (meta path: one forward and one backward
kernel per parameter-step) this instruction mix allows on this machine, before any stall.

  python benchmarks/kernel_ops.py [--out benchmarks/results/kernel_ops_cpu.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile

from optim4rl.evaluation.roofline import cpu_fma_peak
from optim4rl.evaluation.throughput import machine_info

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")
CLASSES = {"multiply (FMA, mul)": r"vf(n)?m(add|sub)\d*ps$|vmulps$",
           "add, sub, min, max": r"v(add|sub|min|max)ps$", "divide": r"vdivps$",
           "broadcast load": r"vbroadcastss$", "vector move": r"vmov(aps|ups)$"}


def opcodes(binary: str) -> dict[int, str]:
  out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True,
                       text=True, check=True).stdout
  return {int(m.group(1), 16): m.group(2)
          for m in re.finditer(r"^\s+([0-9a-f]+):\s+(\S+)", out, re.M)}


def executed(binary: str, function: str, ops: dict[int, str]) -> collections.Counter:
  """Executed instructions of `function` (callees included) by opcode."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "cg.out")
    subprocess.run(["valgrind", "--tool=callgrind", "--dump-instr=yes", "--collect-atstart=no",
                    f"--toggle-collect={function}*", f"--callgrind-out-file={path}", binary],
                   capture_output=True, check=True)
    counts, addr, after_call = collections.Counter(), 0, False
    for line in open(path):
      if line.startswith("calls="):
        after_call = True  # the next cost line is the callee's inclusive cost: counted there
        continue
      if not line[:1] or line[0] not in "0123456789+-*":
        continue
      pos, *rest = line.split()
      if pos.startswith("0x"):
        addr = int(pos, 16)
      elif pos[0] in "+-":
        addr += int(pos, 0)
      if after_call:
        after_call = False
        continue
      if len(rest) == 2:  # positions "instr line", one event (Ir)
        counts[ops.get(addr, "?")] += int(rest[1])
    return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="benchmarks/results/kernel_ops_cpu.json")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    binary = os.path.join(tmp, "driver")
    subprocess.run(["g++", "-std=c++17", "-O3", "-march=native", "-fno-math-errno", "-no-pie",
                    f"-I{CSRC}", os.path.join(HERE, "kernel_ops", "driver.cc"), "-o", binary],
                   check=True)
    lanes, params, _ = subprocess.run([binary], capture_output=True, text=True,
                                      check=True).stdout.split()
    lanes = int(lanes)
    ops = opcodes(binary)
    blocks = int(params) // lanes
    mix = {}
    for name, function in (("forward", "fwd_blocks"), ("backward", "fwdbwd_blocks")):
      counts = executed(binary, function, ops)
      row = {"instructions": sum(counts.values()) / blocks}
      row.update({k: sum(v for op, v in counts.items() if re.match(p, op)) / blocks
                  for k, p in CLASSES.items()})
      mix[name] = row
  peak = cpu_fma_peak()
  fma_per_s = peak["peak_gflops"] * 1e9 / (2 * lanes)  # FMA instructions per second
  mult = lambda kind: mix[kind]["multiply (FMA, mul)"]
  ceilings = {"forward_params_per_s": fma_per_s * lanes / mult("forward"),
              "meta_param_steps_per_s": fma_per_s * lanes / (mult("forward") + mult("backward"))}
  print(f"executed instructions per block of {lanes} parameters (vector ones: per parameter):")
  print(f"{'':10s} " + " ".join(f"{k:>20s}" for k in ["all"] + list(CLASSES)))
  for kind, row in mix.items():
    print(f"{kind:10s} " + " ".join(f"{v:20.0f}" for v in row.values()))
  print(f"measured FMA peak {peak['peak_gflops']:.0f} GFLOP/s = {fma_per_s / 1e9:.2f} G FMA "
        f"instructions/s; ceiling of this mix: forward "
        f"{ceilings['forward_params_per_s'] / 1e6:.1f} M params/s, meta path "
        f"{ceilings['meta_param_steps_per_s'] / 1e6:.1f} M param-steps/s")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"benchmark": "kernel_ops", "machine": machine_info(), "lanes": lanes,
               "per_block": mix, "fma_peak": peak, "ceilings": ceilings}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
