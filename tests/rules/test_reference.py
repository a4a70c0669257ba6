"""The pure-JAX reference (the specification): its denormal policy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim4rl import rules
from optim4rl.rules import reference
from conftest import (FLT_MIN, RULE_NAMES, assert_same_bits, denormal_and_zero_gradients,
                      random_problem)


def test_flush_denormal_keeps_the_sign_and_everything_else():
  g = jnp.array([1e-45, -1e-45, FLT_MIN / 2, -FLT_MIN / 2, FLT_MIN, -FLT_MIN, 0.0, -0.0,
                 jnp.inf, -jnp.inf, jnp.nan, 0.5], jnp.float32)
  want = jnp.array([0.0, -0.0, 0.0, -0.0, FLT_MIN, -FLT_MIN, 0.0, -0.0,
                    jnp.inf, -jnp.inf, jnp.nan, 0.5], jnp.float32)
  assert_same_bits(reference.flush_denormal(g), want, "eager")
  assert_same_bits(jax.jit(reference.flush_denormal)(g), want, "jit")


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_denormal_gradients_step_as_zeros_of_their_sign(rule, clip):
  """Whatever the platform's denormal mode: a 1e-45 gradient steps exactly as +0, -1e-45
  as -0, under jit or not."""
  g_denormal, g_zero = denormal_and_zero_gradients()
  spec, meta, _, h = random_problem(rule, g_zero.shape[0], seed=11)
  step = lambda g: reference.step(spec, rules.unflatten_meta(meta, spec), g, h, clip)
  for run in (step, jax.jit(step)):
    want = run(g_zero)
    got = run(g_denormal)
    assert_same_bits(got[0], want[0], "direction")
    assert_same_bits(got[1], want[1], "hidden state")
  d = np.asarray(want[0])
  if rule in ("optim4rl", "optim4rl_public", "l2lgd2"):  # sign-based: zero gradient, no step
    assert np.all(d[:8] == 0.0)
    # FLT_MIN itself is a normal number: it keeps its sign and steps.
    assert d[8] != 0.0 and d[9] != 0.0
