"""course_utils.rl_for_llms (generated from notebooks/15_rl_for_llms.ipynb): the RL losses against
independent references (explicit sums, cases written out, hand-derived gradients, PyTorch's own
ops), every bad-input error, and the toy pipeline: pretraining → SFT → GRPO raises the reward."""
import copy
import itertools
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from course_utils import rl_for_llms as rl

f64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- GAE ---------------------------------------------------------------------------------------

def gae_loops(r, v, done, gamma, lam):
    """Σ_l (γλ)^l δ_{t+l} until the episode ends, with explicit loops over a (N, T) batch; v is
    (N, T + 1) with a bootstrap value last."""
    N, T = r.shape
    out = torch.zeros(N, T, dtype=f64)
    for i in range(N):
        for t in range(T):
            for k in range(t, T):
                nxt = 0.0 if done[i, k] else v[i, k + 1].item()
                out[i, t] += (gamma * lam) ** (k - t) * (r[i, k].item() + gamma * nxt - v[i, k].item())
                if done[i, k]:
                    break
    return out


@pytest.mark.parametrize("gamma, lam", [(0.9, 0.8), (1.0, 0.95), (0.5, 0.0), (0.99, 1.0), (0.0, 0.5)])
def test_gae_equals_the_explicit_sum(gamma, lam):
    g = gen(1)
    r, v = torch.randn(3, 9, dtype=f64, generator=g), torch.randn(3, 10, dtype=f64, generator=g)
    done = torch.rand(3, 9, generator=g) < 0.25
    assert_close(rl.gae(r, v, gamma, lam, dones=done), gae_loops(r, v, done, gamma, lam), atol=1e-12, rtol=0)


def test_gae_lambda_ends():
    g = gen(2)
    r, v = torch.randn(2, 7, dtype=f64, generator=g), torch.randn(2, 8, dtype=f64, generator=g)
    gamma = 0.9
    delta = r + gamma * v[:, 1:] - v[:, :-1]
    assert_close(rl.gae(r, v, gamma, 0.0), delta, atol=1e-12, rtol=0)
    # λ = 1: discounted return with the bootstrap value, minus V(s_t)
    ret = torch.stack([sum(gamma ** (k - t) * r[:, k] for k in range(t, 7)) + gamma ** (7 - t) * v[:, 7]
                       for t in range(7)], 1)
    assert_close(rl.gae(r, v, gamma, 1.0), ret - v[:, :7], atol=1e-12, rtol=0)


def test_gae_values_of_length_T_mean_the_trajectory_ends():
    g = gen(3)
    r, v = torch.randn(4, 6, dtype=f64, generator=g), torch.randn(4, 6, dtype=f64, generator=g)
    padded = torch.cat([v, torch.zeros(4, 1, dtype=f64)], 1)
    assert_close(rl.gae(r, v, 0.95, 0.9), rl.gae(r, padded, 0.95, 0.9), atol=0, rtol=0)
    done = torch.zeros(4, 6, dtype=torch.bool)
    done[:, -1] = True
    any_bootstrap = torch.cat([v, torch.randn(4, 1, dtype=f64, generator=g)], 1)    # ignored after a done
    assert_close(rl.gae(r, v, 0.95, 0.9), rl.gae(r, any_bootstrap, 0.95, 0.9, dones=done), atol=1e-12, rtol=0)


def test_gae_leading_dims_and_1d_and_gradient():
    g = gen(4)
    r = torch.randn(2, 3, 5, dtype=f64, generator=g)
    v = torch.randn(2, 3, 6, dtype=f64, generator=g, requires_grad=True)
    adv = rl.gae(r, v, 0.9, 0.7)
    assert adv.shape == (2, 3, 5)
    assert_close(adv[1, 2], rl.gae(r[1, 2], v[1, 2], 0.9, 0.7), atol=1e-14, rtol=0)
    # the last step: Â_4 = δ_4 = r_4 + γ V(s_5) − V(s_4), so ∂Â_4/∂V(s_4) = −1 and ∂Â_4/∂V(s_5) = γ
    adv[..., 4].sum().backward()
    assert_close(v.grad[..., 4], torch.full((2, 3), -1.0, dtype=f64))
    assert_close(v.grad[..., 5], torch.full((2, 3), 0.9, dtype=f64))


