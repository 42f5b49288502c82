"""Tests of course_utils.inference (generated from notebooks/09_inference.ipynb).

The Llama-like model against Hugging Face's LlamaForCausalLM where transformers is installed, and
its parameter count against the published checkpoints; generation with the KV cache against
generation without it; the FLOP and byte counts against FlopCounterMode and the tensors a step
holds; the cache formula against built caches; sampling against the definitions of temperature,
top-k and top-p and against counted draws; PagedKVCache against contiguous tensors under random
add/append/fork/free sequences (no leaked block, copy-on-write isolation, failed appends that change
nothing, waste < one block); paged_attention against F.scaled_dot_product_attention on random
batches (MHA, GQA, MQA, lengths across block boundaries, several dtypes); the serving simulator on
a hand-computed trace and its invariants; speculative decoding's output distribution; NSA's token
count against the paper's Table 4; and every bad-input error.
"""
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from course_utils.attention import GroupedQueryAttention, MultiHeadLatentAttention, kv_cache_bytes_per_token
from course_utils.inference import (LLAMA3_70B, LLAMA3_8B, LlamaConfig, LlamaLike, OutOfBlocks, PagedKVCache,
                                    Request, generate, kv_cache_bytes, nsa_tokens, paged_attention,
                                    param_counts, sample, sampling_probs, serving_metrics, simulate,
                                    sliding_window_tokens, speculative_accept, step_flops_and_bytes)

TINY = LlamaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=48)


