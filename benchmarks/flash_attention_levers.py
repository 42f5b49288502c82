"""Issue 22's speed levers, one change at a time, in one GPU call (lesson 07's kernels against cuDNN).

    python benchmarks/flash_attention_levers.py             # GPU: check, then time every variant
    python benchmarks/flash_attention_levers.py --round3    # GPU: persistent forward against tma
    TRITON_INTERPRET=1 python benchmarks/flash_attention_levers.py --cpu-check   # the new kernels' maths

Variants (each is lesson 07's kernel with ONE change, so a difference in time has one cause):
  forward
    cur       course_utils.flash_attention._attn_fwd (pointer loads), each config of FWD_CONFIGS forced
    tma       the same loop with Q, K, V, O read and written through TMA tensor descriptors (3-D,
              [B·H, T, d], so a block past T is clipped per head) and the P·V product accumulating into
              acc (`tl.dot(p, v, acc)`, as Triton's tutorial 06 does); adopted since as lesson 07's
              forward on Hopper at d = 128, and timed here as fa._attn_fwd_tma
    tma_ws    tma with `tl.range(..., warp_specialize=True)` (Triton's automatic warp specialisation;
              round 1 only: Triton 3.6 refuses it on sm_90; its code is in git history)
    tma_pipe  tma with the loop skewed by hand: S of the next key block is issued before the softmax
              of this one (FlashAttention-3's intra-warpgroup overlap, asked for in plain Triton)
    persist   tma as a persistent kernel (round 3, --round3): a fixed grid of 1 or 2 programs per SM walks
              the (query block, head) tiles, causal ones longest first across all heads
  backward (dQ, dK, dV from O and the base-2 log-sum-exp)
    cur       the two kernels of lesson 07 (dK/dV, then dQ: 4 + 3 = 7 products per tile), config pairs
    atomic    one kernel, FlashAttention-2's Algorithm 2 (Dao, 2023): per tile S, dV, dP, dK and dQ,
              5 products; dQ added to a float32 buffer with `tl.atomic_add(..., sem="relaxed")`
    tma7      cur (7 products, two kernels) with every tile read and written through TMA descriptors:
              lesson 07's fast path since round 2 (fa._flash_backward(..., tma=True)); round 2 timed
              this script's own copy of those kernels, the same code without DOT_PRECISION
    tma5      atomic with TMA loads and dQ by TMA reduce-add (5 products, one kernel)
    tma_red   atomic, with dQ added by the TMA engine (`desc.atomic_add`, a bulk reduce-add:
              as we understand FlashAttention-3's backward, Shah et al., 2024;
              the section was not checked here)
Every variant is checked against SDPA's memory-efficient kernel on float32 copies before it is timed
(relative error <= 2e-2, all finite). Times: do_bench medians with p20/p80 over >= 30 calls.
Writes $OUT (or --out)/07_flash_attention_levers.csv and prints a table of best time per variant.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from course_utils import flash_attention as fa  # noqa: E402
from course_utils.flash_attention import _key_ranges, _query_ranges  # noqa: E402 - lesson 07's loop bounds

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4
    TensorDescriptor = None


# ----------------------------------------------------------------------------- forward through TMA
@triton.jit
def _fwd_pipe(desc_q, desc_k, desc_v, desc_o, LSE2, qk_scale, N_Q, N_KV, GROUP,
              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """lesson 07's _attn_fwd_tma with the loop skewed by hand: S_(j+1) = Q K_(j+1)ᵀ is issued before the softmax of S_j,
    so the matrix unit can work while the exponentials are computed (the overlap FlashAttention-3,
    Shah et al., 2024, §3.2, gets within one warpgroup). The last step computes one unused S."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    off_bh = tl.program_id(1)
    off_kv = off_bh // GROUP
    OFF = N_KV - N_Q
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    q = desc_q.load([off_bh, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    full_hi, masked_hi = _key_ranges(start_m, OFF, N_KV, BLOCK_M, BLOCK_N, CAUSAL)
    if full_hi > 0:
        k = desc_k.load([off_kv, 0, 0]).reshape(BLOCK_N, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        for start_n in range(0, full_hi, BLOCK_N):
            nxt = tl.minimum(start_n + BLOCK_N, full_hi - BLOCK_N)
            k_next = desc_k.load([off_kv, nxt, 0]).reshape(BLOCK_N, HEAD_DIM)
            s_next = tl.dot(q, tl.trans(k_next), input_precision=DOT_PRECISION)  # issued before the softmax below
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.exp2(s * qk_scale - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            v = desc_v.load([off_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
            m_i = m_new
            s = s_next
    acc, l_i, m_i = fa._attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, off_kv, offs_m, offs_n, N_KV, OFF,
                                           full_hi, masked_hi, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL,
                                           DOT_PRECISION)
    acc = acc / l_i[:, None]
    desc_o.store([off_bh, start_m, 0], acc.to(q.dtype).reshape(1, BLOCK_M, HEAD_DIM))
    tl.store(LSE2 + off_bh * N_Q + offs_m, m_i + tl.log2(l_i), mask=offs_m < N_Q)


def forward_pipe(q, k, v, causal, sm_scale, config):
    B, H, T_q, d = q.shape
    H_kv, T_k = k.shape[1], k.shape[2]
    bm, bn, w, s = config
    o = torch.empty_like(q)
    lse2 = torch.empty(B, H, T_q, dtype=torch.float32, device=q.device)
    _fwd_pipe[(triton.cdiv(T_q, bm), B * H)](
        _desc(q, bm), _desc(k, bn), _desc(v, bn), _desc(o, bm), lse2, sm_scale * fa.LOG2E, T_q, T_k, H // H_kv,
        HEAD_DIM=d, CAUSAL=causal, DOT_PRECISION=fa._precision(q), BLOCK_M=bm, BLOCK_N=bn, num_warps=w,
        num_stages=s)
    return o, lse2


@triton.jit
def _fwd_persist(desc_q, desc_k, desc_v, desc_o, LSE2, qk_scale, N_Q, N_KV, GROUP, N_BH,
                 HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """lesson 07's _attn_fwd_tma as a persistent kernel: a fixed grid (a few programs per SM) walks the
    list of (query block, head) tiles, tile = program id + i · programs. Causal: the list runs longest
    rows first across ALL heads (the launched grid does so within each head only)."""
    n_m = tl.cdiv(N_Q, BLOCK_M)
    OFF = N_KV - N_Q
    offs_n = tl.arange(0, BLOCK_N)
    for tile in range(tl.program_id(0), n_m * N_BH, tl.num_programs(0)):
        pid_m = tile // N_BH                       # heads vary fastest: equal-length tiles side by side
        if CAUSAL:
            pid_m = n_m - 1 - pid_m
        off_bh = tile % N_BH
        off_kv = off_bh // GROUP
        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = desc_q.load([off_bh, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        full_hi, masked_hi = _key_ranges(start_m, OFF, N_KV, BLOCK_M, BLOCK_N, CAUSAL)
        acc, l_i, m_i = fa._attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, off_kv, offs_m, offs_n, N_KV,
                                               OFF, 0, full_hi, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL,
                                               DOT_PRECISION)
        acc, l_i, m_i = fa._attn_fwd_tma_inner(acc, l_i, m_i, q, desc_k, desc_v, off_kv, offs_m, offs_n, N_KV,
                                               OFF, full_hi, masked_hi, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL,
                                               DOT_PRECISION)
        acc = acc / l_i[:, None]
        desc_o.store([off_bh, start_m, 0], acc.to(q.dtype).reshape(1, BLOCK_M, HEAD_DIM))
        tl.store(LSE2 + off_bh * N_Q + offs_m, m_i + tl.log2(l_i), mask=offs_m < N_Q)


def forward_persist(q, k, v, causal, sm_scale, config):
    """config = (BLOCK_M, BLOCK_N, warps, stages, programs per SM)."""
    B, H, T_q, d = q.shape
    H_kv, T_k = k.shape[1], k.shape[2]
    bm, bn, w, s, per_sm = config
    o = torch.empty_like(q)
    lse2 = torch.empty(B, H, T_q, dtype=torch.float32, device=q.device)
    n_sm = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 3
    grid = (min(triton.cdiv(T_q, bm) * B * H, n_sm * per_sm),)
    _fwd_persist[grid](
        _desc(q, bm), _desc(k, bn), _desc(v, bn), _desc(o, bm), lse2, sm_scale * fa.LOG2E, T_q, T_k, H // H_kv,
        B * H, HEAD_DIM=d, CAUSAL=causal, DOT_PRECISION=fa._precision(q), BLOCK_M=bm, BLOCK_N=bn,
        num_warps=w, num_stages=s)
    return o, lse2


def _desc(t, block):
    """A 3-D TMA descriptor over t viewed as [B·H, T, d] with blocks [1, block, d]."""
    B, H, T, d = t.shape
    return TensorDescriptor.from_tensor(t.view(B * H, T, d), [1, block, d])


def forward_tma(q, k, v, causal, sm_scale, config):
    """The `tma` variant: lesson 07's _attn_fwd_tma with the tile forced. Rounds 1 and 2 timed this
    script's own copy of that kernel (the same code without DOT_PRECISION, and with round 1's
    WARP_SPEC switch for `tma_ws`); it is in git history before the lesson adopted the kernel."""
    return fa._flash_forward(q, k, v, causal, sm_scale, config=config, tma=True)


# ------------------------------------------------------------- backward in one pass, 5 products per tile
@triton.jit
def _bwd_fused_inner(dk, dv, k, v, Q, DO, LSE2, DELTA, DQ32, desc_dq, off_bh, offs_n, offs_m, offs_d, N_Q, OFF,
                     lo, hi, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
                     CAUSAL: tl.constexpr, DQ_TMA: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        qo = rows[:, None] * HEAD_DIM + offs_d[None, :]
        if MASKED:
            ok = rows < N_Q
            q = tl.load(Q + qo, mask=ok[:, None], other=0.0)
            do = tl.load(DO + qo, mask=ok[:, None], other=0.0)
            lse2 = tl.load(LSE2 + rows, mask=ok, other=0.0)
            delta = tl.load(DELTA + rows, mask=ok, other=0.0)
        else:
            q = tl.load(Q + qo)
            do = tl.load(DO + qo)
            lse2 = tl.load(LSE2 + rows)
            delta = tl.load(DELTA + rows)
        sT = tl.dot(k, tl.trans(q))                                     # 1: S_ijᵀ
        pT = tl.exp2(sT * qk_scale - lse2[None, :])
        if MASKED:
            keep = rows[None, :] < N_Q
            if CAUSAL:
                keep = keep & (rows[None, :] + OFF >= offs_n[:, None])
            pT = tl.where(keep, pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do)                               # 2: dV_j += P_ijᵀ dO_i
        dpT = tl.dot(v, tl.trans(do))                                   # 3: dP_ijᵀ
        dsT = (pT * (dpT - delta[None, :])).to(q.dtype)
        dk += tl.dot(dsT, q)                                            # 4: dK_j += dS_ijᵀ Q_i
        dq = tl.dot(tl.trans(dsT), k)                                   # 5: dQ_i += dS_ij K_j, to HBM
        if DQ_TMA:
            desc_dq.atomic_add([off_bh, start_m, 0], dq.reshape(1, BLOCK_M, HEAD_DIM))
        else:
            if MASKED:
                tl.atomic_add(DQ32 + qo, dq, mask=(rows < N_Q)[:, None], sem="relaxed")
            else:
                tl.atomic_add(DQ32 + qo, dq, sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_fused(Q, K, V, DO, LSE2, DELTA, DK, DV, DQ32, desc_dq, sm_scale, qk_scale, N_Q, N_KV, GROUP,
               HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               DQ_TMA: tl.constexpr):
    """lesson 07's _attn_bwd_dkdv with dQ added in the same loop (FlashAttention-2, Algorithm 2)."""
    start_n = tl.program_id(0) * BLOCK_N
    off_kv = tl.program_id(1)
    kv = off_kv.to(tl.int64) * N_KV * HEAD_DIM
    OFF = N_KV - N_Q
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N_KV
    kvo = kv + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + kvo, mask=col_ok[:, None], other=0.0)
    v = tl.load(V + kvo, mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    lo, full_lo, full_hi = _query_ranges(start_n, OFF, N_Q, BLOCK_M, BLOCK_N, CAUSAL)
    for g in range(GROUP):
        off_bh = (off_kv * GROUP + g).to(tl.int64)
        Qh, DOh, DQh = Q + off_bh * N_Q * HEAD_DIM, DO + off_bh * N_Q * HEAD_DIM, DQ32 + off_bh * N_Q * HEAD_DIM
        L2h, Dh = LSE2 + off_bh * N_Q, DELTA + off_bh * N_Q
        dk, dv = _bwd_fused_inner(dk, dv, k, v, Qh, DOh, L2h, Dh, DQh, desc_dq, off_kv * GROUP + g, offs_n, offs_m, offs_d,
                                  N_Q, OFF, lo, full_lo, qk_scale, HEAD_DIM, BLOCK_M, True, CAUSAL, DQ_TMA)
        dk, dv = _bwd_fused_inner(dk, dv, k, v, Qh, DOh, L2h, Dh, DQh, desc_dq, off_kv * GROUP + g, offs_n, offs_m, offs_d,
                                  N_Q, OFF, full_lo, full_hi, qk_scale, HEAD_DIM, BLOCK_M, False, CAUSAL, DQ_TMA)
        dk, dv = _bwd_fused_inner(dk, dv, k, v, Qh, DOh, L2h, Dh, DQh, desc_dq, off_kv * GROUP + g, offs_n, offs_m, offs_d,
                                  N_Q, OFF, full_hi, N_Q, qk_scale, HEAD_DIM, BLOCK_M, True, CAUSAL, DQ_TMA)
    tl.store(DK + kvo, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + kvo, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


def backward_fused(q, k, v, o, lse2, do, causal, sm_scale, config, dq_tma=False):
    B, H, T_q, d = q.shape
    H_kv, T_k = k.shape[1], k.shape[2]
    bm, bn, w, s = config
    delta = torch.empty_like(lse2)
    fa._attn_bwd_delta[(triton.cdiv(T_q, 64), B * H)](o, do, delta, T_q, HEAD_DIM=d, BLOCK_M=64)
    dq32 = torch.zeros(B, H, T_q, d, dtype=torch.float32, device=q.device)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    desc_dq = _desc(dq32, bm) if dq_tma else None
    _bwd_fused[(triton.cdiv(T_k, bn), B * H_kv)](
        q, k, v, do, lse2, delta, dk, dv, dq32, desc_dq, sm_scale, sm_scale * fa.LOG2E, T_q, T_k, H // H_kv,
        HEAD_DIM=d, CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, DQ_TMA=dq_tma, num_warps=w, num_stages=s)
    return (dq32 * sm_scale).to(q.dtype), dk, dv


# ------------------------------------------------ backward with TMA loads (fewer registers for addresses)
@triton.jit
def _bwd_kv_tma_inner(dk, dv, k, v, desc_q, desc_do, desc_dq, LSE2, DELTA, bh, offs_n, offs_m, N_Q, OFF, lo, hi,
                      qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
                      CAUSAL: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        q = desc_q.load([bh, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)      # rows >= T_q read as 0
        do = desc_do.load([bh, start_m, 0]).reshape(BLOCK_M, HEAD_DIM)
        if MASKED:
            ok = rows < N_Q
            lse2 = tl.load(LSE2 + rows, mask=ok, other=0.0)
            delta = tl.load(DELTA + rows, mask=ok, other=0.0)
        else:
            lse2 = tl.load(LSE2 + rows)
            delta = tl.load(DELTA + rows)
        sT = tl.dot(k, tl.trans(q))
        pT = tl.exp2(sT * qk_scale - lse2[None, :])
        if MASKED:
            keep = rows[None, :] < N_Q
            if CAUSAL:
                keep = keep & (rows[None, :] + OFF >= offs_n[:, None])
            pT = tl.where(keep, pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do)
        dpT = tl.dot(v, tl.trans(do))
        dsT = (pT * (dpT - delta[None, :])).to(q.dtype)
        dk += tl.dot(dsT, q)
        dq = tl.dot(tl.trans(dsT), k)                                       # 5th product, reduced by TMA
        desc_dq.atomic_add([bh, start_m, 0], dq.reshape(1, BLOCK_M, HEAD_DIM))
    return dk, dv


@triton.jit
def _bwd_kv_tma(desc_q, desc_k, desc_v, desc_do, desc_dk, desc_dv, desc_dq, LSE2, DELTA, sm_scale, qk_scale,
                N_Q, N_KV, GROUP, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    off_kv = tl.program_id(1)
    OFF = N_KV - N_Q
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    k = desc_k.load([off_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    v = desc_v.load([off_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    lo, full_lo, full_hi = _query_ranges(start_n, OFF, N_Q, BLOCK_M, BLOCK_N, CAUSAL)
    for g in range(GROUP):
        bh = off_kv * GROUP + g
        L2h, Dh = LSE2 + bh.to(tl.int64) * N_Q, DELTA + bh.to(tl.int64) * N_Q
        dk, dv = _bwd_kv_tma_inner(dk, dv, k, v, desc_q, desc_do, desc_dq, L2h, Dh, bh, offs_n, offs_m, N_Q, OFF,
                                   lo, full_lo, qk_scale, HEAD_DIM, BLOCK_M, True, CAUSAL)
        dk, dv = _bwd_kv_tma_inner(dk, dv, k, v, desc_q, desc_do, desc_dq, L2h, Dh, bh, offs_n, offs_m, N_Q, OFF,
                                   full_lo, full_hi, qk_scale, HEAD_DIM, BLOCK_M, False, CAUSAL)
        dk, dv = _bwd_kv_tma_inner(dk, dv, k, v, desc_q, desc_do, desc_dq, L2h, Dh, bh, offs_n, offs_m, N_Q, OFF,
                                   full_hi, N_Q, qk_scale, HEAD_DIM, BLOCK_M, True, CAUSAL)
    desc_dk.store([off_kv, start_n, 0], (dk * sm_scale).to(k.dtype).reshape(1, BLOCK_N, HEAD_DIM))
    desc_dv.store([off_kv, start_n, 0], dv.to(k.dtype).reshape(1, BLOCK_N, HEAD_DIM))


def backward_tma5(q, k, v, o, lse2, do, causal, sm_scale, config):
    """5 products in one kernel, every tile read through TMA descriptors, dQ by TMA reduce-add into
    float32. (`tma7`, the 7-product pair with TMA, is lesson 07's fast path: fa._flash_backward(tma=True).)"""
    B, H, T_q, d = q.shape
    H_kv, T_k = k.shape[1], k.shape[2]
    bm, bn, w, s = config
    delta = torch.empty_like(lse2)
    fa._attn_bwd_delta[(triton.cdiv(T_q, 64), B * H)](o, do, delta, T_q, HEAD_DIM=d, BLOCK_M=64)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dq = torch.zeros(B, H, T_q, d, dtype=torch.float32, device=q.device)
    _bwd_kv_tma[(triton.cdiv(T_k, bn), B * H_kv)](
        _desc(q, bm), _desc(k, bn), _desc(v, bn), _desc(do, bm), _desc(dk, bn), _desc(dv, bn), _desc(dq, bm),
        lse2, delta, sm_scale, sm_scale * fa.LOG2E, T_q, T_k, H // H_kv, HEAD_DIM=d, CAUSAL=causal, BLOCK_M=bm,
        BLOCK_N=bn, num_warps=w, num_stages=s)
    return (dq * sm_scale).to(q.dtype), dk, dv


# ----------------------------------------------------------------------------------------- the runs
# Round 1 of this script (its outcome is in NOTES) also timed (128, 128, 8, 2), (128, 64, 4, 4), the pairs
# ((64, 128, 4, 3), (128, 64, 8, 3)) and ((32, 128, 4, 5), (128, 32, 4, 5)), and `tma_ws`; dropped from round 2.
FWD_CONFIGS = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)]
BWD_PAIRS = [((64, 128, 8, 3), (128, 64, 8, 2)), ((64, 64, 4, 3), (128, 64, 4, 3)),
             ((32, 128, 4, 3), (128, 32, 4, 3))]
TMA_PAIRS = BWD_PAIRS + [((64, 128, 4, 3), (128, 64, 4, 3))]
FUSED_CONFIGS = [(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3), (64, 128, 8, 2)]
SHAPES = [(64, False, 8192, 2, 32), (64, True, 8192, 2, 32), (128, False, 8192, 2, 16),
          (128, True, 8192, 2, 16), (64, True, 16384, 1, 16)]  # (d, causal, T, B, H); last: CS336


def rel_err(x, ref):
    return ((x.float() - ref).norm() / ref.norm()).item()


def spread(fn, min_iters=30):
    from triton.testing import do_bench  # noqa: PLC0415
    est = do_bench(fn, warmup=5, rep=20, return_mode="median")
    times = torch.tensor(do_bench(fn, warmup=5, rep=max(60, 1.2 * min_iters * est), return_mode="all"))
    return times.median().item(), times.quantile(0.2).item(), times.quantile(0.8).item(), len(times)


def gpu_main(out):
    import torch.nn.functional as F  # noqa: PLC0415
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}; triton {triton.__version__}", flush=True)
    rows, t0, path = [], time.time(), Path(out) / "07_flash_attention_levers.csv"

    def record(**r):
        rows.append(r)
        print(f"{r['d']:4d} {r['causal']!s:5s} {r['T']:6d} {r['pass']:4s} {r['variant']:8s} {r['config']:18s} "
              f"{r.get('ms', float('nan')):8.3f} ms  err {r.get('err', float('nan')):.1e} {r['status']} "
              f"[{time.time() - t0:.0f} s]", flush=True)
        with open(path, "w", newline="") as fh:
            keys = list(dict.fromkeys(k for x in rows for k in x))
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    for d, causal, T, B, H in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, do = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
        q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            o_ref = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
        o_ref.backward(do.float())
        g_ref = [t.grad for t in (q32, k32, v32)]
        scale, base = d ** -0.5, dict(d=d, causal=causal, T=T)
        # cuDNN: forward, and backward alone (retain_graph)
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            fwd = lambda: F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            med, p20, p80, n = spread(fwd)
            record(**base, variant="cudnn", config="", ms=med, p20=p20, p80=p80, n=n, status="ok", **{"pass": "fwd"})
            oc = fwd()
            med, p20, p80, n = spread(lambda: oc.backward(do, retain_graph=True))
            record(**base, variant="cudnn", config="", ms=med, p20=p20, p80=p80, n=n, status="ok", **{"pass": "bwd"})
        del qg, kg, vg, oc
        o, lse2 = fa._flash_forward(q, k, v, causal, scale, config=(128, 64, 4, 3))
        fwd_variants = [("cur", c, lambda c=c: fa._flash_forward(q, k, v, causal, scale, config=c)) for c in FWD_CONFIGS]
        if TensorDescriptor is not None:
            fwd_variants += [("tma", c, lambda c=c: forward_tma(q, k, v, causal, scale, c)) for c in FWD_CONFIGS]
            fwd_variants += [("tma_pipe", c, lambda c=c: forward_pipe(q, k, v, causal, scale, c))
                             for c in FWD_CONFIGS]
        bwd_variants = [("cur", p, lambda p=p: fa._flash_backward(q, k, v, o, lse2, do, causal, scale, configs=p))
                        for p in BWD_PAIRS]
        if TensorDescriptor is not None:
            bwd_variants += [("tma_red", c, lambda c=c: backward_fused(q, k, v, o, lse2, do, causal, scale, c, True))
                             for c in FUSED_CONFIGS[:2]]
            bwd_variants += [("tma7", p, lambda p=p: fa._flash_backward(q, k, v, o, lse2, do, causal, scale,
                                                                        configs=p, tma=True)) for p in TMA_PAIRS]
            bwd_variants += [("tma5", c, lambda c=c: backward_tma5(q, k, v, o, lse2, do, causal, scale, c))
                             for c in FUSED_CONFIGS]
        for pss, variants in (("fwd", fwd_variants), ("bwd", bwd_variants)):
            for name, cfg, fn in variants:
                r = dict(base, variant=name, config=str(cfg), **{"pass": pss})
                try:
                    got = fn()
                    if pss == "fwd":
                        errs = [rel_err(got[0], o_ref)]
                    else:
                        errs = [rel_err(x, ref) for x, ref in zip(got, g_ref)]
                    r["err"] = max(errs)
                    if not all(math.isfinite(e) and e <= 2e-2 for e in errs):
                        record(**r, status="WRONG")
                        continue
                    med, p20, p80, n = spread(fn)
                    record(**r, ms=med, p20=p20, p80=p80, n=n, status="ok")
                except Exception as e:  # noqa: BLE001 - a variant that does not compile is a result too
                    record(**r, status=f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}")
                    torch.cuda.synchronize()
        del q, k, v, do, o, lse2, q32, k32, v32, o_ref, g_ref
        torch.cuda.empty_cache()
    print("\nbest median per variant (ms), and against cuDNN (>1 = faster than cuDNN)")
    for d, causal, T, B, H in SHAPES:
        for pss in ("fwd", "bwd"):
            sel = [r for r in rows if (r["d"], r["causal"], r["T"], r["pass"]) == (d, causal, T, pss) and r["status"] == "ok"]
            cud = next((r["ms"] for r in sel if r["variant"] == "cudnn"), float("nan"))
            best = {}
            for r in sel:
                if r["variant"] != "cudnn" and (r["variant"] not in best or r["ms"] < best[r["variant"]]["ms"]):
                    best[r["variant"]] = r
            print(f"d={d:3d} causal={causal!s:5s} T={T:5d} {pss}: cuDNN {cud:.3f}; " + "; ".join(
                f"{n} {r['ms']:.3f} ({cud / r['ms']:.2f}x) {r['config']}" for n, r in best.items()))
    print(f"total {time.time() - t0:.0f} s")


def round3(out):
    """Round 3, persistent scheduling (the last lever issue 22 named), forward only. Per shape and tile:
    tma, persist with 1 and 2 programs per SM, then tma again ("tma_after"). The two tma times bracket
    the persistent ones, so a drift of the clocks over the sandwich shows as a difference between them."""
    import torch.nn.functional as F  # noqa: PLC0415
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}; triton {triton.__version__}", flush=True)
    rows, t0, path = [], time.time(), Path(out) / "07_flash_attention_levers_round3.csv"
    for d, causal, T, B, H in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            o_ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            variants = [("cudnn", "", lambda: (F.scaled_dot_product_attention(q, k, v, is_causal=causal),))]
        for c in FWD_CONFIGS:
            variants += [("tma", c, lambda c=c: forward_tma(q, k, v, causal, d ** -0.5, c))]
            variants += [("persist", c + (n,), lambda c=c, n=n: forward_persist(q, k, v, causal, d ** -0.5, c + (n,)))
                         for n in (1, 2)]
            variants += [("tma_after", c, lambda c=c: forward_tma(q, k, v, causal, d ** -0.5, c))]
        for name, cfg, fn in variants:
            r = dict(d=d, causal=causal, T=T, variant=name, config=str(cfg), **{"pass": "fwd"})
            try:
                if name == "cudnn":
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        r["err"] = rel_err(fn()[0], o_ref)
                        med, p20, p80, n = spread(fn)
                else:
                    r["err"] = rel_err(fn()[0], o_ref)
                    med, p20, p80, n = (spread(fn) if r["err"] <= 2e-2 else (math.nan,) * 3 + (0,))
                r.update(ms=med, p20=p20, p80=p80, n=n, status="ok" if r["err"] <= 2e-2 else "WRONG")
            except Exception as e:  # noqa: BLE001 - a variant that does not compile is a result too
                r["status"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
                torch.cuda.synchronize()
            rows.append(r)
            print(f"{d:4d} {causal!s:5s} {T:6d} {name:9s} {str(cfg):20s} {r.get('ms', math.nan):8.3f} ms  "
                  f"err {r.get('err', math.nan):.1e} {r['status']} [{time.time() - t0:.0f} s]", flush=True)
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k_ for x in rows for k_ in x)))
            w.writeheader()
            w.writerows(rows)
        del q, k, v, o_ref
        torch.cuda.empty_cache()
    print(f"total {time.time() - t0:.0f} s")


def cpu_check():
    """The new kernels' maths in the interpreter: float32 and float16, GQA, T_q != T_k, causal and not."""
    import torch.nn.functional as F  # noqa: PLC0415
    from torch.nn.attention.bias import causal_lower_right  # noqa: PLC0415
    torch.manual_seed(0)
    cases = [(1, 2, 1, 37, 37, 16, False), (1, 2, 1, 37, 37, 16, True), (2, 4, 2, 20, 53, 32, True),
             (1, 4, 1, 45, 45, 16, False), (1, 2, 2, 1, 40, 16, True), (1, 2, 1, 9, 9, 16, False)]
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 3e-3)):
        for B, H, H_kv, T_q, T_k, d, causal in cases:
            q = torch.randn(B, H, T_q, d, dtype=dtype)
            k, v = (torch.randn(B, H_kv, T_k, d, dtype=dtype) for _ in range(2))
            do = torch.randn(B, H, T_q, d, dtype=dtype)
            q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
            mask = causal_lower_right(T_q, T_k) if causal else None
            o64 = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=mask, enable_gqa=True)
            o64.backward(do.double())
            scale = d ** -0.5
            o, lse2 = forward_tma(q, k, v, causal, scale, (16, 16, 4, 2))
            e_o = rel_err(o, o64.detach())
            o_c, lse_c = fa._flash_forward(q, k, v, causal, scale)
            grads = backward_fused(q, k, v, o_c, lse_c, do, causal, scale, (16, 16, 4, 2))
            e_g = max(rel_err(x, t.grad) for x, t in zip(grads, (q64, k64, v64)))
            # dq_tma / fused=True: the interpreter has no descriptor reduce (Triton 3.9); checked on the GPU
            o_p, _ = forward_pipe(q, k, v, causal, scale, (16, 16, 4, 2))
            o_s, lse_s = forward_persist(q, k, v, causal, scale, (16, 16, 4, 2, 1))   # 3 programs walk all tiles
            e_o = max(e_o, rel_err(o_s, o64.detach()), rel_err(lse_s, lse_c.double()))
            grads_7 = fa._flash_backward(q, k, v, o_c, lse_c, do, causal, scale, configs=((16, 16, 4, 2),) * 2, tma=True)
            e_t = max([rel_err(o_p, o64.detach())] + [rel_err(x, t.grad) for x, t in zip(grads_7, (q64, k64, v64))])
            e_l = rel_err(lse2, lse_c.double())
            assert max(e_o, e_g, e_t, e_l) < tol, (dtype, B, H, H_kv, T_q, T_k, d, causal, e_o, e_g, e_t, e_l)
            print(f"✓ {str(dtype)[6:]:8s} B={B} H={H} H_kv={H_kv} T_q={T_q:2d} T_k={T_k:2d} d={d} causal={causal!s:5s} "
                  f"tma/persist fwd {e_o:.1e}, lse {e_l:.1e}, fused bwd {e_g:.1e}, pipe fwd / tma bwd {e_t:.1e}")


def resources():
    """Registers per thread, spilled bytes and shared memory of each kernel at its configs (ptxas, via
    Triton's compiled-kernel object): the compiler's own account of register pressure."""
    B, T = 2, 8192
    for d in (64, 128):
        H = 2048 // d
        q, k, v, do = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        o, lse2 = fa._flash_forward(q, k, v, False, d ** -0.5, config=(128, 64, 4, 3))
        delta = torch.zeros_like(lse2)
        dq32 = torch.zeros(B, H, T, d, device="cuda")
        common = dict(HEAD_DIM=d, CAUSAL=False)
        lengths = (T, T, 1)
        jobs = [("fwd cur", c, lambda c: fa._attn_fwd[(T // c[0], B * H)](
                    q, k, v, o, lse2, d ** -0.5 * fa.LOG2E, *lengths, **common, DOT_PRECISION="tf32",
                    BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2], num_stages=c[3])) for c in FWD_CONFIGS[:4]]
        jobs += [("fwd tma", c, lambda c: fa._attn_fwd_tma[(T // c[0], B * H)](
                    _desc(q, c[0]), _desc(k, c[1]), _desc(v, c[1]), _desc(o, c[0]), lse2, d ** -0.5 * fa.LOG2E,
                    *lengths, **common, DOT_PRECISION="tf32", BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2],
                    num_stages=c[3])) for c in FWD_CONFIGS[:4]]
        jobs += [("dkdv", c, lambda c: fa._attn_bwd_dkdv[(T // c[1], B * H)](
                    q, k, v, do, lse2, delta, k, v, d ** -0.5, d ** -0.5 * fa.LOG2E, *lengths, **common,
                    DOT_PRECISION="tf32", BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2], num_stages=c[3]))
                 for c in [(64, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 128, 4, 3)]]
        jobs += [("dq", c, lambda c: fa._attn_bwd_dq[(T // c[0], B * H)](
                    q, k, v, do, lse2, delta, q, d ** -0.5, d ** -0.5 * fa.LOG2E, *lengths, **common,
                    DOT_PRECISION="tf32", BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2], num_stages=c[3]))
                 for c in [(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3)]]
        jobs += [("fused atomic", c, lambda c: _bwd_fused[(T // c[1], B * H)](
                    q, k, v, do, lse2, delta, k, v, dq32, None, d ** -0.5, d ** -0.5 * fa.LOG2E, *lengths,
                    **common, BLOCK_M=c[0], BLOCK_N=c[1], DQ_TMA=False, num_warps=c[2], num_stages=c[3]))
                 for c in FUSED_CONFIGS[:4]]
        desc = lambda t, b: _desc(t, b)  # noqa: E731
        jobs += [("fwd pipe", c, lambda c: _fwd_pipe[(T // c[0], B * H)](
                    desc(q, c[0]), desc(k, c[1]), desc(v, c[1]), desc(o, c[0]), lse2, d ** -0.5 * fa.LOG2E,
                    *lengths, **common, DOT_PRECISION="tf32", BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2],
                    num_stages=c[3])) for c in FWD_CONFIGS]
        jobs += [("dkdv tma", c, lambda c: fa._attn_bwd_dkdv_tma[(T // c[1], B * H)](
                    desc(q, c[0]), desc(k, c[1]), desc(v, c[1]), desc(do, c[0]), desc(k, c[1]), desc(v, c[1]),
                    lse2, delta, d ** -0.5, d ** -0.5 * fa.LOG2E, *lengths, **common, DOT_PRECISION="tf32",
                    BLOCK_M=c[0], BLOCK_N=c[1], num_warps=c[2], num_stages=c[3])) for c, _ in TMA_PAIRS]
        jobs += [("dq tma", c, lambda c: fa._attn_bwd_dq_tma[(T // c[0], B * H)](
                    desc(q, c[0]), desc(k, c[1]), desc(v, c[1]), desc(do, c[0]), desc(q, c[0]), lse2, delta,
                    d ** -0.5, d ** -0.5 * fa.LOG2E, *lengths, **common, DOT_PRECISION="tf32", BLOCK_M=c[0],
                    BLOCK_N=c[1], num_warps=c[2], num_stages=c[3])) for _, c in TMA_PAIRS]
        for name, c, launch in jobs:
            try:
                kern = launch(c)
                print(f"resources d={d:3d} {name:12s} {str(c):18s} regs/thread {kern.n_regs:3d}  spilled "
                      f"{kern.n_spills:5d} B  shared {kern.metadata.shared // 1024:4d} KiB", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"resources d={d:3d} {name:12s} {str(c):18s} {type(e).__name__}: {str(e)[:80]}", flush=True)
        del q, k, v, do, o, lse2, delta, dq32
        torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-check", action="store_true")
    p.add_argument("--resources", action="store_true", help="registers, spills, shared memory per kernel")
    p.add_argument("--round3", action="store_true", help="persistent scheduling against tma, forward only")
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "assets")))
    args = p.parse_args()
    if args.cpu_check:
        cpu_check()
    elif args.resources:
        resources()
    elif args.round3:
        round3(args.out)
    else:
        gpu_main(args.out)


if __name__ == "__main__":
    main()