def test_gae_errors():
    r = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"values must have shape \(\.\.\., T \+ 1\)"):
        rl.gae(r, torch.zeros(2, 7), 0.9, 0.9)
    with pytest.raises(ValueError, match="gamma must be a number in"):
        rl.gae(r, torch.zeros(2, 6), 1.5, 0.9)
    with pytest.raises(ValueError, match="lam must be a number in"):
        rl.gae(r, torch.zeros(2, 6), 0.9, -0.1)
    with pytest.raises(ValueError, match="rewards, dones must have the same shape"):
        rl.gae(r, torch.zeros(2, 6), 0.9, 0.9, dones=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="got a scalar"):
        rl.gae(torch.tensor(1.0), torch.zeros(1), 0.9, 0.9)
    with pytest.raises(TypeError, match="rewards must be a tensor of numbers"):
        rl.gae("abc", torch.zeros(1), 0.9, 0.9)


# ---- PPO ---------------------------------------------------------------------------------------

def ppo_case(seed=5, B=4, T=6):
    g = gen(seed)
    old = -3 * torch.rand(B, T, dtype=f64, generator=g)
    new = (old + 0.5 * torch.randn(B, T, dtype=f64, generator=g)).requires_grad_()
    A = torch.randn(B, T, dtype=f64, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = mask[2, 1:] = False
    return new, old, A, mask


def by_cases(ratio, A, eps):
    """min(ρA, clip(ρ)A), written out for the sign of A."""
    out = torch.empty_like(ratio)
    for idx in itertools.product(*map(range, ratio.shape)):
        r, a = ratio[idx].item(), A[idx].item()
        out[idx] = min(r, 1 + eps) * a if a >= 0 else max(r, 1 - eps) * a
    return out


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.5])
def test_ppo_clip_loss_value_and_gradient(eps):
    new, old, A, mask = ppo_case()
    loss = rl.ppo_clip_loss(new, old, A, eps, mask)
    loss.backward()
    ratio = (new - old).exp().detach()
    assert_close(loss, -by_cases(ratio, A, eps)[mask].mean(), atol=1e-12, rtol=0)
    clipped = ((A > 0) & (ratio > 1 + eps)) | ((A < 0) & (ratio < 1 - eps))
    want = torch.where(mask & ~clipped, -ratio * A / mask.sum(), torch.zeros_like(ratio))
    assert_close(new.grad, want, atol=1e-12, rtol=0)


def test_ppo_at_ratio_one_is_the_policy_gradient():
    """At θ = θ_old the clipped loss has the gradient of −mean(A · log π) (nothing is clipped)."""
    g = gen(6)
    lp = torch.randn(3, 5, dtype=f64, generator=g, requires_grad=True)
    A = torch.randn(3, 5, dtype=f64, generator=g)
    g1, = torch.autograd.grad(rl.ppo_clip_loss(lp, lp.detach(), A, 0.2), lp)
    g2, = torch.autograd.grad(-(A * lp).mean(), lp)
    assert_close(g1, g2, atol=1e-14, rtol=0)


def test_ppo_aggregations_and_per_sequence_advantages():
    new, old, A, mask = ppo_case(seed=7)
    A_seq = torch.randn(4, dtype=f64, generator=gen(8))
    per_seq = rl.ppo_clip_loss(new, old, A_seq, 0.2, mask)
    assert_close(per_seq, rl.ppo_clip_loss(new, old, A_seq[:, None].expand(4, 6), 0.2, mask), atol=1e-14, rtol=0)
    terms = -by_cases((new - old).exp().detach(), A, 0.2)
    seq = statistics.mean(statistics.mean(terms[i][mask[i]].tolist()) for i in range(4))
    assert_close(rl.ppo_clip_loss(new, old, A, 0.2, mask, agg="sequence"), torch.tensor(seq, dtype=f64),
                 atol=1e-12, rtol=0)
    assert_close(rl.ppo_clip_loss(new, old, A, 0.2, mask, agg="constant"), (terms * mask).sum() / 24,
                 atol=1e-12, rtol=0)
    assert_close(rl.ppo_clip_loss(new, old, A, 0.2), terms.mean(), atol=1e-12, rtol=0)   # no mask


