"""The roofline's counts follow the rules' shapes; the FMA peak is measured."""
import pytest

from optim4rl.evaluation import roofline


def test_flops_and_bytes_follow_the_rules():
  # Algorithm 1: GRU (2 in, 8 hidden) and MLP 8-16-16-2; GRU (1 in) and MLP 8-16-16-1.
  macs = 3 * 8 * (2 + 8) + 8 * 16 + 16 * 16 + 16 * 2 + 3 * 8 * (1 + 8) + 8 * 16 + 16 * 16 + 16
  assert roofline.flops_per_element("optim4rl") == 2 * macs == 2544
  assert roofline.flops_per_element("linear_optim") == 2 * (3 * 8 * 10 + 8 * 16 + 16 * 16 + 48)
  assert roofline.bytes_per_element("cpu", "optim4rl") == (2 + 2 * 16) * 4
  assert roofline.bytes_per_element("optax.adam", "optim4rl") == 24
  row = roofline.roofline_row("forward", "cpu", "optim4rl", 1e6, peak_gflops=10.0)
  assert row["gflops"] == pytest.approx(2.544) and row["share_of_peak"] == pytest.approx(0.2544)
  assert row["gb_per_s"] == pytest.approx(0.136)
  meta = roofline.roofline_row("meta", "cpu", "optim4rl", 1e6, peak_gflops=None)
  assert meta["gflops"] == pytest.approx(4 * 2.544) and meta["share_of_peak"] is None


def test_cpu_fma_peak_is_measured():
  peak = roofline.cpu_fma_peak()
  if peak is None:
    pytest.skip("no C compiler")
  assert peak["threads"] >= 1 and peak["peak_gflops"] > 0


@pytest.mark.parametrize("backend, residual", [("cpu", 4 + 64), ("cpu:bfloat16", 4 + 32)])
def test_meta_path_keeps_only_gradient_and_hidden_state_per_update(backend, residual):
  """Each further inner update adds exactly the custom VJP's residuals to XLA's working memory
  of the meta path: the gradient (4 bytes) and the 16-row hidden state (64, or 32 in
  bfloat16) per parameter. At M = 4 the bfloat16 state's whole meta path stays within the
  72 bytes per parameter-step of issue 18 (no float32 copy of its residuals)."""
  from optim4rl.evaluation.throughput import meta_path_temp_bytes
  size = 100_000
  at4 = meta_path_temp_bytes(backend, size, steps=4)
  added = meta_path_temp_bytes(backend, size, steps=8) - at4
  assert added / (4 * size) == pytest.approx(residual, abs=0.5)
  if backend == "cpu:bfloat16":
    assert at4 / (4 * size) <= 72