def _model(cfg=TINY, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return LlamaLike(cfg).to(dtype)


# ---------------------------------------------------------------- the model and generation
def test_param_counts_match_pytorch_and_published_checkpoints():
    for cfg in (TINY, LlamaConfig(100, 64, 3, 8, 1, 96)):
        assert sum(param_counts(cfg).values()) == sum(p.numel() for p in LlamaLike(cfg).parameters())
    # total_size (bytes, bf16) in model.safetensors.index.json of meta-llama/Meta-Llama-3-8B and -70B
    assert 2 * sum(param_counts(LLAMA3_8B).values()) == 16_060_522_496
    assert 2 * sum(param_counts(LLAMA3_70B).values()) == 141_107_412_992


def test_model_matches_huggingface_llama():
    transformers = pytest.importorskip("transformers")
    # float32: Hugging Face's RMSNorm computes in float32 whatever the input (so float64 would not
    # be compared like for like); rope_theta left at 10000, the default of both.
    cfg = LlamaConfig(vocab_size=50, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=80)
    ours = _model(cfg, dtype=torch.float32)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=80, rms_norm_eps=1e-5, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False)).float().eval()
    sd = {"model.embed_tokens.weight": ours.embed.weight, "model.norm.weight": ours.norm, "lm_head.weight": ours.lm_head.weight}
    for i, layer in enumerate(ours.layers):
        p = f"model.layers.{i}."
        sd.update({p + "input_layernorm.weight": layer.attn_norm, p + "post_attention_layernorm.weight": layer.mlp_norm,
                   p + "self_attn.q_proj.weight": layer.attn.wq.weight, p + "self_attn.k_proj.weight": layer.attn.wk.weight,
                   p + "self_attn.v_proj.weight": layer.attn.wv.weight, p + "self_attn.o_proj.weight": layer.attn.wo.weight,
                   p + "mlp.gate_proj.weight": layer.mlp.w1.weight, p + "mlp.up_proj.weight": layer.mlp.w3.weight,
                   p + "mlp.down_proj.weight": layer.mlp.w2.weight})
    missing, unexpected = hf.load_state_dict({k: v.detach() for k, v in sd.items()}, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    tokens = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert_close(ours(tokens), hf(tokens).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_greedy_with_cache_equals_without(n_kv):
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=n_kv, intermediate_size=48)
    model = _model(cfg, seed=n_kv)
    prompt = torch.randint(0, 61, (3, 4))
    out = generate(model, prompt, 10)
    assert out.shape == (3, 14) and torch.equal(out[:, :4], prompt)
    assert torch.equal(out, generate(model, prompt, 10, use_cache=False))
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_sampled_generation_is_reproducible_and_cache_independent():
    model, prompt = _model(), torch.randint(0, 61, (2, 3))
    runs = [generate(model, prompt, 8, use_cache=c, temperature=0.8, top_p=0.9,
                     generator=torch.Generator().manual_seed(5)) for c in (True, False)]
    assert torch.equal(runs[0], runs[1])


def test_step_flops_match_flop_counter():
    model = _model(dtype=torch.float32)
    for B, S in [(1, 1), (3, 7), (2, 20)]:
        caches = model.new_caches()
        model(torch.randint(0, 61, (B, S)), caches)
        with FlopCounterMode(display=False) as fc:
            model(torch.randint(0, 61, (B, 1)), caches)
        flops, nbytes = step_flops_and_bytes(TINY, B, 1, S, dtype_bytes=4)
        assert fc.get_total_flops() == flops
        weights = sum(p.numel() * 4 for n, p in model.named_parameters() if not n.startswith("embed"))
        assert nbytes == weights + sum(c.nbytes for c in caches)
    T = 11
    with FlopCounterMode(display=False) as fc:
        model(torch.randint(0, 61, (1, T)))
    masked = 4 * 2 * 4 * 8 * T * (T - 1) // 2          # l·n_h·d_h·4 per masked pair, computed by lesson 04
    assert fc.get_total_flops() == step_flops_and_bytes(TINY, 1, T, 0, dtype_bytes=4)[0] + masked


def test_kv_cache_bytes_matches_built_caches():
    for n_heads, n_kv in [(4, 4), (4, 2), (4, 1)]:
        layer = GroupedQueryAttention(32, n_heads, n_kv).to(torch.bfloat16)
        cache = layer.new_cache()
        layer(torch.randn(3, 5, 32, dtype=torch.bfloat16), cache=cache)
        layer(torch.randn(3, 2, 32, dtype=torch.bfloat16), cache=cache)
        assert cache.nbytes * 7 == kv_cache_bytes(7, n_kv, 8, 3 * 7)
        assert kv_cache_bytes(7, n_kv, 8, 3 * 7, dtype_bytes=4) == 2 * kv_cache_bytes(7, n_kv, 8, 3 * 7)
    mla = MultiHeadLatentAttention(32, 2, d_h=8, d_c=24, d_cq=16, d_rope=4)
    cache = mla.new_cache()
    mla(torch.randn(2, 6, 32), cache=cache)
    assert cache.nbytes * 5 == 12 * kv_cache_bytes_per_token("mla", n_layers=5, d_c=24, d_rope=4, bytes_per_element=4)
    assert kv_cache_bytes(32, 8, 128, 1) == 131072 and kv_cache_bytes(80, 8, 128, 1) == 327680


# ---------------------------------------------------------------- sampling
def test_temperature_topk_topp_follow_their_definitions():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 17, dtype=torch.float64, generator=g) * 3
    p = torch.softmax(z, -1)
    for tau in (0.3, 1.0, 2.5):
        assert_close(sampling_probs(z, temperature=tau), p ** (1 / tau) / (p ** (1 / tau)).sum(-1, keepdim=True))
    for k in (1, 4, 17, 40):
        idx = z.topk(min(k, 17)).indices
        masked = torch.full_like(z, float("-inf")).scatter(-1, idx, z.gather(-1, idx))
        assert_close(sampling_probs(z, top_k=k), torch.softmax(masked, -1))
    for top_p in (0.05, 0.5, 0.93, 1.0):
        got = sampling_probs(z, top_p=top_p)
        for r in range(5):
            kept = got[r] > 0
            order = p[r].argsort(descending=True)
            n = int(kept.sum())
            assert torch.equal(kept.nonzero().flatten().sort().values, order[:n].sort().values)   # the most likely n
            assert p[r, order[:n]].sum() >= top_p - 1e-12                                       # reach top_p ...
            assert n == 1 or p[r, order[:n - 1]].sum() < top_p                                  # ... and not before
            assert_close(got[r, kept], p[r, kept] / p[r, kept].sum())
    both = sampling_probs(z, temperature=0.7, top_k=6, top_p=0.8)                  # order: τ, then k, then p
    step = sampling_probs(sampling_probs(z, temperature=0.7, top_k=6).log(), top_p=0.8)
    assert_close(both, step)


def test_sample_draws_from_sampling_probs():
    z = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    draws = sample(z.expand(100_000, 12), temperature=1.3, top_p=0.95, generator=torch.Generator().manual_seed(2))
    assert draws.shape == (100_000,) and draws.dtype == torch.int64
    assert_close(torch.bincount(draws, minlength=12).double() / 1e5,
                 sampling_probs(z, temperature=1.3, top_p=0.95), atol=0.006, rtol=0)
    assert sample(torch.randn(2, 3, 7)).shape == (2, 3)


