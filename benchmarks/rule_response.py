"""How a learned rule responds to synthetic gradient streams, next to Adam and RMSProp
(not a test): per-parameter gradients mag * (snr + N(0, 1)), 300 steps at learning rate 1;
over the last 200 steps, the mean step along the signal (drift) and the step's RMS.
A rule with momentum (Adam) moves little on pure noise (snr 0); a per-step one (RMSProp)
moves about 1 per step whatever the signal.

  python benchmarks/rule_response.py RULE:PATH [...] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json

import jax.numpy as jnp
import numpy as np

from optim4rl.evaluation.specs import make_optimizer
from optim4rl.evaluation.throughput import machine_info

SNRS = (0.0, 0.1, 0.3, 1.0)


def response(tx, snr: float, mag: float = 1e-3, params: int = 4096, steps: int = 300):
  rng = np.random.default_rng(0)
  p = jnp.zeros((params,), jnp.float32)
  state, steps_taken = tx.init(p), []
  for _ in range(steps):
    g = jnp.asarray(mag * (snr + rng.standard_normal(params)), jnp.float32)
    u, state = tx.update(g, state, p)
    steps_taken.append(-np.asarray(u))
  late = np.stack(steps_taken[steps // 3:])
  return float(late.mean()), float(late.std())


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("rules", nargs="*", help="learned optimizers as RULE:PATH")
  ap.add_argument("--out", default="benchmarks/results/rule_response_cpu.json")
  args = ap.parse_args()
  optimizers = {spec: make_optimizer(spec, 1.0) for spec in ("adam", "rmsprop", *args.rules)}
  rows = []
  print(f"{'optimizer':<60} " + " ".join(f"snr {s}: drift / rms".rjust(22) for s in SNRS))
  for name, tx in optimizers.items():
    figures = {str(s): dict(zip(("drift", "rms"), response(tx, s))) for s in SNRS}
    rows.append({"optimizer": name, "response": figures})
    print(f"{name:<60} " + " ".join(f"{f['drift']:>10.3f} / {f['rms']:<9.3f}"
                                     for f in figures.values()))
  with open(args.out, "w") as f:
    json.dump({"benchmark": "rule_response", "machine": machine_info(), "learning_rate": 1.0,
               "gradient": "1e-3 * (snr + N(0, 1)), 300 steps, last 200 measured",
               "rows": rows}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