def test_ppo_treats_old_logp_and_advantages_as_constants():
    new, old, A, mask = ppo_case(seed=9)
    old, A = old.clone().requires_grad_(), A.clone().requires_grad_()
    rl.ppo_clip_loss(new, old, A, 0.2, mask).backward()
    assert old.grad is None and A.grad is None and new.grad is not None


def test_ppo_errors():
    new, old, A, mask = ppo_case()
    with pytest.raises(ValueError, match="logp_new, logp_old must have the same shape"):
        rl.ppo_clip_loss(new, old[:, :5], A, 0.2)
    with pytest.raises(ValueError, match="advantages must have the shape of logp_new"):
        rl.ppo_clip_loss(new, old, A[:, :2], 0.2)
    with pytest.raises(ValueError, match=r"clip_eps must be a number in \(0, 1\)"):
        rl.ppo_clip_loss(new, old, A, 0.0)
    with pytest.raises(ValueError, match="agg must be one of"):
        rl.ppo_clip_loss(new, old, A, 0.2, agg="mean")
    with pytest.raises(ValueError, match="mask must have the shape"):
        rl.ppo_clip_loss(new, old, A, 0.2, mask[:, :3])
    empty = mask.clone()
    empty[0] = False
    with pytest.raises(ValueError, match="every sequence needs at least one token"):
        rl.ppo_clip_loss(new, old, A, 0.2, empty, agg="sequence")
    with pytest.raises(ValueError, match="the mask selects no token"):
        rl.ppo_clip_loss(new, old, A, 0.2, torch.zeros_like(mask))


def test_value_loss_matches_mse():
    g = gen(10)
    v, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    m = torch.rand(3, 4, generator=g) < 0.6
    assert_close(rl.value_loss(v, t, m), F.mse_loss(v[m], t[m]))
    assert_close(rl.value_loss(v, t), F.mse_loss(v, t))
    with pytest.raises(ValueError, match="values, targets must have the same shape"):
        rl.value_loss(v, t[:2])


# ---- KL estimators -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_estimators_expectations(seed):
    g = gen(seed)
    p = torch.rand(7, dtype=f64, generator=g).add(0.05)
    q = torch.rand(7, dtype=f64, generator=g).add(0.05)
    p, q = p / p.sum(), q / q.sum()
    exact = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=p),
                                              torch.distributions.Categorical(probs=q))
    k = rl.kl_estimators(p.log(), q.log())
    assert_close((p * k.k1).sum(), exact, atol=1e-12, rtol=0)
    assert_close((p * k.k3).sum(), exact, atol=1e-12, rtol=0)
    assert (k.k3 >= 0).all() and (k.k2 >= 0).all()
    assert_close(k.k2, 0.5 * (p.log() - q.log()) ** 2)


def test_k3_is_accurate_near_zero():
    x = torch.tensor([1e-9, -1e-9, 1e-6], dtype=f64)          # log π − log π_ref, tiny
    k3 = rl.kl_estimators(x, torch.zeros(3, dtype=f64)).k3
    assert_close(k3, x ** 2 / 2 + x ** 3 / 6, atol=0, rtol=1e-6)   # Taylor series of e^{-x} − 1 + x


def test_kl_estimators_shape_error():
    with pytest.raises(ValueError, match="logp, ref_logp must have the same shape"):
        rl.kl_estimators(torch.zeros(3), torch.zeros(4))


# ---- GRPO --------------------------------------------------------------------------------------

@pytest.mark.parametrize("G", [2, 3, 8])
def test_grpo_advantages_match_the_definition(G):
    r = torch.rand(5 * G, dtype=f64, generator=gen(G)).round(decimals=1)
    want = []
    for i in range(0, len(r), G):
        grp = r[i:i + G].tolist()
        want += [(x - statistics.mean(grp)) / (statistics.stdev(grp) + 1e-4) for x in grp]
    assert_close(rl.grpo_advantages(r, G), torch.tensor(want, dtype=f64), atol=1e-12, rtol=0)
    plain = [x - statistics.mean(r[i:i + G].tolist()) for i in range(0, len(r), G) for x in r[i:i + G].tolist()]
    assert_close(rl.grpo_advantages(r, G, scale_by_std=False), torch.tensor(plain, dtype=f64), atol=1e-12, rtol=0)