# ---------------------------------------------------------------- the paged cache
def _invariants(cache):
    held = [b for t in cache.tables.values() for b in t]
    for b in range(cache.n_blocks):
        assert cache.ref_count[b] == held.count(b), f"block {b}"
    assert sorted(set(held) | set(cache.free_list)) == list(range(cache.n_blocks))      # no block lost
    assert not set(held) & set(cache.free_list) and len(set(cache.free_list)) == cache.n_free
    for s, t in cache.tables.items():
        assert len(t) == math.ceil(cache.lengths[s] / cache.block_size)              # waste < one block


@pytest.mark.parametrize("seed", range(4))
def test_random_add_append_fork_free_keeps_contents_and_leaks_nothing(seed):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    bs, n_kv, d = rng.choice([1, 3, 4, 16]), rng.choice([1, 2]), 3
    cache = PagedKVCache(40, bs, n_kv, d, dtype=torch.float64)
    shadow = {}                                                    # seq -> contiguous (k, v)
    for _ in range(300):
        op = rng.random()
        if op < 0.15 or not shadow:
            shadow[cache.add_sequence()] = (torch.zeros(n_kv, 0, d, dtype=torch.float64),) * 2
        elif op < 0.65:
            s = rng.choice(list(shadow))
            n = rng.randint(1, 2 * bs + 1)
            k, v = torch.randn(2, n_kv, n, d, dtype=torch.float64, generator=gen)
            before = (cache.n_free, {x: list(t) for x, t in cache.tables.items()}, cache.k.clone())
            try:
                cache.append(s, k, v)
                shadow[s] = (torch.cat([shadow[s][0], k], 1), torch.cat([shadow[s][1], v], 1))
            except OutOfBlocks:
                assert (cache.n_free, cache.tables) == before[:2] and torch.equal(cache.k, before[2])
        elif op < 0.8:
            s = rng.choice(list(shadow))
            shadow[cache.fork(s)] = shadow[s]
        else:
            s = rng.choice(list(shadow))
            cache.free(s)
            del shadow[s]
        _invariants(cache)
        for s, (k, v) in shadow.items():
            gk, gv = cache.gather(s)
            assert torch.equal(gk, k) and torch.equal(gv, v)
    for s in list(shadow):
        cache.free(s)
    assert cache.n_free == cache.n_blocks and sorted(cache.free_list) == list(range(40))


def test_copy_on_write_isolates_forks():
    cache = PagedKVCache(12, 4, 1, 2, dtype=torch.float64)
    a = cache.add_sequence()
    k = torch.randn(1, 6, 2, dtype=torch.float64)
    cache.append(a, k, k)
    b = cache.fork(a)
    assert cache.block_table(a) == cache.block_table(b) and cache.ref_count[:2] == [2, 2]
    cache.append(b, torch.ones(1, 1, 2, dtype=torch.float64), torch.ones(1, 1, 2, dtype=torch.float64))
    assert cache.block_table(a)[0] == cache.block_table(b)[0]                  # the full block stays shared
    assert cache.block_table(a)[1] != cache.block_table(b)[1]                  # the partial one was copied
    assert torch.equal(cache.gather(a)[0], k)                                  # a never sees b's token
    assert torch.equal(cache.gather(b)[0], torch.cat([k, torch.ones(1, 1, 2, dtype=torch.float64)], 1))
    cache.append(a, k[:, :1], k[:, :1])                                        # a's block is now its own
    assert cache.ref_count[cache.block_table(a)[1]] == 1 and torch.equal(cache.gather(a)[0], torch.cat([k, k[:, :1]], 1))
    full = PagedKVCache(2, 2, 1, 1)                                           # cow with no free block
    s = full.add_sequence()
    full.append(s, torch.ones(1, 3, 1), torch.ones(1, 3, 1))
    t = full.fork(s)
    with pytest.raises(OutOfBlocks, match="nothing was written"):
        full.append(t, torch.ones(1, 1, 1), torch.ones(1, 1, 1))
    assert full.block_table(t) == full.block_table(s) and full.length(t) == 3 and full.ref_count == [2, 2]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_heads,n_kv,bs", [(8, 2, 4), (4, 4, 1), (6, 1, 16), (12, 3, 5)])
