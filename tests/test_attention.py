"""Tests of course_utils.attention (generated from notebooks/04_attention.ipynb).

scaled_dot_product_attention is compared with torch.nn.functional.scaled_dot_product_attention
(outputs and gradients, several dtypes, awkward shapes, bool and float masks, the decoding shape
Tq < Tk); repeat_kv with torch.repeat_interleave; the GQA module with PyTorch's enable_gqa path
and nn.MultiheadAttention-style per-head references; MLA's absorbed path with its naive path and a
head-by-head reference; incremental decoding with full forwards; cache byte counts with the
formulas; the tensor-parallel head split with the full layer; and every bad-input error.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from torch.testing import assert_close

from course_utils.attention import (GroupedQueryAttention, KVCache, MultiHeadLatentAttention,
                                    attention_weights, kv_cache_bytes_per_token, repeat_kv,
                                    scaled_dot_product_attention, tp_head_split)
from course_utils.norms import rms_norm
from course_utils.rope import apply_rope

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float16: dict(atol=3e-3, rtol=3e-3)}
SHAPES = [(1, 1, 1, 1, 2), (2, 3, 17, 17, 5), (3, 2, 4, 9, 64), (1, 4, 33, 33, 7)]  # B, H, Tq, Tk, d


def _qkv(B, H, Tq, Tk, d, dtype, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, d, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(B, H, Tk, d, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, H, Tk, dv or d, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


# ---------------------------------------------------------------- scaled_dot_product_attention
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_sdpa_matches_pytorch(shape, dtype):
    q, k, v = _qkv(*shape, dtype, dv=3)
    Tq, Tk = shape[2], shape[3]
    assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v), **TOL[dtype])
    got = scaled_dot_product_attention(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(Tq, Tk))
    assert got.dtype == dtype and got.shape == (*shape[:3], 3)
    assert_close(got, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_padding_float_masks_and_scale(dtype):
    B, H, T, d = 3, 2, 7, 6
    q, k, v = _qkv(B, H, T, T, d, dtype)
    pad = (torch.arange(T) < torch.tensor([7, 3, 1])[:, None])[:, None, None, :]   # (B, 1, 1, T)
    tril = torch.ones(T, T, dtype=torch.bool).tril()
    assert_close(scaled_dot_product_attention(q, k, v, causal=True, mask=pad),
                 F.scaled_dot_product_attention(q, k, v, attn_mask=tril & pad), **TOL[dtype])
    bias = torch.randn(H, T, T, dtype=dtype)                        # 3-D: broadcasts over B
    assert_close(scaled_dot_product_attention(q, k, v, mask=bias, scale=0.3),
                 F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3), **TOL[dtype])
    per_head = torch.rand(1, H, 1, T) > 0.3                          # a bool mask per head
    per_head[..., 0] = True
    assert_close(scaled_dot_product_attention(q, k, v, mask=per_head),
                 F.scaled_dot_product_attention(q, k, v, attn_mask=per_head), **TOL[dtype])


def test_fully_masked_rows_give_zeros_like_pytorch():
    q, k, v = _qkv(2, 2, 4, 4, 8, torch.float64)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1] = False                                            # query 1 of batch 0 sees nothing
    float_mask = torch.zeros(2, 1, 4, 4, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    for m in (mask, float_mask):
        got = scaled_dot_product_attention(q, k, v, mask=m)
        assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=m))
        assert torch.equal(got[0, :, 1], torch.zeros(2, 8, dtype=torch.float64))
        assert not torch.isnan(got).any()


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_gradients_match_pytorch(causal):
    q, k, v = _qkv(2, 3, 5, 8, 4, torch.float64, dv=6)
    mask = (torch.arange(8) < torch.tensor([8, 6])[:, None])[:, None, None, :]
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    ref_mask = mask & causal_lower_right(5, 8)._materialize() if causal else mask
    gout = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    (scaled_dot_product_attention(qs, ks, vs, causal=causal, mask=mask) * gout).sum().backward()
    (F.scaled_dot_product_attention(qr, kr, vr, attn_mask=ref_mask) * gout).sum().backward()
    for a, b in [(qs, qr), (ks, kr), (vs, vr)]:
        assert_close(a.grad, b.grad)


def test_attention_weights_rows_sum_to_one_and_respect_the_mask():
    q, k, _ = _qkv(2, 2, 3, 6, 4, torch.float32)
    w = attention_weights(q, k, causal=True)
    assert w.shape == (2, 2, 3, 6)
    assert_close(w.sum(-1), torch.ones(2, 2, 3))
    allowed = torch.ones(3, 6, dtype=torch.bool).tril(3)            # query i sits at position 3 + i
    assert (w[..., ~allowed] == 0).all()


# ---------------------------------------------------------------- repeat_kv
@pytest.mark.parametrize("n_rep", [1, 2, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_repeat_kv_matches_repeat_interleave(n_rep, dtype):
    x = torch.randn(2, 3, 7, 5).to(dtype)
    assert torch.equal(repeat_kv(x, n_rep), torch.repeat_interleave(x, n_rep, dim=1))


def test_repeat_kv_gradient_sums_over_the_copies():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 6, 3, 4, dtype=torch.float64)
    (repeat_kv(x, 3) * g).sum().backward()
    assert_close(x.grad, g.view(1, 2, 3, 3, 4).sum(2))


# ---------------------------------------------------------------- GroupedQueryAttention
def _gqa_reference(attn, x):
    """Same weights through PyTorch's own GQA attention (enable_gqa) and apply_rope."""
    B, T, _ = x.shape
    hd, pos = attn.head_dim, torch.arange(T)
    q = (x @ attn.wq.weight.T).view(B, T, attn.n_heads, hd).transpose(1, 2)       # (B, nh, T, hd)
    k = (x @ attn.wk.weight.T).view(B, T, attn.n_kv_heads, hd).transpose(1, 2)    # (B, nkv, T, hd)
    v = (x @ attn.wv.weight.T).view(B, T, attn.n_kv_heads, hd).transpose(1, 2)    # (B, nkv, T, hd)
    q, k = apply_rope(q, pos, base=attn.rope_base), apply_rope(k, pos, base=attn.rope_base)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, nh, T, hd)
    return o.transpose(1, 2).reshape(B, T, -1) @ attn.wo.weight.T


