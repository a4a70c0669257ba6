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