def test_paged_attention_matches_sdpa(n_heads, n_kv, bs, dtype):
    gen = torch.Generator().manual_seed(n_heads * bs)
    cache = PagedKVCache(700, bs, n_kv, 8, dtype=dtype)
    lens = [1, bs, bs + 1, 2 * bs - 1, 37] + torch.randint(1, 60, (5,), generator=gen).tolist()
    kv, ids = [], []
    for L in lens:                                            # interleave: a few tokens each, round robin
        ids.append(cache.add_sequence())
        kv.append(torch.randn(2, n_kv, L, 8, dtype=torch.float64, generator=gen).to(dtype))
    done = [0] * len(lens)
    while any(d < L for d, L in zip(done, lens)):
        for j, L in enumerate(lens):
            n = min(L - done[j], 3)
            if n:
                cache.append(ids[j], kv[j][0][:, done[j]:done[j] + n], kv[j][1][:, done[j]:done[j] + n])
                done[j] += n
    q = torch.randn(len(lens), n_heads, 8, dtype=torch.float64, generator=gen).to(dtype)
    ref = torch.cat([F.scaled_dot_product_attention(q[j][None, :, None].double(), kv[j][0][None].double(),
                                                    kv[j][1][None].double(), enable_gqa=True)[:, :, 0]
                     for j in range(len(lens))])
    got = paged_attention(q, cache, ids)
    assert got.shape == (len(lens), n_heads, 8) and got.dtype == dtype
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    assert_close(got.double(), ref, atol=tol, rtol=tol)
    perm = [3, 0, 7]                                            # any subset, any order
    assert_close(paged_attention(q[perm], cache, [ids[j] for j in perm]), got[perm], atol=tol, rtol=tol)


# ---------------------------------------------------------------- serving
def test_simulator_on_a_hand_computed_trace():
    trace = [Request(0.0, 4, 3), Request(0.0, 2, 1), Request(0.5, 2, 2)]
    unit = lambda n, kv: 1.0  # noqa: E731
    static = simulate(trace, unit, policy="static", max_batch=2)
    assert [s.first_token for s in static] == [1, 1, 4] and [s.finish for s in static] == [3, 1, 5]
    cont = simulate(trace, unit, policy="continuous", max_batch=2)
    assert [s.first_token for s in cont] == [1, 1, 2] and [s.finish for s in cont] == [3, 1, 3]
    m = serving_metrics(trace, cont)
    assert m["ttft"] == pytest.approx((1 + 1 + 1.5) / 3) and m["throughput"] == pytest.approx(6 / 3)
    assert m["tpot"] == pytest.approx((1 + 1) / 2)


def _stream(n, rate, seed):
    g = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += g.expovariate(rate)
        out.append(Request(t, g.randint(1, 300), g.randint(1, 80)))
    return out


@pytest.mark.parametrize("kw", [dict(policy="static"), dict(), dict(chunk=64), dict(kv_blocks=40), dict(kv_blocks=40, chunk=40)])
def test_simulator_serves_every_token_in_order(kw):
    reqs = _stream(60, 30.0, 1)
    calls = []
    cost = lambda n, kv: calls.append((n, kv)) or 1e-3 + 1e-5 * n + 1e-7 * kv  # noqa: E731
    served = simulate(reqs, cost, max_batch=8, **kw)
    for r, s in zip(reqs, served):
        assert r.arrival < s.first_token <= s.finish and s.max_gap >= 0
        assert s.finish - s.first_token >= (r.output_len - 1) * 1e-3 - 1e-12     # one token per step at most
    if "chunk" in kw:
        assert max(n for n, _ in calls) <= kw["chunk"]
    outputs = sum(r.output_len for r in reqs)
    assert sum(n for n, _ in calls) >= outputs                                   # every token was computed


def test_continuous_beats_static_under_load():
    reqs = _stream(200, 200.0, 2)
    cost = lambda n, kv: 5e-3 + 1e-5 * n  # noqa: E731
    s, c = (serving_metrics(reqs, simulate(reqs, cost, policy=p, max_batch=16)) for p in ("static", "continuous"))
    assert c["throughput"] > s["throughput"] and c["ttft"] < s["ttft"]


# ---------------------------------------------------------------- speculative decoding, reading less
def test_speculative_accept_outputs_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        p, q = torch.rand(2, 7, dtype=torch.float64, generator=g) ** 3
        p, q = p / p.sum(), q / q.sum()
        N = 200_000
        drafts = torch.multinomial(q, N, replacement=True, generator=g)
        tok, ok = speculative_accept(p.expand(N, 7), q.expand(N, 7), drafts, generator=g)
        assert_close(torch.bincount(tok, minlength=7).double() / N, p, atol=0.005, rtol=0)
        assert ok.double().mean().item() == pytest.approx(torch.minimum(p, q).sum().item(), abs=0.005)
    tok, ok = speculative_accept(p.expand(100, 7), p.expand(100, 7), torch.multinomial(p, 100, True, generator=g), generator=g)
    assert ok.all()                                              # draft = target: never rejected