def test_grpo_advantages_all_equal_rewards_give_zero():
    assert_close(rl.grpo_advantages(torch.ones(8), 4), torch.zeros(8))


def test_grpo_advantages_errors():
    with pytest.raises(ValueError, match="does not divide the batch"):
        rl.grpo_advantages(torch.zeros(10), 4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        rl.grpo_advantages(torch.zeros(4), 1)
    assert_close(rl.grpo_advantages(torch.tensor([1.0, 2.0]), 1, scale_by_std=False), torch.zeros(2))
    with pytest.raises(ValueError, match=r"rewards must have shape \(B,\)"):
        rl.grpo_advantages(torch.zeros(2, 4), 4)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="group_size must be an int"):
            rl.grpo_advantages(torch.zeros(4), bad)


def test_grpo_loss_is_ppo_plus_k3():
    new, old, _, mask = ppo_case(seed=11)
    ref = old - 0.3 * torch.rand(old.shape, dtype=f64, generator=gen(12))
    adv = torch.randn(4, dtype=f64, generator=gen(13))
    no_kl = rl.grpo_loss(new, old, ref, adv, mask, beta=0.0)
    assert_close(no_kl, rl.ppo_clip_loss(new, old, adv, 0.2, mask, agg="sequence"), atol=1e-14, rtol=0)
    beta = 0.04
    loss = rl.grpo_loss(new, old, ref, adv, mask, beta=beta)
    k3 = torch.exp(ref - new) - 1 - (ref - new)
    per_seq = [(k3[i][mask[i]]).mean() for i in range(4)]
    assert_close(loss - no_kl, beta * torch.stack(per_seq).mean(), atol=1e-12, rtol=0)
    # gradient of the KL term: ∂k3/∂log π = 1 − π_ref/π (hand derivative of e^{ref − lp} − 1 − (ref − lp))
    g_kl, = torch.autograd.grad(loss - no_kl, new)
    n = mask.sum(1, keepdim=True)
    want = beta * (1 - torch.exp(ref - new.detach())) * mask / (n * 4)
    assert_close(g_kl, want, atol=1e-12, rtol=0)


def test_dr_grpo_token_weights_are_reinforce_weights():
    """Dr. GRPO (constant normaliser, no std) weights every token of answer i by (r_i − r̄)/(G·T);
    GRPO by Â_i/(G|o_i|)."""
    lens, r = torch.tensor([3, 6, 3, 12]), torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=f64)
    m = torch.arange(12) < lens[:, None]
    lp = torch.zeros(4, 12, dtype=f64, requires_grad=True)
    g, = torch.autograd.grad(rl.grpo_loss(lp, lp.detach(), lp.detach(), rl.grpo_advantages(r, 4, scale_by_std=False),
                                          m, agg="constant"), lp)
    assert_close(-g, ((r - r.mean()) / 48)[:, None] * m, atol=1e-14, rtol=0)
    g, = torch.autograd.grad(rl.grpo_loss(lp, lp.detach(), lp.detach(), rl.grpo_advantages(r, 4), m), lp)
    assert_close(-g, (rl.grpo_advantages(r, 4) / (4 * lens))[:, None] * m, atol=1e-14, rtol=0)


# ---- DPO ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_value_and_gradient(beta):
    g = gen(14)
    pc, pr, rc, rr = (torch.randn(6, dtype=f64, generator=g) - 5 for _ in range(4))
    pc.requires_grad_()
    pr.requires_grad_()
    loss = rl.dpo_loss(pc, pr, rc, rr, beta)
    loss.backward()
    h = beta * ((pc - rc) - (pr - rr)).detach()
    want = torch.tensor([-math.log(1 / (1 + math.exp(-x))) for x in h.tolist()], dtype=f64)
    assert_close(loss, want.mean(), atol=1e-12, rtol=0)
    assert_close(rl.dpo_loss(pc, pr, rc, rr, beta, reduction="none"), want, atol=1e-12, rtol=0)
    sig = torch.tensor([1 / (1 + math.exp(x)) for x in h.tolist()], dtype=f64)     # σ(−h)
    assert_close(pc.grad, -beta * sig / 6, atol=1e-12, rtol=0)
    assert_close(pr.grad, beta * sig / 6, atol=1e-12, rtol=0)


