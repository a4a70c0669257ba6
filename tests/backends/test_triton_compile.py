"""The Triton kernels compile for an H100 (sm_90) on this machine, no GPU needed. The
interpreter tests run the kernels as plain Python; this catches what only the compiler
rejects (the whole pipeline to a cubin, with the launch plan's block sizes)."""
import importlib
import os

import pytest

from optim4rl import rules

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="TRITON_INTERPRET=1: triton interprets, it cannot compile")


def _compile(kernel, arg_types, constexprs, num_warps):
  from triton.backends.compiler import GPUTarget
  from triton.compiler import ASTSource
  signature = {**arg_types, **{name: "constexpr" for name in constexprs}}
  source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
  return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": num_warps})


@pytest.mark.parametrize("rule", ["optim4rl", "linear_optim"])  # two nets; one net, 3 outputs
def test_kernels_compile_for_sm90(rule):
  ks = importlib.import_module("optim4rl.kernels")
  spec, cfg = rules.get_rule(rule), ks.DEFAULT_CONFIG
  const = ks.rule_constexprs(spec)
  ptr, i32 = "*fp32", "i32"
  forward = _compile(ks.forward_kernel,
                     dict(meta_ptr=ptr, g_ptr=ptr, h_ptr=ptr, P=i32, clip="fp32", n_blocks=i32,
                          dir_ptr=ptr, h_new_ptr=ptr),
                     {**const, "BLOCK": cfg.forward_block}, cfg.forward_warps)
  backward = _compile(ks.backward_kernel,
                      dict(meta_ptr=ptr, g_ptr=ptr, h_ptr=ptr, d_dir_ptr=ptr, d_h_new_ptr=ptr,
                           P=i32, clip="fp32", n_blocks=i32, programs=i32, partials_ptr=ptr,
                           d_h_ptr=ptr),
                      {**const, "BLOCK": cfg.backward_block}, cfg.backward_warps)
  reduce = _compile(ks.reduce_kernel, dict(src_ptr=ptr, rows=i32, n_out=i32, dst_ptr=ptr),
                    dict(K=spec.meta_size, ROWS=cfg.reduce_rows, COLS=cfg.reduce_cols), 4)
  for kernel in (forward, backward, reduce):
    assert len(kernel.asm["cubin"]) > 0


@pytest.mark.parametrize("net", ["default", "large"])
def test_open_kernels_compile_for_sm90(net):
  from optim4rl.rules import open as open_spec
  ks = importlib.import_module("optim4rl.kernels")
  cfg, sizes = ks.DEFAULT_OPEN_CONFIG, open_spec.NETS[net]
  ptr, iptr, i32 = "*fp32", "*i32", "i32"
  moments = _compile(ks.moments_kernel,
                     dict(p_ptr=ptr, g_ptr=ptr, m_ptr=ptr, start_ptr=iptr, length_ptr=iptr,
                          P=i32, C=i32, m_new_ptr=ptr, partial_ptr=ptr),
                     {"BLOCK": cfg.block}, cfg.moments_warps)
  network = _compile(ks.network_kernel,
                     dict(meta_ptr=ptr, p_ptr=ptr, g_ptr=ptr, m_new_ptr=ptr, carry_ptr=ptr,
                          dormancy_ptr=ptr, noise_ptr=ptr, start_ptr=iptr, length_ptr=iptr,
                          tensor_ptr=iptr, inv_rms_ptr=ptr, layer_ptr=ptr, actor_ptr=ptr,
                          training_ptr=ptr, batch_ptr=ptr, P=i32, C=i32, T=i32, u_ptr=ptr,
                          carry_new_ptr=ptr),
                     {**ks.open_constexprs(sizes.hidden, sizes.width,
                                           open_spec.flat_size(sizes)), "BLOCK": cfg.block},
                     cfg.network_warps)
  for kernel in (moments, network):
    assert len(kernel.asm["cubin"]) > 0