def test_nsa_and_sliding_window_counts():
    for s, listed in {8192: 2048, 16384: 2560, 32768: 3584, 65536: 5632}.items():   # NSA, Table 4
        assert abs(nsa_tokens(s) - listed) <= 2
    assert nsa_tokens(10) == 10 and nsa_tokens(0) == 0 and nsa_tokens(1024) == 1024 + (1024 - 32) // 16
    assert sliding_window_tokens(100, 4096) == 100 and sliding_window_tokens(10**5, 4096) == 4096


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    model = _model()
    cache = PagedKVCache(4, 2, 2, 3)
    s = cache.add_sequence()
    cases = [
        (lambda: LlamaConfig(100, 48, 2, 5, 1, 64), ValueError, "divisible"),
        (lambda: LlamaConfig(100, 0, 2, 5, 1, 64), ValueError, "hidden_size"),
        (lambda: model(torch.zeros(2, 3)), ValueError, "int64"),
        (lambda: model(torch.tensor([[61]])), ValueError, "vocab_size"),
        (lambda: model(torch.tensor([[1]]), caches=[]), ValueError, "caches"),
        (lambda: generate(model, torch.tensor([[1]]), -1), ValueError, "n_new"),
        (lambda: generate(model, torch.tensor([[1]]), 1, temperature=-0.5), ValueError, "temperature"),
        (lambda: sampling_probs(torch.zeros(3), temperature=0), ValueError, "temperature"),
        (lambda: sampling_probs(torch.zeros(3), top_k=0), ValueError, "top_k"),
        (lambda: sampling_probs(torch.zeros(3), top_p=1.5), ValueError, "top_p"),
        (lambda: sampling_probs(torch.zeros(3, dtype=torch.long)), TypeError, "floating"),
        (lambda: step_flops_and_bytes(TINY, 0, 1, 0), ValueError, "n_seqs"),
        (lambda: kv_cache_bytes(2, 2, 8, -1), ValueError, "n_tokens"),
        (lambda: PagedKVCache(0, 2, 2, 3), ValueError, "n_blocks"),
        (lambda: cache.append(s, torch.ones(2, 1, 4), torch.ones(2, 1, 4)), ValueError, "head_dim"),
        (lambda: cache.append(s, torch.ones(2, 0, 3), torch.ones(2, 0, 3)), ValueError, "T_new >= 1"),
        (lambda: cache.append(s, torch.ones(2, 1, 3), torch.ones(2, 2, 3)), ValueError, "same shape"),
        (lambda: cache.append(7, torch.ones(2, 1, 3), torch.ones(2, 1, 3)), KeyError, "no sequence"),
        (lambda: cache.fork(7), KeyError, "no sequence"),
        (lambda: cache.free(7), KeyError, "no sequence"),
        (lambda: paged_attention(torch.ones(1, 4, 3), cache, [s]), ValueError, "no tokens"),
        (lambda: paged_attention(torch.ones(1, 3, 3), cache, [s]), ValueError, "multiple"),
        (lambda: paged_attention(torch.ones(2, 4, 3), cache, [s]), ValueError, "one sequence id"),
        (lambda: paged_attention(torch.ones(1, 4, 3), "cache", [s]), TypeError, "PagedKVCache"),
        (lambda: simulate([], lambda n, kv: 1.0), TypeError, "non-empty"),
        (lambda: simulate([Request(0.0, 0, 1)], lambda n, kv: 1.0), ValueError, "prompt_len"),
        (lambda: simulate([Request(0.0, 1, 1)], lambda n, kv: 1.0, policy="fifo"), ValueError, "policy"),
        (lambda: simulate([Request(0.0, 1, 1)], lambda n, kv: 1.0, chunk=4, max_batch=8), ValueError, "chunk"),
        (lambda: simulate([Request(0.0, 100, 1)], lambda n, kv: 1.0, kv_blocks=2), ValueError, "longest request"),
        (lambda: speculative_accept(torch.ones(3), torch.ones(4), torch.tensor(0)), ValueError, "one shape"),
        (lambda: speculative_accept(torch.ones(3), torch.ones(3), torch.tensor(0.0)), ValueError, "int64"),
        (lambda: nsa_tokens(-1), ValueError, "context"),
        (lambda: sliding_window_tokens(5, 0), ValueError, "window"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()