def test_dpo_reference_is_constant_and_loss_stable():
    rc = torch.zeros(2, requires_grad=True)
    pc = torch.tensor([2000.0, -2000.0], requires_grad=True)
    loss = rl.dpo_loss(pc, torch.zeros(2), rc, torch.zeros(2), 1.0, reduction="none")
    assert torch.isfinite(loss).all()
    assert_close(loss, torch.tensor([0.0, 2000.0]))
    loss.sum().backward()
    assert rc.grad is None


def test_dpo_minimiser_is_the_kl_regularised_optimum():
    """Minimising the expected DPO loss under Bradley–Terry labels gives π_ref e^{r/β}/Z."""
    r = torch.tensor([0.5, -1.0, 1.2, 0.0], dtype=f64)
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=f64)
    beta = 0.7
    i, j = torch.triu_indices(4, 4, 1)
    p = torch.sigmoid(r[i] - r[j])
    z = ref.log().clone().requires_grad_()
    opt = torch.optim.LBFGS([z], max_iter=300, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        lp, lr = z.log_softmax(0), ref.log()
        loss = (p * rl.dpo_loss(lp[i], lp[j], lr[i], lr[j], beta, reduction="none")
                + (1 - p) * rl.dpo_loss(lp[j], lp[i], lr[j], lr[i], beta, reduction="none")).sum()
        loss.backward()
        return loss

    opt.step(closure)
    star = ref * (r / beta).exp()
    assert_close(z.detach().softmax(0), star / star.sum(), atol=1e-6, rtol=0)


def test_dpo_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="must have the same shape"):
        rl.dpo_loss(x, x, x, torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match=r"must have shape \(B,\)"):
        rl.dpo_loss(*(torch.zeros(2, 3),) * 4, 0.1)
    with pytest.raises(ValueError, match="beta must be a number in"):
        rl.dpo_loss(x, x, x, x, 0.0)
    with pytest.raises(ValueError, match="reduction must be"):
        rl.dpo_loss(x, x, x, x, 0.1, reduction="sum")


# ---- the toy pipeline --------------------------------------------------------------------------

def test_encode_decode_and_errors():
    s = "Q:3+4 A:7."
    assert rl.decode(rl.encode(s)) == s
    with pytest.raises(ValueError, match="not in the vocabulary"):
        rl.encode("3*4")


