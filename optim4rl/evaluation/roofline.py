"""How close a backend's step is to the machine's limits: the work and the memory traffic of
one learned-optimizer step per parameter, and the CPU's measured fp32 FMA peak.

Work: multiply-adds of each net of the rule (GRU: 3 gates x hidden x (inputs + hidden); MLP
hidden -> 16 -> 16 -> outputs), two flops each; the ~50 transcendental evaluations per
parameter are not counted, so achieved GFLOP/s are a lower bound. The meta path (grad through
M updates) runs the forward, then a backward that recomputes it: counted as 4 forwards per
parameter-step (forward, recomputation, and twice the forward's work for the cotangents).
Traffic: the least a forward step must move: read g and the hidden state, write the direction
and the new hidden state, (2 + 2 rows) x 4 bytes per parameter, 2 x 4 + 2 rows x 2 with the
bfloat16 hidden state ("cpu:bfloat16"; optax.adam: g, mu, nu in, updates, mu, nu out, 24).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

from optim4rl.rules import get_rule
from optim4rl.rules.constants import GATES, HIDDEN, MLP_DIMS

META_PATH_FORWARDS = 4  # forward + recomputation + backward (2x): see the module docstring


def flops_per_element(rule: str) -> int:
  """Flops of one forward step per parameter (multiply-adds x 2) of `rule`'s nets."""
  d1, d2 = MLP_DIMS
  macs = sum(GATES * (n_in + HIDDEN) + HIDDEN * d1 + d1 * d2 + d2 * n_out
             for n_in, n_out in get_rule(rule).nets)
  return 2 * macs


def bytes_per_element(backend: str, rule: str) -> int:
  """The least a forward step reads and writes per parameter."""
  if backend == "optax.adam":
    return 6 * 4
  hidden_bytes = 2 if backend.endswith(":bfloat16") else 4
  return 2 * 4 + 2 * get_rule(rule).hidden_rows * hidden_bytes


# One register width of this machine per vector, and as many independent chains as fit in its
# registers: wider generic vectors than the registers, or more chains than registers, measure
# spills and scalarised code instead of the FMA units (10.5 GFLOP/s instead of 172 on AVX2).
_PEAK_SOURCE = r"""
#include <omp.h>
#include <stdio.h>
#if defined(__AVX512F__)
#define LANES 16
#define CHAINS 16
#elif defined(__AVX__)
#define LANES 8
#define CHAINS 10
#else
#define LANES 4
#define CHAINS 10
#endif
typedef float vec __attribute__((vector_size(4 * LANES)));
int main(void) {
  const long iters = ITERS;
  double best = 1e30;
  float sink = 0;
  for (int rep = 0; rep < 3; ++rep) {  /* the best of three: a VM's neighbours come and go */
  double t0 = omp_get_wtime();
  #pragma omp parallel reduction(+:sink)
  {
    vec acc[CHAINS], a, b;
    for (int i = 0; i < LANES; ++i) { a[i] = 0.999999f; b[i] = 1e-7f; }
    for (int c = 0; c < CHAINS; ++c) acc[c] = a * (float)c;
    for (long it = 0; it < iters; ++it)
      for (int c = 0; c < CHAINS; ++c) acc[c] = acc[c] * a + b;
    for (int c = 0; c < CHAINS; ++c) for (int i = 0; i < LANES; ++i) sink += acc[c][i];
  }
  double secs = omp_get_wtime() - t0;
  if (secs < best) best = secs;
  }
  printf("%d %.6f %d %d %g\n", omp_get_max_threads(), best, LANES, CHAINS, sink);
  return 0;
}
"""
_PEAK_ITERS = 100_000_000


@functools.cache
def cpu_fma_peak() -> dict | None:
  """{"threads", "seconds", "peak_gflops"}: fp32 FMA throughput of this CPU on all cores,
  measured by a small C loop (independent FMA chains on -march=native vectors, one OpenMP
  thread per core; the best of three runs); None without a C compiler."""
  cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
  if cc is None:
    return None
  with tempfile.TemporaryDirectory() as tmp:
    src, exe = os.path.join(tmp, "peak.c"), os.path.join(tmp, "peak")
    with open(src, "w") as f:
      f.write(_PEAK_SOURCE.replace("ITERS", str(_PEAK_ITERS)))
    subprocess.run([cc, "-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", src, "-o",
                    exe], check=True, capture_output=True)
    threads, secs, lanes, chains, _ = subprocess.run([exe], capture_output=True, text=True,
                                                     check=True).stdout.split()
  flops = int(threads) * _PEAK_ITERS * int(chains) * int(lanes) * 2
  return {"threads": int(threads), "seconds": float(secs),
          "peak_gflops": flops / float(secs) / 1e9}


def roofline_row(kind: str, backend: str, rule: str, rate: float,
                 peak_gflops: float | None) -> dict:
  """Achieved GFLOP/s, share of the peak, bytes per parameter and GB/s of a measured rate
  (params/s forward, param-steps/s on the meta path)."""
  if backend == "optax.adam":
    flops = 0  # a handful per parameter: not the point of the comparison
  else:
    flops = flops_per_element(rule) * (META_PATH_FORWARDS if kind == "meta" else 1)
  gflops = rate * flops / 1e9
  row = {"gflops": gflops, "share_of_peak": gflops / peak_gflops if peak_gflops else None}
  if kind == "forward":
    moved = bytes_per_element(backend, rule)
    row.update(bytes_per_param=moved, gb_per_s=rate * moved / 1e9)
  return row