@pytest.mark.parametrize("d_model,n_heads,n_kv", [(16, 4, 4), (48, 6, 3), (48, 6, 1), (20, 2, 2), (64, 8, 2)])
def test_gqa_matches_pytorch_outputs_and_gradients(d_model, n_heads, n_kv):
    torch.manual_seed(0)
    attn = GroupedQueryAttention(d_model, n_heads, n_kv, rope_base=500000.0).double()
    x = torch.randn(3, 11, d_model, dtype=torch.float64, requires_grad=True)
    out = attn(x)
    ref = _gqa_reference(attn, x)
    assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [x, attn.wq.weight, attn.wk.weight, attn.wo.weight])
    refs = torch.autograd.grad((ref * g).sum(), [x, attn.wq.weight, attn.wk.weight, attn.wo.weight])
    for a, b in zip(grads, refs):
        assert_close(a, b)


@pytest.mark.parametrize("n_kv", [8, 4, 2, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gqa_decoding_equals_full_forward(n_kv, dtype):
    torch.manual_seed(1)
    attn = GroupedQueryAttention(32, 8, n_kv).to(dtype)
    x = torch.randn(2, 10, 32, dtype=dtype)
    full = attn(x)
    cache = attn.new_cache()
    chunks = [x[:, :3], x[:, 3:4], x[:, 4:8], x[:, 8:9], x[:, 9:10]]   # prefill, then uneven chunks
    got = torch.cat([attn(c, cache=cache) for c in chunks], dim=1)
    assert_close(got, full, **TOL[dtype])
    assert cache.length == 10
    assert cache["k"].shape == (2, n_kv, 10, 4) and cache["v"].shape == (2, n_kv, 10, 4)
    assert cache.nbytes == 2 * 10 * attn.cache_bytes_per_token()
    assert attn.cache_bytes_per_token() == 2 * n_kv * 4 * torch.empty((), dtype=dtype).element_size()
    assert attn.cache_bytes_per_token(torch.bfloat16) == kv_cache_bytes_per_token(
        "gqa", n_layers=1, n_kv_heads=n_kv, head_dim=4)


def test_gqa_in_bfloat16_stays_close_to_float64():
    torch.manual_seed(2)
    attn = GroupedQueryAttention(32, 4, 2).double()
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    ref = attn(x)
    low = attn.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    assert_close(low.double(), ref, atol=5e-2, rtol=5e-2)


def test_mha_family_equals_a_loop_over_heads():
    torch.manual_seed(3)
    attn = GroupedQueryAttention(24, 4, 4).double()
    x = torch.randn(1, 5, 24, dtype=torch.float64)
    pos, hd, out = torch.arange(5), 6, 0
    for h in range(4):
        r = slice(h * hd, (h + 1) * hd)
        qh, kh = apply_rope(x @ attn.wq.weight[r].T, pos), apply_rope(x @ attn.wk.weight[r].T, pos)
        oh = F.scaled_dot_product_attention(qh, kh, x @ attn.wv.weight[r].T, is_causal=True)
        out = out + oh @ attn.wo.weight[:, r].T
    assert_close(attn(x), out)


# ---------------------------------------------------------------- MultiHeadLatentAttention
def _mla(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_h=8, d_c=16, d_cq=12, d_rope=4) | kw
    m = MultiHeadLatentAttention(40, 5, **cfg).double()
    with torch.no_grad():
        m.q_norm.uniform_(0.5, 1.5)
        m.kv_norm.uniform_(0.5, 1.5)
    return m


def _mla_reference(m, x):
    """DeepSeek-V2 eqs. 9-19, head by head, with PyTorch's attention."""
    T, pos, out = x.shape[1], torch.arange(x.shape[1]), 0
    c_q, c_kv = rms_norm(x @ m.w_dq.weight.T, m.q_norm), rms_norm(x @ m.w_dkv.weight.T, m.kv_norm)
    k_r = apply_rope(x @ m.w_kr.weight.T, pos)
    for i in range(m.n_heads):
        r, rr = slice(i * m.d_h, (i + 1) * m.d_h), slice(i * m.d_rope, (i + 1) * m.d_rope)
        q = torch.cat([c_q @ m.w_uq.weight[r].T, apply_rope(c_q @ m.w_qr.weight[rr].T, pos)], -1)
        k = torch.cat([c_kv @ m.w_uk.weight[r].T, k_r], -1)
        o = F.scaled_dot_product_attention(q, k, c_kv @ m.w_uv.weight[r].T, is_causal=True,
                                           scale=(m.d_h + m.d_rope) ** -0.5)
        out = out + o @ m.wo.weight[:, r].T
    return out


@pytest.mark.parametrize("cfg", [{}, dict(d_c=3, d_cq=2, d_rope=2), dict(d_h=6, d_c=40, d_rope=8)])
def test_mla_naive_and_absorbed_match_the_equations(cfg):
    m = _mla(**cfg)
    x = torch.randn(2, 7, 40, dtype=torch.float64)
    ref = _mla_reference(m, x)
    assert_close(m(x), ref)
    assert_close(m(x, absorb=True), ref)


def test_mla_gradients_agree_between_paths():
    m = _mla(seed=4)
    x = torch.randn(2, 6, 40, dtype=torch.float64)
    params = [m.w_uk.weight, m.w_uv.weight, m.w_kr.weight, m.q_norm, m.wo.weight]
    g = torch.randn(2, 6, 40, dtype=torch.float64)
    a = torch.autograd.grad((m(x) * g).sum(), params)
    b = torch.autograd.grad((m(x, absorb=True) * g).sum(), params)
    for ga, gb in zip(a, b):
        assert_close(ga, gb)


@pytest.mark.parametrize("absorb", [False, True])
def test_mla_decoding_equals_full_forward_and_caches_only_latents(absorb):
    m = _mla(seed=5)
    x = torch.randn(3, 9, 40, dtype=torch.float64)
    full = m(x)
    cache = m.new_cache()
    got = torch.cat([m(x[:, :4], cache=cache, absorb=absorb)]
                    + [m(x[:, t:t + 1], cache=cache, absorb=absorb) for t in range(4, 9)], dim=1)
    assert_close(got, full)
    assert cache.names == ("c_kv", "k_rope")
    assert cache["c_kv"].shape == (3, 9, 16) and cache["k_rope"].shape == (3, 9, 4)
    assert cache.nbytes == 3 * 9 * m.cache_bytes_per_token() == 3 * 9 * (16 + 4) * 8
    assert m.cache_bytes_per_token(torch.float16) == kv_cache_bytes_per_token("mla", n_layers=1, d_c=16, d_rope=4)


def test_mla_paths_can_share_one_cache():
    m = _mla(seed=6)
    x = torch.randn(1, 5, 40, dtype=torch.float64)
    cache = m.new_cache()
    outs = [m(x[:, t:t + 1], cache=cache, absorb=bool(t % 2)) for t in range(5)]
    assert_close(torch.cat(outs, 1), m(x))


def _attention_flops(m, x, cache, absorb):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        m(x, cache=cache, absorb=absorb)
    return counter.get_total_flops()


def test_absorption_saves_flops_in_decode_and_costs_flops_in_prefill():
    """Notebook 04 §8: decoding one token, the absorbed path never rebuilds k_C, v_C from the cached
    latents; over a whole prompt its d_c-wide heads cost more than the naive d_h-wide ones."""
    m = _mla(seed=10, d_h=8, d_c=32, d_rope=4)          # d_c > d_h, as in DeepSeek-V3 (512 vs 128)
    x = torch.randn(1, 40, 40, dtype=torch.float64)
    decode, prefill = {}, {}
    for absorb in (False, True):
        cache = m.new_cache()
        m(x[:, :39], cache=cache, absorb=absorb)
        decode[absorb] = _attention_flops(m, x[:, 39:], cache, absorb)
        prefill[absorb] = _attention_flops(m, x, None, absorb)
    nh, dh, dc = m.n_heads, m.d_h, m.d_c
    assert decode[False] - decode[True] == nh * (4 * 40 * dc * dh - 4 * dh * dc - 2 * 40 * 2 * (dc - dh))
    assert decode[True] < decode[False] and prefill[True] > prefill[False]


def test_mla_float32():
    m = _mla(seed=7).float()
    x = torch.randn(2, 5, 40)
    assert_close(m(x, absorb=True), m(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- cache sizes, TP split
def test_kv_cache_bytes_per_token_published_configs():
    assert kv_cache_bytes_per_token("mha", n_layers=32, n_heads=32, head_dim=128) == 512 * 1024   # Llama-2-7B
    assert kv_cache_bytes_per_token("gqa", n_layers=32, n_kv_heads=8, head_dim=128) == 128 * 1024  # Llama-3-8B
    assert kv_cache_bytes_per_token("gqa", n_layers=80, n_kv_heads=8, head_dim=128) == 320 * 1024  # Llama-3-70B
    assert kv_cache_bytes_per_token("mla", n_layers=61, d_c=512, d_rope=64) == 70272              # DeepSeek-V3
    # DeepSeek-V2 Table 1: MHA caches 2·n_h·d_h·l elements, MLA (d_c + d_R)·l; for V3's sizes 32768 / 576
    ratio = (kv_cache_bytes_per_token("mha", n_layers=61, n_heads=128, head_dim=128)
             / kv_cache_bytes_per_token("mla", n_layers=61, d_c=512, d_rope=64))
    assert abs(ratio - 32768 / 576) < 1e-12 and round(ratio) == 57
    assert kv_cache_bytes_per_token("mqa", n_layers=10, head_dim=64, bytes_per_element=4) == 2 * 10 * 64 * 4
    assert (kv_cache_bytes_per_token("gqa", n_layers=3, n_kv_heads=4, head_dim=8)
            == kv_cache_bytes_per_token("mha", n_layers=3, n_heads=4, head_dim=8))


def test_cache_bytes_of_a_float16_stack_match_the_peak_formula():
    torch.manual_seed(8)
    b, S, t, H, l = 2, 5, 3, 16, 2
    layers = [GroupedQueryAttention(H, 2, 2).half() for _ in range(l)]
    caches = [m.new_cache() for m in layers]
    x = torch.randn(b, S + t, H).half()
    for chunk in [x[:, :S]] + [x[:, S + i:S + i + 1] for i in range(t)]:
        for m, c in zip(layers, caches):
            m(chunk, cache=c)
    assert sum(c.nbytes for c in caches) == b * (S + t) * H * l * 2 * 2


@pytest.mark.parametrize("n_heads,n_kv,tp,kv_per_rank", [(8, 4, 1, 4), (8, 4, 2, 2), (8, 4, 4, 1), (8, 4, 8, 1),
                                                         (64, 8, 16, 1), (32, 32, 4, 8), (6, 1, 3, 1)])
def test_tp_head_split(n_heads, n_kv, tp, kv_per_rank):
    split = tp_head_split(n_heads, n_kv, tp)
    assert len(split) == tp
    assert sorted(h for q, _ in split for h in q) == list(range(n_heads))
    n_rep = n_heads // n_kv
    for q, kvh in split:
        assert len(q) == n_heads // tp and len(kvh) == kv_per_rank
        assert {h // n_rep for h in q} == set(kvh)
        rep = len(q) // len(kvh)                                     # a rank's local repeat_kv factor
        assert [kvh[i // rep] for i in range(len(q))] == [h // n_rep for h in q]   # local mapping = global one
    copies = sum(len(kvh) for _, kvh in split)
    assert copies == max(n_kv, tp)                                   # replicated once tp > n_kv


def test_tp_split_sums_to_the_full_layer():
    torch.manual_seed(9)
    attn = GroupedQueryAttention(32, 8, 2).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    B, T, hd, pos = 2, 5, 4, torch.arange(5)
    for tp in (1, 2, 4, 8):
        total = 0
        for qh, kvh in tp_head_split(8, 2, tp):
            rq = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in qh])
            rk = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in kvh])
            q = apply_rope((x @ attn.wq.weight[rq].T).view(B, T, len(qh), hd).transpose(1, 2), pos)
            k = apply_rope((x @ attn.wk.weight[rk].T).view(B, T, len(kvh), hd).transpose(1, 2), pos)
            v = (x @ attn.wv.weight[rk].T).view(B, T, len(kvh), hd).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            total = total + o.transpose(1, 2).reshape(B, T, -1) @ attn.wo.weight[:, rq].T
        assert_close(total, attn(x))


# ---------------------------------------------------------------- bad inputs
def test_sdpa_bad_inputs():
    q, k, v = _qkv(2, 3, 4, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="4 dimensions"):
        scaled_dot_product_attention(q[0], k[0], v[0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        scaled_dot_product_attention(q.tolist(), k, v)
    with pytest.raises(TypeError, match="float16, bfloat16"):
        scaled_dot_product_attention(q.long(), k.long(), v.long())
    with pytest.raises(TypeError, match="share dtype"):
        scaled_dot_product_attention(q, k.double(), v)
    with pytest.raises(ValueError, match="repeat_kv"):
        scaled_dot_product_attention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match=r"k must have shape \(B, H, Tk, d\)"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="v must have shape"):
        scaled_dot_product_attention(q, k, v[:, :, :3])
    with pytest.raises(TypeError, match="v must have q's dtype"):
        scaled_dot_product_attention(q, k, v.double())
    with pytest.raises(ValueError, match="Tq <= Tk"):
        scaled_dot_product_attention(q, k[:, :, :2], v[:, :, :2], causal=True)
    with pytest.raises(TypeError, match="causal must be True or False"):
        scaled_dot_product_attention(q, k, v, causal=1)
    with pytest.raises(ValueError, match="must broadcast to"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="must broadcast to"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(1, 1, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool tensor"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="scale must be"):
        scaled_dot_product_attention(q, k, v, scale=-1.0)
    with pytest.raises(ValueError, match="4 dimensions"):
        attention_weights(q, k[0])


def test_repeat_kv_bad_inputs():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"\(B, n_kv_heads, T, d\)"):
        repeat_kv(x[0], 2)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_rep must be an integer >= 1"):
            repeat_kv(x, bad)


def test_gqa_bad_inputs():
    with pytest.raises(ValueError, match="divisible by n_kv_heads"):
        GroupedQueryAttention(48, 6, 4)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        GroupedQueryAttention(50, 4, 4)
    with pytest.raises(ValueError, match="must be even for RoPE"):
        GroupedQueryAttention(12, 4, 4)
    with pytest.raises(ValueError, match="n_kv_heads must be an integer >= 1"):
        GroupedQueryAttention(16, 4, 0)
    with pytest.raises(ValueError, match="rope_base"):
        GroupedQueryAttention(16, 4, 2, rope_base=1.0)
    attn = GroupedQueryAttention(16, 4, 2)
    x = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match=r"\(B, T, d_model\) = \(B, T, 16\)"):
        attn(x[0])
    with pytest.raises(ValueError, match=r"\(B, T, d_model\)"):
        attn(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="T >= 1"):
        attn(x[:, :0])
    with pytest.raises(TypeError, match="convert one of them"):
        attn(x.double())
    with pytest.raises(TypeError, match="new_cache"):
        attn(x, cache=KVCache("c_kv", "k_rope"))
    cache = attn.new_cache()
    attn(x, cache=cache)
    with pytest.raises(ValueError, match="batch size 2"):
        attn(x[:1], cache=cache)


def test_mla_bad_inputs():
    with pytest.raises(ValueError, match="d_rope = 3 must be even"):
        MultiHeadLatentAttention(16, 2, d_h=4, d_c=8, d_cq=8, d_rope=3)
    with pytest.raises(ValueError, match="d_c must be an integer >= 1"):
        MultiHeadLatentAttention(16, 2, d_h=4, d_c=0, d_cq=8, d_rope=2)
    with pytest.raises(TypeError):
        MultiHeadLatentAttention(16, 2, 4, 8, 8, 2)                   # sizes are keyword-only
    m = MultiHeadLatentAttention(16, 2, d_h=4, d_c=8, d_cq=8, d_rope=2)
    x = torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match=r"\(B, T, d_model\) = \(B, T, 16\)"):
        m(x[0])
    with pytest.raises(TypeError, match="absorb must be True or False"):
        m(x, absorb="yes")
    with pytest.raises(TypeError, match="new_cache"):
        m(x, cache=KVCache("k", "v"))


def test_kvcache_bad_inputs():
    with pytest.raises(ValueError, match="distinct tensor names"):
        KVCache()
    with pytest.raises(ValueError, match="distinct tensor names"):
        KVCache("k", "k")
    c = KVCache("k", "v")
    c.update(k=torch.zeros(1, 2, 3, 4), v=torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="expected tensors named"):
        c.update(k=torch.zeros(1, 2, 1, 4))
    with pytest.raises(ValueError, match="same number of tokens"):
        c.update(k=torch.zeros(1, 2, 1, 4), v=torch.zeros(1, 2, 2, 4))
    with pytest.raises(ValueError, match=r"cached with shape \(1, 2, 3, 4\)"):
        c.update(k=torch.zeros(1, 2, 1, 5), v=torch.zeros(1, 2, 1, 4))
    with pytest.raises(ValueError, match="and that dtype"):
        c.update(k=torch.zeros(1, 2, 1, 4, dtype=torch.float64), v=torch.zeros(1, 2, 1, 4))
    assert c.length == 3 and c.nbytes == 2 * 24 * 4                  # nothing was appended by the failures


def test_kv_cache_bytes_and_tp_split_bad_inputs():
    with pytest.raises(ValueError, match="family must be one of"):
        kv_cache_bytes_per_token("mlaa", n_layers=1)
    with pytest.raises(ValueError, match="takes"):
        kv_cache_bytes_per_token("mha", n_layers=1, n_heads=4, head_dim=8, n_kv_heads=2)
    with pytest.raises(ValueError, match="n_kv_heads must be an integer >= 1"):
        kv_cache_bytes_per_token("gqa", n_layers=1, head_dim=8)
    with pytest.raises(ValueError, match="n_layers must be an integer >= 1"):
        kv_cache_bytes_per_token("mla", n_layers=0, d_c=8, d_rope=2)
    with pytest.raises(ValueError, match="divisible by tp"):
        tp_head_split(8, 4, 3)
    with pytest.raises(ValueError, match="either tp divides"):
        tp_head_split(12, 6, 4)
    with pytest.raises(ValueError, match="divisible by n_kv_heads"):
        tp_head_split(8, 3, 2)
    with pytest.raises(ValueError, match="tp must be an integer >= 1"):
        tp_head_split(8, 4, 0)