def test_tiny_lm_shapes_and_token_logprobs():
    torch.manual_seed(0)
    model = rl.TinyLM()
    x = torch.randint(0, len(rl.VOCAB), (3, 12), generator=gen(15))
    assert model(x).shape == (3, 12, len(rl.VOCAB))
    ref = -F.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:], reduction="none")
    assert_close(rl.token_logprobs(model, x), ref, atol=1e-5, rtol=1e-5)
    mask = torch.zeros(3, 12)
    mask[:, 8:10] = 1
    assert_close(rl.sequence_logprobs(model, x, mask), ref[:, 7:9].sum(1), atol=1e-5, rtol=1e-5)
    # causal: a change at position 10 leaves the logits before it unchanged
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % len(rl.VOCAB)
    assert_close(model(y)[:, :10], model(x)[:, :10])
    with pytest.raises(ValueError, match="T <= 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_corpus_and_demos():
    windows = rl.arithmetic_corpus(50, gen(16))
    assert windows.shape[1] == 16 and rl.decode(windows[0].tolist()).count("=") >= 2
    tok, mask = rl.sft_demos(200, slip=0.0, generator=gen(17))
    for t, m in zip(tok.tolist(), mask.tolist()):
        text = rl.decode(t)
        a, b = int(text[2]), int(text[4])
        answer = rl.decode([x for x, keep in zip(t, m) if keep])
        assert text.startswith(f"Q:{a}+{b} A:") and answer == f"{a + b}."
    tok, _ = rl.sft_demos(2000, slip=0.3, generator=gen(18))
    texts = [rl.decode(t.tolist()) for t in tok]
    wrong = sum(s[8:].split(".")[0] != str(int(s[2]) + int(s[4])) for s in texts) / len(texts)
    assert 0.25 < wrong < 0.35                                  # 30% slips, 2000 draws: s.e. ≈ 0.01


def test_sample_mask_and_exact_match():
    torch.manual_seed(0)
    model = rl.TinyLM()
    probs = rl.PROBLEMS[:40]
    tokens, mask = rl.sample(model, rl.prompt_tokens(probs), gen(19))
    assert tokens.shape == mask.shape == (40, rl.PROMPT_LEN + rl.MAX_NEW)
    assert (mask[:, :rl.PROMPT_LEN] == 0).all()
    for t, m in zip(tokens.tolist(), mask.tolist()):
        gen_part, m_part = t[rl.PROMPT_LEN:], m[rl.PROMPT_LEN:]
        end = gen_part.index(rl.EOS) + 1 if rl.EOS in gen_part else len(gen_part)
        assert m_part == [1.0] * end + [0.0] * (len(gen_part) - end)
        assert all(x == rl.PAD for x in gen_part[end:])
    texts = [f"Q:{a}+{b} A:{a + b + i % 2}." for i, (a, b) in enumerate(probs)]   # every other one wrong
    made = torch.tensor([rl.encode(t.ljust(12, "_")) for t in texts])
    assert_close(rl.exact_match(made, probs), torch.tensor([1.0 - i % 2 for i in range(40)]))


@pytest.fixture(scope="module")
def sft_model():
    """The notebook's recipe with a fixed seed: pretraining (600 steps) then SFT (300 steps)."""
    torch.manual_seed(0)
    g = gen(0)
    model = rl.TinyLM()
    corpus = rl.arithmetic_corpus(20_000, g)
    rl.train_lm(model, corpus, torch.ones(corpus.shape), steps=600, lr=1e-2, generator=g)
    demos = rl.sft_demos(4000, slip=0.3, generator=g)
    rl.train_lm(model, *demos, steps=300, lr=3e-3, generator=g)
    return model.requires_grad_(False)


def test_toy_grpo_run_raises_the_reward(sft_model):
    policy = copy.deepcopy(sft_model).requires_grad_(True)
    before = rl.accuracy(policy, gen(123))
    opt = torch.optim.Adam(policy.parameters(), lr=5e-4)
    g, log = gen(1), []
    for _ in range(60):
        batch = [rl.PROBLEMS[i] for i in torch.randint(0, 100, (16,), generator=g).tolist()]
        log.append(rl.grpo_step(policy, sft_model, opt, batch, rl.exact_match, g))
    after = rl.accuracy(policy, gen(123))
    assert after > before + 0.05, (before, after)
    rewards = [s["reward"] for s in log]
    assert sum(rewards[-15:]) / 15 > sum(rewards[:15]) / 15
    assert all(s["kl"] >= 0 for s in log)                  # k3 is never negative


def test_toy_dpo_pairs_and_training(sft_model):
    pairs = rl.dpo_pairs(sft_model, gen(2))
    ct, cm, rt, rm = pairs
    probs = [(int(rl.decode([t[2]])), int(rl.decode([t[4]]))) for t in ct.tolist()]   # "Q:a+b A:" 
    assert (rl.exact_match(ct, probs) == 1).all() and (rl.exact_match(rt, probs) == 0).all()
    assert (ct[:, :rl.PROMPT_LEN] == rt[:, :rl.PROMPT_LEN]).all()          # same prompt in each pair
    policy = copy.deepcopy(sft_model).requires_grad_(True)
    losses = rl.dpo_train(policy, sft_model, pairs, beta=1.0, steps=40, lr=5e-4, generator=gen(3))
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)            # policy = reference at the start
    assert sum(losses[-10:]) / 10 < math.log(2)
