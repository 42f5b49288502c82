"""Compile the course's Triton kernels (lesson 06 or 07) for an H100/H200 (sm_90) without a GPU.

    TRITON_INTERPRET=0 python tests/_compile_for_hopper.py 07      # or 06

Run by tests/test_flash_attention.py and tests/test_triton_basics.py in a subprocess with
TRITON_INTERPRET=0, so that @triton.jit
gives real JIT functions (importing course_utils without a GPU would otherwise pick the interpreter).
Triton's compiler needs no GPU to go from Python to PTX and a cubin: this catches code the
interpreter runs but the compiler refuses (a loop over a tuple of bounds did exactly that once).
Prints one JSON line per kernel: name, head dim, causal, compiled stages, which Hopper
instructions the PTX holds, registers and stack bytes per thread (cuobjdump on the cubin), and a fingerprint of the PTX's instructions (line info and debug labels
left out): run it at two commits to see whether a refactor changed the code the GPU runs.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import course_utils.flash_attention as fa
import course_utils.triton_basics as tb

assert isinstance(fa._attn_fwd, triton.runtime.jit.JITFunction), "run with TRITON_INTERPRET=0"

INTS = {"N_Q", "N_KV", "GROUP", "N_CTX"}
SCALARS = {"sm_scale", "qk_scale"}
FLOAT32 = {"LSE2", "DELTA"}
KERNELS = [("fwd", fa._attn_fwd), ("dkdv", fa._attn_bwd_dkdv), ("dq", fa._attn_bwd_dq),
           ("fwd_tma", fa._attn_fwd_tma), ("dkdv_tma", fa._attn_bwd_dkdv_tma), ("dq_tma", fa._attn_bwd_dq_tma)]


def signature(kernel, consts, d, dtype="bf16"):
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.startswith("desc_"):
            rows = consts["BLOCK_N"] if name in fa._KEY_ROWS else consts["BLOCK_M"]
            sig[name] = f"tensordesc<{dtype}[1,{rows},{d}]>"
        elif name in INTS:
            sig[name] = "i32"
        elif name in SCALARS:
            sig[name] = "fp32"
        else:
            sig[name] = "*fp32" if name in FLOAT32 else f"*{dtype}"
    return sig


def lesson_06(target):
    """The four kernels of lesson 06, in bf16 (fp32 for the vector add), at a tuned or fixed tile."""
    bm, bn, bk, warps, stages = tb.MATMUL_TUNING[0]
    jobs = [("add", tb._add_kernel, {"X": "*fp32", "Y": "*fp32", "Z": "*fp32", "n": "i32"}, dict(BLOCK=1024), 4, 2),
            ("softmax", tb._softmax_kernel, {"X": "*bf16", "Y": "*bf16", "n_cols": "i32", "stride_x": "i32",
                                             "stride_y": "i32"}, dict(BLOCK=1024), 4, 2),
            ("online_softmax", tb._online_softmax_kernel, {"X": "*bf16", "Y": "*bf16", "n_cols": "i32",
                                                           "stride_x": "i32", "stride_y": "i32"}, dict(BLOCK=1024), 4, 2),
            ("matmul_gelu", tb._matmul_kernel, dict({n: "*bf16" for n in "ABC"}, Bias="*bf16",
                                                    **{n: "i32" for n in ("M", "N", "K", "stride_am", "stride_ak",
                                                                          "stride_bk", "stride_bn", "stride_cm",
                                                                          "stride_cn")}),
             dict(HAS_BIAS=True, ACTIVATION="gelu", DOT_PRECISION="tf32", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                  GROUP_M=8), warps, stages)]
    for name, kernel, sig, consts, warps, stages in jobs:
        sig = dict(sig, **{c: "constexpr" for c in consts})
        out = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=target,
                             options={"num_warps": warps, "num_stages": stages})
        ptx = out.asm["ptx"]
        print(json.dumps({"kernel": name, "stages": sorted(out.asm), "wgmma": "wgmma.mma_async" in ptx}), flush=True)


def fingerprint(ptx):
    """A hash of the PTX's instructions: without .loc lines, comments, debug sections and $L__tmp labels."""
    text = re.sub(r"^\s*\.loc.*$|^\s*//.*$|\.file.*$", "", ptx, flags=re.M).split(".section\t.debug")[0]
    lines = [re.sub(r"\$L__tmp\d+", "TMP", ln) for ln in text.splitlines()
             if ln.strip() and not re.match(r"^\s*\$L__tmp\d+:", ln)]
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:12]


def resources(cubin):
    """Registers per thread and stack bytes (spills) of a cubin, read by the cuobjdump Triton ships."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):                          # a Triton build without NVIDIA's tools
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return (int(m[1]), int(m[2])) if m else (None, None)


def main():
    target = GPUTarget("cuda", 90, 32)
    if sys.argv[1:] == ["06"]:
        lesson_06(target)
        return 0
    for d in (64, 128):
        for causal in (False, True):
            for name, kernel in KERNELS:
                bm, bn, warps, stages = fa.TUNING[name][d][0]
                consts = dict(HEAD_DIM=d, CAUSAL=causal, DOT_PRECISION="tf32", BLOCK_M=bm, BLOCK_N=bn)
                src = ASTSource(fn=kernel, signature=signature(kernel, consts, d), constexprs=consts)
                out = triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})
                ptx = out.asm["ptx"]
                regs, stack = resources(out.asm["cubin"])
                print(json.dumps({"kernel": name, "d": d, "causal": causal, "stages": sorted(out.asm),
                                  "wgmma": "wgmma.mma_async" in ptx, "tma": "cp.async.bulk.tensor" in ptx,
                                  "ptx": fingerprint(ptx), "tile": [bm, bn, warps, stages], "regs": regs,
                                  "stack": stack}), flush=True)
    # the TMA path is taken for every dtype on Hopper: float32 (exact "ieee" products, FIXED tiles) and
    # the small head dims in float16 compile too
    for dtype, d in (("fp32", 16), ("fp32", 128), ("fp16", 16), ("fp16", 32)):
        for name, kernel in KERNELS[3:]:
            bm, bn, warps, stages = fa.FIXED[name] if dtype == "fp32" else fa.TUNING[name][64][0]
            consts = dict(HEAD_DIM=d, CAUSAL=True, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32",
                          BLOCK_M=bm, BLOCK_N=bn)
            out = triton.compile(ASTSource(fn=kernel, signature=signature(kernel, consts, d, dtype), constexprs=consts),
                                 target=target, options={"num_warps": warps, "num_stages": stages})
            ptx = out.asm["ptx"]
            print(json.dumps({"kernel": name, "d": d, "causal": True, "dtype": dtype, "stages": sorted(out.asm),
                              "wgmma": "wgmma.mma_async" in ptx or dtype == "fp32", "tma": "cp.async.bulk.tensor" in ptx,
                              "ptx": fingerprint(ptx)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
