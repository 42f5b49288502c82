"""Compile lesson 07's Triton kernels for an H100/H200 (sm_90) on a machine without a GPU.

Run by tests/test_flash_attention.py in a subprocess with TRITON_INTERPRET=0, so that @triton.jit
gives real JIT functions (importing course_utils without a GPU would otherwise pick the interpreter).
Triton's compiler needs no GPU to go from Python to PTX and a cubin: this catches code the
interpreter runs but the compiler refuses (a loop over a tuple of bounds did exactly that once).
Prints one JSON line per kernel: name, head dim, causal, compiled stages, and which Hopper
instructions the PTX holds.
"""
import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import course_utils.flash_attention as fa

assert isinstance(fa._attn_fwd, triton.runtime.jit.JITFunction), "run with TRITON_INTERPRET=0"

INTS = {"N_Q", "N_KV", "GROUP", "N_CTX"}
SCALARS = {"sm_scale", "qk_scale"}
FLOAT32 = {"LSE2", "DELTA"}
KERNELS = [("fwd", fa._attn_fwd), ("dkdv", fa._attn_bwd_dkdv), ("dq", fa._attn_bwd_dq),
           ("dkdv_tma", fa._attn_bwd_dkdv_tma), ("dq_tma", fa._attn_bwd_dq_tma)]


def signature(kernel, consts, d):
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.startswith("desc_"):
            rows = consts["BLOCK_N"] if name in fa._KEY_ROWS else consts["BLOCK_M"]
            sig[name] = f"tensordesc<bf16[1,{rows},{d}]>"
        elif name in INTS:
            sig[name] = "i32"
        elif name in SCALARS:
            sig[name] = "fp32"
        else:
            sig[name] = "*fp32" if name in FLOAT32 else "*bf16"
    return sig


def main():
    target = GPUTarget("cuda", 90, 32)
    for d in (64, 128):
        for causal in (False, True):
            for name, kernel in KERNELS:
                bm, bn, warps, stages = fa.TUNING[name][d][0]
                consts = dict(HEAD_DIM=d, CAUSAL=causal, DOT_PRECISION="tf32", BLOCK_M=bm, BLOCK_N=bn)
                src = ASTSource(fn=kernel, signature=signature(kernel, consts, d), constexprs=consts)
                out = triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})
                ptx = out.asm["ptx"]
                print(json.dumps({"kernel": name, "d": d, "causal": causal, "stages": sorted(out.asm),
                                  "wgmma": "wgmma.mma_async" in ptx, "tma": "cp.async.bulk.tensor" in ptx}),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
