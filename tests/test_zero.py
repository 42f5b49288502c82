"""Tests of course_utils.zero (generated from notebooks/11_zero.ipynb).

The wrappers run on 2 and 4 real processes (gloo) with `TinyLM`, a model with a tied embedding, a
parameter on the root module, a frozen layer and a branch that is never called, sized so that
several parameters need padding at N = 4. After a few steps the parameters must equal
single-process training with SGD (momentum) and AdamW (weight decay: a zero gradient instead of
None would move the unused branch) for DistributedDataParallel (several bucket sizes, counted and
asynchronous collectives), ShardedOptimizer (param groups, add_param_group, several torch.optim
classes, a scheduler) and ShardedDataParallel stages 1-3, and equal torch's DDP,
ZeroRedundancyOptimizer and fully_shard; mixed precision stays within a stated tolerance of fp32.
Bytes sent (counted at the ring's sends) and held (measured from tensors) are checked against the
closed forms, and every contract and bad input is tested. The same rank functions run on NCCL when
the machine has the GPUs (skipped otherwise).
"""
import dataclasses
import re

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from course_utils import zero as Z
from course_utils.launch import run_distributed

STEPS = 3
MODEL = dict(vocab=24, d=10, hidden=14, n_blocks=3, seq=6, seed=3)   # 14 and 10 pad at N = 4
OPTS = {"SGD": (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
        "AdamW": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1))}
# mixed precision (bf16 compute copies and reduction, fp32 masters) against fp32 after STEPS steps:
# ||w_bf16 - w_fp32|| <= MP_TOL · ||w_fp32 - w_0||, a stated bound (the runs give about 0.01-0.04)
MP_TOL = 0.1


def data(device="cpu"):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, MODEL["vocab"], (8, MODEL["seq"]), generator=g).to(device)   # (B, T)


def trainable_names():
    return [k for k, p in Z.TinyLM(**MODEL).named_parameters() if p.requires_grad]


def steps(model, opt, ids, sync=None, n_steps=STEPS):
    for _ in range(n_steps):
        model.zero_grad(set_to_none=True)
        Z.lm_loss(model(ids), ids).backward()
        if sync is not None:
            sync()
        opt.step()
    return opt


def params_of(model):
    """name -> full parameter: gathered for ShardedDataParallel and fully_shard."""
    if isinstance(model, Z.ShardedDataParallel):
        return model.full_parameters()
    inner = getattr(model, "module", model)
    return {k: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for k, p in inner.named_parameters()}


def reference(opt_name, scheduler=False):
    """One process on the whole batch; with a StepLR halving the learning rate after each step."""
    model, ids = Z.TinyLM(**MODEL), data()
    cls, kw = OPTS[opt_name]
    opt = cls(model.parameters(), **kw)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
    for _ in range(STEPS):
        model.zero_grad(set_to_none=True)
        Z.lm_loss(model(ids), ids).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def train_groups(model, make_opt, ids, sync=None):
    """GPT-2's groups for the blocks; the embedding, scale and unused branch join after step 1."""
    inner = getattr(model, "module", model)
    blocks = list(inner.blocks.parameters())
    opt = make_opt([{"params": [p for p in blocks if p.dim() == 2], "weight_decay": 0.1},
                    {"params": [p for p in blocks if p.dim() < 2], "weight_decay": 0.0}])
    steps(model, opt, ids, sync, n_steps=1)
    opt.add_param_group({"params": [inner.embed.weight, inner.scale, *inner.unused.parameters()], "lr": 5e-3})
    return steps(model, opt, ids, sync, n_steps=STEPS - 1)


# ------------------------------------------------------------------ one rank function, many runs
def make(kind, opt_name, n, device="cpu", comm=None):
    """(wrapped model, optimizer) for one wrapper kind; every rank starts from its own seed."""
    rank = dist.get_rank()
    model = Z.TinyLM(**{**MODEL, "seed": MODEL["seed"] + rank}).to(device)
    cls, kw = OPTS[opt_name]
    if kind.startswith("ddp"):                       # ddp, ddp-none (one bucket per parameter), ddp-tiny
        size = {"ddp": 25.0, "ddp-none": None, "ddp-tiny": 0.001}[kind]
        w = Z.DistributedDataParallel(model, size, find_unused_parameters=True, comm=comm)
        return w, cls(w.parameters(), **kw)
    if kind == "zero1":
        w = Z.DistributedDataParallel(model, find_unused_parameters=True, comm=comm)
        return w, Z.ShardedOptimizer(w.parameters(), cls, comm=comm, **kw)
    if kind.startswith("sdp"):                       # sdp1, sdp2, sdp3, sdp3-noprefetch, sdp2-mp, ...
        stage = int(kind[3])
        w = Z.ShardedDataParallel(model, stage=stage, units=list(model.blocks), comm=comm,
                                  prefetch="noprefetch" not in kind,
                                  mixed_precision=Z.MixedPrecision() if kind.endswith("mp") else None)
        return w, cls(w.parameters(), **kw)
    if kind == "torch-ddp":
        w = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        return w, cls(w.parameters(), **kw)
    if kind == "torch-zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer
        w = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        return w, ZeroRedundancyOptimizer(w.parameters(), optimizer_class=cls, **kw)
    if kind == "fully_shard":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        model = Z.TinyLM(**MODEL).to(device)             # FSDP2 does not broadcast: same seed
        mesh = init_device_mesh(device.split(":")[0], (n,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model, cls(model.parameters(), **kw)
    raise ValueError(kind)


KINDS = ["ddp", "ddp-none", "ddp-tiny", "zero1", "sdp1", "sdp2", "sdp3", "sdp3-noprefetch"]
TORCH_KINDS = ["torch-ddp", "torch-zero", "fully_shard"]
MP_KINDS = ["sdp1-mp", "sdp2-mp", "sdp3-mp"]


def train_all(rank, n, device="cpu"):
    if device == "cuda":
        device = f"cuda:{rank}"
    x = data(device).chunk(n)[rank]                                   # (B/N, T)
    out = {}
    for opt_name in OPTS:
        for kind in KINDS + MP_KINDS:
            for comm_kind in ("counter", "torch"):
                if comm_kind == "counter" and device != "cpu":
                    continue                                          # the ring is for gloo here
                comm = Z.CommCounter() if comm_kind == "counter" else Z.TorchComm()
                w, opt = make(kind, opt_name, n, device, comm)
                steps(w, opt, x, sync=getattr(w, "finish_gradient_synchronization", None))
                out[kind, opt_name, comm_kind] = {k: v.cpu() for k, v in params_of(w).items()}
        if device == "cpu":
            for kind in TORCH_KINDS:
                w, opt = make(kind, opt_name, n)
                steps(w, opt, x)
                out[kind, opt_name, "torch"] = params_of(w)
    return out


@pytest.fixture(scope="module")
def refs():
    return {opt_name: reference(opt_name) for opt_name in OPTS}


@pytest.fixture(scope="module")
def runs(refs):    # after refs: the parent has imported torch.optim's lazy parts, so the forks need not
    return {n: run_distributed(train_all, n, timeout=180) for n in (2, 4)}


CASES = [(n, kind, opt_name, comm) for n in (2, 4) for opt_name in OPTS
         for kind in KINDS for comm in ("counter", "torch")]


@pytest.mark.parametrize("n, kind, opt_name, comm", CASES)
def test_weights_after_k_steps_equal_single_process(runs, refs, n, kind, opt_name, comm):
    for r, res in enumerate(runs[n]):
        got = res[kind, opt_name, comm]
        for k in trainable_names():
            assert_close(got[k], refs[opt_name][k], atol=1e-6, rtol=1e-5, msg=f"rank {r}, {k}")


@pytest.mark.parametrize("n, kind, opt_name", [(n, k, o) for n in (2, 4) for k in TORCH_KINDS for o in OPTS])
def test_torch_wrappers_reach_the_same_weights(runs, refs, n, kind, opt_name):
    for res in runs[n]:
        for k in trainable_names():
            assert_close(res[kind, opt_name, "torch"][k], refs[opt_name][k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.parametrize("n, kind, opt_name", [(n, k, o) for n in (2, 4) for k in MP_KINDS for o in OPTS])
def test_mixed_precision_stays_within_the_stated_tolerance_of_fp32(runs, refs, n, kind, opt_name):
    names = trainable_names()
    ref = torch.cat([refs[opt_name][k].reshape(-1) for k in names])
    w0 = dict(Z.TinyLM(**MODEL).named_parameters())
    moved = (ref - torch.cat([w0[k].detach().reshape(-1) for k in names])).norm()
    for comm in ("counter", "torch"):
        for res in runs[n]:
            got = torch.cat([res[kind, opt_name, comm][k].reshape(-1) for k in names])
            assert (got - ref).norm() <= MP_TOL * moved
            assert not torch.equal(got, ref)         # it is bf16: not the fp32 result exactly


def test_unused_and_frozen_parameters_do_not_move(runs):
    init = dict(Z.TinyLM(**MODEL).named_parameters())
    for res in runs[4]:
        for kind in ("ddp", "zero1", "ddp-none"):
            got = res[kind, "AdamW", "counter"]
            for k in ("unused.weight", "unused.bias", "pos.weight"):
                assert_close(got[k], init[k].detach(), atol=0, rtol=0, msg=f"{kind}: {k}")
        for kind in ("sdp1", "sdp2", "sdp3"):
            got = res[kind, "AdamW", "counter"]
            assert "pos.weight" not in got                          # frozen: not sharded
            for k in ("unused.weight", "unused.bias"):
                assert_close(got[k], init[k].detach(), atol=0, rtol=0, msg=f"{kind}: {k}")


# ------------------------------------------------------------------ bytes sent and held
def count_run(rank, n):
    x, out = data().chunk(n)[rank], {}
    comm = Z.CommCounter()
    ddp = Z.DistributedDataParallel(Z.TinyLM(**MODEL), bucket_size_mb=0.001, find_unused_parameters=True, comm=comm)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for _ in range(2):
        comm.reset()
        steps(ddp, opt, x, ddp.finish_gradient_synchronization, n_steps=1)
    out["ddp"] = [dataclasses.astuple(e) for e in comm.log]
    comm = Z.CommCounter()
    ddp = Z.DistributedDataParallel(Z.TinyLM(**MODEL), find_unused_parameters=True, comm=comm)
    opt = Z.ShardedOptimizer([p for p in ddp.parameters() if p.requires_grad], torch.optim.AdamW, comm=comm)
    for _ in range(2):
        comm.reset()
        steps(ddp, opt, x, ddp.finish_gradient_synchronization, n_steps=1)
    out["zero1"] = [dataclasses.astuple(e) for e in comm.log]
    out["zero1-state"], out["zero1-sizes"] = Z.optimizer_state_bytes(opt), opt.sizes
    y = torch.randn(8, 1, generator=torch.Generator().manual_seed(2)).chunk(n)[rank]
    xs = torch.randn(8, 5, generator=torch.Generator().manual_seed(3)).chunk(n)[rank]
    for stage in (1, 2, 3):
        comm, model = Z.CommCounter(), Z.tiny_model(d=5, hidden=7, n_blocks=2)
        sdp = Z.ShardedDataParallel(model, stage=stage, units=list(model), comm=comm,
                                    mixed_precision=Z.MixedPrecision())
        opt = torch.optim.Adam(sdp.parameters())
        for step in range(2):
            messages = comm.stats.messages_sent
            comm.reset()
            comm.mark("forward")
            loss = F.mse_loss(sdp(xs), y)
            comm.mark("backward")
            loss.backward()
            held = sdp.held_bytes(opt)
            comm.mark("sync")
            sdp.finish_gradient_synchronization()
            comm.mark("step")
            opt.step()
            opt.zero_grad()
        out[stage] = dict(log=[dataclasses.astuple(e) for e in comm.log], marks=list(comm.marks),
                          held=held, peak=sdp.peak_params, messages=comm.stats.messages_sent - messages)
    return out


@pytest.fixture(scope="module")
def counted(refs):
    return {n: run_distributed(count_run, n, timeout=120) for n in (2, 4)}


def events(log):
    return [Z.CommEvent(*t) for t in log]


@pytest.mark.parametrize("n", (2, 4))
def test_ddp_sends_2_n_minus_1_psi_over_the_ranks(counted, n):
    """A ring all-reduce of S bytes sends (N-1)·S over all ranks in each of its two phases, whether
    or not N divides the buffer; the flags are one float per trainable tensor."""
    psi = sum(p.numel() for p in Z.TinyLM(**MODEL).parameters() if p.requires_grad)
    tensors = sum(1 for p in Z.TinyLM(**MODEL).parameters() if p.requires_grad)
    all_events = [e for r in counted[n] for e in events(r["ddp"])]
    assert sum(e.sent for e in all_events if e.tag.startswith("bucket")) == 2 * (n - 1) * 4 * psi
    assert sum(e.sent for e in all_events if e.tag == "used") == 2 * (n - 1) * 4 * tensors
    assert sum(e.received for e in all_events) == sum(e.sent for e in all_events)
    for r in counted[n]:                                 # buckets launched in order, flags first
        tags = [e.tag for e in events(r["ddp"])]
        assert tags == ["used"] + [f"bucket {i}" for i in range(len(tags) - 1)]


@pytest.mark.parametrize("n", (2, 4))
def test_zero_redundancy_shape_sends_3_n_minus_1_psi(counted, n):
    psi = sum(p.numel() for p in Z.TinyLM(**MODEL).parameters() if p.requires_grad)
    all_events = [e for r in counted[n] for e in events(r["zero1"])]
    assert sum(e.sent for e in all_events if e.op == "all_reduce" and e.tag != "used") == 2 * (n - 1) * 4 * psi
    assert sum(e.sent for e in all_events if e.op == "broadcast") == (n - 1) * 4 * psi
    for r in counted[n]:
        assert sum(1 for e in events(r["zero1"]) if e.op == "broadcast") == n    # one per owner


@pytest.mark.parametrize("n", (2, 4))
def test_sharded_optimizer_state_is_a_balanced_partition(counted, n):
    model = Z.TinyLM(**MODEL)
    psi = sum(p.numel() for p in model.parameters() if p.requires_grad)
    unused = sum(p.numel() for p in model.unused.parameters())       # no gradient: no AdamW state
    states = [r["zero1-state"] for r in counted[n]]
    assert sum(states) == 8 * (psi - unused)                         # m and v, a partition
    assert max(states) <= 8 * psi / n + 8 * max(p.numel() for p in model.parameters())
    assert sum(counted[n][0]["zero1-sizes"]) == psi


def unit_sizes(n):
    ps = list(Z.tiny_model(d=5, hidden=7, n_blocks=2).parameters())
    return sum(p.numel() for p in ps), sum(-(-p.numel() // n) * n for p in ps)


@pytest.mark.parametrize("n, stage", [(n, s) for n in (2, 4) for s in (1, 2, 3)])
def test_sharded_bytes_sent_per_step_equal_the_paper(counted, n, stage):
    """2(N-1)/N·P (stages 1, 2) and 3(N-1)/N·P (stage 3) bf16 elements per rank, P padded,
    written out here rather than taken from the module."""
    _, P = unit_sizes(n)
    factor = 3 if stage == 3 else 2
    for r in counted[n]:
        got = sum(e.sent for e in events(r[stage]["log"]))
        assert got == factor * (n - 1) * P * 2 // n == Z.comm_bytes_per_step(P, n, stage)


@pytest.mark.parametrize("n, stage", [(n, s) for n in (2, 4) for s in (1, 2, 3)])
def test_sharded_bytes_held_at_the_end_of_backward(counted, n, stage):
    """bf16 compute copies (2Ψ, none between uses at stage 3), bf16 gradients (2Ψ whole at
    stage 1, 2P/N after the reduce-scatter), fp32 shard + Adam m and v (12P/N)."""
    psi, P = unit_sizes(n)
    want = {1: [2 * psi, 2 * psi, 12 * P // n], 2: [2 * psi, 2 * P // n, 12 * P // n],
            3: [0, 2 * P // n, 12 * P // n]}[stage]
    for r in counted[n]:
        assert list(r[stage]["held"].values()) == want


@pytest.mark.parametrize("n", (2, 4))
def test_zero3_compute_copies_peak_at_one_unit(counted, n):
    block = 2 * sum(p.numel() for p in Z.Block(5, 7).parameters())
    assert [r[3]["peak"] for r in counted[n]] == [block] * n


PHASES = {1: {("all_gather", "forward"), ("reduce_scatter", "sync")},
          2: {("all_gather", "forward"), ("reduce_scatter", "backward")},
          3: {("all_gather", "forward"), ("all_gather", "backward"), ("reduce_scatter", "backward")}}


@pytest.mark.parametrize("n, stage", [(n, s) for n in (2, 4) for s in (1, 2, 3)])
def test_each_collective_runs_in_its_phase(counted, n, stage):
    phase_marks = ("forward", "backward", "sync", "step")
    for r in counted[n]:
        marks = [(lab, t) for lab, t in r[stage]["marks"] if lab in phase_marks]
        got = {(e.op, [lab for lab, t in marks if t <= e.start][-1]) for e in events(r[stage]["log"])}
        assert got == PHASES[stage]
        # 3 units (2 blocks and the head): each ring collective sends N-1 messages
        per_step = {1: 6, 2: 6, 3: 9}[stage] * (n - 1)
        assert r[stage]["messages"] == per_step


# ------------------------------------------------------------------ contracts, single process or small runs
def test_single_process_ddp_is_the_plain_model_to_the_bit():
    for opt_name, (cls, kw) in OPTS.items():
        ref = Z.TinyLM(**MODEL)
        steps(ref, cls(ref.parameters(), **kw), data())
        ddp = Z.DistributedDataParallel(Z.TinyLM(**MODEL), find_unused_parameters=True)
        steps(ddp, cls(ddp.parameters(), **kw), data(), ddp.finish_gradient_synchronization)
        for (k, p), q in zip(ref.named_parameters(), ddp.module.parameters()):
            assert_close(q, p, atol=0, rtol=0, msg=k)


def test_single_process_sharded_is_the_plain_model_to_the_bit():
    ref = Z.TinyLM(**MODEL)
    steps(ref, torch.optim.AdamW(ref.parameters(), lr=1e-2), data())
    for stage in (1, 2, 3):
        model = Z.TinyLM(**MODEL)
        sdp = Z.ShardedDataParallel(model, stage=stage, units=list(model.blocks))
        steps(sdp, torch.optim.AdamW(sdp.parameters(), lr=1e-2), data(), sdp.finish_gradient_synchronization)
        for k, p in sdp.full_parameters().items():
            assert_close(p, dict(ref.named_parameters())[k].detach(), atol=0, rtol=0, msg=f"stage {stage}: {k}")


def test_ddp_buckets_reverse_order_tied_once_frozen_never_and_respect_the_cap():
    model = Z.TinyLM(**MODEL)
    names = {id(p): k for k, p in model.named_parameters()}
    for size in (25.0, 0.001, None):
        ddp = Z.DistributedDataParallel(Z.TinyLM(**MODEL), bucket_size_mb=size)
        flat = [ddp.names[id(p)] for b in ddp.buckets for p in b]
        assert flat == [names[id(p)] for p in model.parameters() if p.requires_grad][::-1]
        assert "pos.weight" not in flat and "head.weight" not in flat and flat.count("embed.weight") == 1
        if size is None:
            assert all(len(b) == 1 for b in ddp.buckets)
        else:
            for b in ddp.buckets:
                assert len(b) == 1 or sum(p.numel() * 4 for p in b) <= size * 2**20
    assert len(Z.DistributedDataParallel(Z.TinyLM(**MODEL)).buckets) == 1


def test_ddp_without_find_unused_names_the_parameter():
    ddp = Z.DistributedDataParallel(Z.TinyLM(**MODEL))
    Z.lm_loss(ddp(data()), data()).backward()
    with pytest.raises(RuntimeError, match=re.escape("['unused.weight', 'unused.bias'] received no gradient")):
        ddp.finish_gradient_synchronization()


def test_ddp_keeps_grad_none_for_unused_and_refuses_misuse():
    ddp = Z.DistributedDataParallel(Z.TinyLM(**MODEL), find_unused_parameters=True)
    with pytest.raises(RuntimeError, match="call loss.backward"):
        ddp.finish_gradient_synchronization()
    loss = Z.lm_loss(ddp(data()), data())
    with pytest.raises(RuntimeError, match="call finish_gradient_synchronization"):
        ddp(data())
    loss.backward()
    ddp.finish_gradient_synchronization()
    assert ddp.module.unused.weight.grad is None and ddp.module.pos.weight.grad is None
    assert ddp.module.embed.weight.grad is not None
    Z.lm_loss(ddp(data()), data()).backward()
    with pytest.raises(RuntimeError, match="a second backward reached"):
        Z.lm_loss(ddp.module(data()), data()).backward()


def test_sharded_refuses_misuse_and_keeps_frozen_whole_in_param_dtype():
    model = Z.TinyLM(**MODEL)
    sdp = Z.ShardedDataParallel(model, stage=3, units=list(model.blocks), mixed_precision=Z.MixedPrecision())
    assert model.pos.weight.dtype == torch.bfloat16 and model.pos.weight.shape == (MODEL["seq"], MODEL["d"])
    assert model.head.weight is model.embed.weight                    # still tied: one shard
    assert {sp.name: sp.unit for sp in sdp.params}["embed.weight"] == 3   # the root (after 3 blocks)
    assert all(p.dtype == torch.float32 for p in sdp.parameters() if p.requires_grad)
    with pytest.raises(RuntimeError, match="call loss.backward"):
        sdp.finish_gradient_synchronization()
    out = sdp(data())
    assert out.dtype == torch.float32                                  # the loss is fp32
    Z.lm_loss(out, data()).backward()
    with pytest.raises(RuntimeError, match="call finish_gradient_synchronization"):
        sdp(data())
    sdp.finish_gradient_synchronization()
    assert sdp.params[0].shard.grad is not None
    assert {sp.name: sp.shard.grad for sp in sdp.params}["unused.weight"] is None
    assert all(sp.full.untyped_storage().nbytes() == 0 for sp in sdp.params)   # all freed


def test_sharded_eval_forward_under_no_grad_frees_everything():
    model = Z.TinyLM(**MODEL)
    ref = model(data()).detach()
    sdp = Z.ShardedDataParallel(model, stage=3, units=list(model.blocks))
    with torch.no_grad():
        assert_close(sdp(data()), ref, atol=0, rtol=0)
    assert all(sp.full.untyped_storage().nbytes() == 0 for sp in sdp.params)


def broadcast_start(rank, n):
    ddp = Z.DistributedDataParallel(Z.TinyLM(**{**MODEL, "seed": rank}))
    model = Z.TinyLM(**{**MODEL, "seed": rank})
    sdp = Z.ShardedDataParallel(model, stage=3, units=list(model.blocks))
    return torch.cat([p.detach().reshape(-1) for p in ddp.module.parameters()]), sdp.full_parameters()


@pytest.mark.parametrize("n", (2, 4))
def test_construction_broadcasts_rank_0s_weights(n):
    want = dict(Z.TinyLM(**{**MODEL, "seed": 0}).named_parameters())
    for flat, full in run_distributed(broadcast_start, n, timeout=60):
        assert_close(flat, torch.cat([p.detach().reshape(-1) for p in want.values()]), atol=0, rtol=0)
        for k, v in full.items():
            assert_close(v, want[k].detach(), atol=0, rtol=0)


def overlap_order(rank, n):
    out = {}
    for overlap in (True, False):
        comm = Z.TorchComm()
        ddp = Z.DistributedDataParallel(Z.tiny_model(8, 16, 3), bucket_size_mb=None, overlap=overlap, comm=comm)
        comm.reset()                                     # not the broadcasts of the construction
        loss = F.mse_loss(ddp(torch.randn(4, 8)), torch.zeros(4, 1))
        comm.mark("backward")
        loss.backward()
        comm.mark("backward done")
        ddp.finish_gradient_synchronization()
        out[overlap] = ([dataclasses.astuple(e) for e in comm.log], list(comm.marks))
    comm = Z.TorchComm()
    model = Z.tiny_model(8, 16, 3)
    sdp = Z.ShardedDataParallel(model, stage=3, units=list(model), comm=comm)
    comm.reset()
    F.mse_loss(sdp(torch.randn(4, 8)), torch.zeros(4, 1)).backward()
    sdp.finish_gradient_synchronization()
    out["sdp"] = ([dataclasses.astuple(e) for e in comm.log], list(comm.marks))
    return out


def test_async_collectives_overlap_backward_and_note_their_end():
    for res in run_distributed(overlap_order, 2, timeout=60):
        log, marks = res[True]
        done = dict(marks)["backward done"]
        assert all(e[5] < done for e in log)                          # launched during backward
        assert all(e[6] is not None and e[6] >= e[5] for e in log)   # every end noted
        log, marks = res[False]
        assert all(e[5] > dict(marks)["backward done"] for e in log)
        log, marks = res["sdp"]
        starts = {e[1]: e[5] for e in log}
        assert starts["param 1 (forward)"] < dict(marks)["forward 0 done"]   # the prefetch
        assert all(e[6] is not None for e in log)                     # reduce-scatters too (watcher)


def zero1_details(rank, n):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    model = Z.TinyLM(**MODEL)
    ours = Z.ShardedOptimizer(model.parameters(), torch.optim.AdamW, lr=1e-2)
    theirs = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-2)
    ids = {id(p): i for i, p in enumerate(model.parameters())}
    mine_ours = sorted(ids[id(p)] for p in model.parameters() if ours.owner[id(p)] == rank)
    mine_theirs = sorted(ids[id(p)] for g in theirs._partition_parameters()[rank] for p in g["params"])
    x = data().chunk(n)[rank]
    ddp = Z.DistributedDataParallel(Z.TinyLM(**MODEL), find_unused_parameters=True)
    opt = train_groups(ddp, lambda g: Z.ShardedOptimizer(g, torch.optim.AdamW, lr=1e-2), x,
                       sync=ddp.finish_gradient_synchronization)
    groups = {k: v.detach().clone() for k, v in ddp.module.named_parameters()}
    own_state_only = all(opt.owner[id(p)] == rank for p in opt.optim.state)
    ddp = Z.DistributedDataParallel(Z.TinyLM(**MODEL), find_unused_parameters=True)
    opt = Z.ShardedOptimizer(ddp.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(STEPS):
        ddp.zero_grad(set_to_none=True)
        Z.lm_loss(ddp(x), x).backward()
        ddp.finish_gradient_synchronization()
        opt.step()
        sched.step()
    scheduled = {k: v.detach().clone() for k, v in ddp.module.named_parameters()}
    others = {}
    for name, kw in (("Adagrad", dict(lr=0.1)), ("RMSprop", dict(lr=1e-3)), ("Adafactor", dict(lr=1e-2))):
        if not hasattr(torch.optim, name):
            continue
        ddp = Z.DistributedDataParallel(Z.TinyLM(**MODEL), find_unused_parameters=True)
        steps(ddp, Z.ShardedOptimizer(ddp.parameters(), getattr(torch.optim, name), **kw), x,
              ddp.finish_gradient_synchronization)
        others[name] = {k: v.detach().clone() for k, v in ddp.module.named_parameters()}
    return mine_ours, mine_theirs, groups, scheduled, others, own_state_only


@pytest.fixture(scope="module")
def zero1(refs):
    return {n: run_distributed(zero1_details, n, timeout=120) for n in (2, 4)}


@pytest.mark.parametrize("n", (2, 4))
def test_sharded_optimizer_partitions_like_zero_redundancy_optimizer(zero1, n):
    for mine_ours, mine_theirs, *_ in zero1[n]:
        assert mine_ours == mine_theirs
    owned = sorted(i for r in zero1[n] for i in r[0])
    assert owned == list(range(len(list(Z.TinyLM(**MODEL).parameters()))))    # a partition


@pytest.mark.parametrize("n", (2, 4))
def test_sharded_optimizer_groups_add_param_group_and_a_scheduler(zero1, n):
    ref_groups = Z.TinyLM(**MODEL)
    train_groups(ref_groups, lambda g: torch.optim.AdamW(g, lr=1e-2), data())
    ref_sched = reference("SGD", scheduler=True)
    for _, _, groups, scheduled, _, own_state_only in zero1[n]:
        assert own_state_only                            # state for the own partition only
        for k, p in ref_groups.named_parameters():
            assert_close(groups[k], p.detach(), atol=1e-6, rtol=1e-5, msg=k)
        for k in ref_sched:
            assert_close(scheduled[k], ref_sched[k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.parametrize("n", (2, 4))
def test_sharded_optimizer_takes_any_torch_optimizer(zero1, n):
    for name, kw in (("Adagrad", dict(lr=0.1)), ("RMSprop", dict(lr=1e-3)), ("Adafactor", dict(lr=1e-2))):
        if not hasattr(torch.optim, name):
            continue
        ref = Z.TinyLM(**MODEL)
        steps(ref, getattr(torch.optim, name)(ref.parameters(), **kw), data())
        for *_, others, _ in zero1[n]:
            for k, p in ref.named_parameters():
                assert_close(others[name][k], p.detach(), atol=1e-5, rtol=1e-4, msg=f"{name}: {k}")


def test_sharded_optimizer_master_weights_step_in_fp32():
    model = Z.TinyLM(**MODEL).to(torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = Z.ShardedOptimizer(trainable, torch.optim.Adam, master_dtype=torch.float32, lr=1e-3)
    Z.lm_loss(model(data()), data()).backward()
    opt.step()
    psi = sum(p.numel() for p in trainable)
    unused = sum(p.numel() for p in model.unused.parameters())       # no gradient: no m, v
    assert Z.optimizer_state_bytes(opt) == 4 * psi + 8 * (psi - unused)   # fp32 masters + m + v
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    for p, master in opt.masters.values():
        assert master.dtype == torch.float32 and torch.equal(p, master.to(torch.bfloat16))


# ------------------------------------------------------------------ the collectives and their counts
def collectives(rank, n):
    out = {}
    for comm in (Z.CommCounter(), Z.TorchComm()):
        x = torch.arange(6 * n, dtype=torch.float64) * (rank + 1)             # (6N,)
        shard = torch.empty(6, dtype=torch.float64)
        comm.reduce_scatter(shard, x, tag="rs")
        full = torch.empty(6 * n, dtype=torch.float64)
        comm.all_gather(full, shard, tag="ag")
        y = x.clone()
        comm.all_reduce(y, tag="ar")
        b = x.clone()
        comm.broadcast(b, n - 1, tag="bc")
        out[type(comm).__name__] = (shard, full, y, b, [dataclasses.astuple(e) for e in comm.log])
    return out


@pytest.mark.parametrize("n", (2, 3, 4))
def test_comm_collectives_and_counted_ring_bytes(n):
    ref_ar = torch.arange(6 * n, dtype=torch.float64) * (n * (n + 1) // 2)      # Σ_r (r + 1) · arange
    for rank, res in enumerate(run_distributed(collectives, n, timeout=60)):
        for kind, (shard, full, y, b, log) in res.items():
            assert_close(shard, ref_ar[6 * rank: 6 * (rank + 1)], atol=0, rtol=0)   # chunk r
            assert_close(full, ref_ar, atol=0, rtol=0)
            assert_close(y, ref_ar, atol=0, rtol=0)
            assert_close(b, torch.arange(6 * n, dtype=torch.float64) * n, atol=0, rtol=0)
            assert [e[1] for e in log] == ["rs", "ag", "ar", "bc"] and all(e[6] >= e[5] for e in log)
        s = 6 * n * 8                                        # payload: 6N float64
        star = ((n - 1) * s, 0) if rank == n - 1 else (0, s)
        assert [(e[0], e[2], e[3], e[4]) for e in res["CommCounter"][4]] == [
            ("reduce_scatter", s, (n - 1) * s // n, (n - 1) * s // n),
            ("all_gather", s, (n - 1) * s // n, (n - 1) * s // n),
            ("all_reduce", s, 2 * (n - 1) * s // n, 2 * (n - 1) * s // n),
            ("broadcast", s, *star)]
        assert all(e[3] is None for e in res["TorchComm"][4])  # the library does not count


def test_comm_alone_copies_and_sends_nothing():
    for comm in (Z.CommCounter(), Z.TorchComm()):
        out = torch.empty(5)
        assert comm.reduce_scatter(out, torch.arange(5.0), async_op=True).wait()
        assert_close(out, torch.arange(5.0))
        assert comm.n == 1 and len(comm.log) == 1
        comm.mark("x")
        comm.reset()
        assert comm.log == [] and comm.marks == []
    assert Z.CommCounter().bytes_sent == 0


# ------------------------------------------------------------------ formulas and memory
def test_model_state_bytes_reproduces_the_zero_paper():
    got = [sum(Z.model_state_bytes(7.5e9, 64, s).values()) / 1e9 for s in range(4)]
    assert [round(v, 1) for v in got] == [120.0, 31.4, 16.6, 1.9]
    assert Z.model_state_bytes(1000, 8, 2, param_bytes=4, grad_bytes=4, K=8) == \
        {"params": 4000, "grads": 500, "optimizer": 1000}


def test_comm_bytes_per_step():
    assert [Z.comm_bytes_per_step(120, 4, s, elem_bytes=4) for s in range(4)] == [720] * 3 + [1080]
    assert Z.comm_bytes_per_step(10, 1, 3) == 0


def test_elementwise_adamw_steps_chunks_like_the_whole_tensor():
    """Why a shard can be stepped alone: AdamW on N chunks = AdamW on the tensor, to the bit."""
    g = torch.Generator().manual_seed(0)
    w, grads = torch.randn(7, 3, generator=g), [torch.randn(7, 3, generator=g) for _ in range(3)]
    whole = w.clone().requires_grad_()
    chunks = [c.clone().requires_grad_() for c in w.reshape(-1).tensor_split(4)]
    o1, o2 = torch.optim.AdamW([whole], lr=0.05), torch.optim.AdamW(chunks, lr=0.05)
    for gr in grads:
        whole.grad = gr.clone()
        for c, gc in zip(chunks, gr.reshape(-1).tensor_split(4)):
            c.grad = gc.clone()
        o1.step()
        o2.step()
    assert_close(torch.cat([c.detach() for c in chunks]), whole.detach().reshape(-1), atol=0, rtol=0)


def test_peak_memory_counts_new_storage_only():
    base = torch.ones(100)
    with Z.PeakMemory() as pm:
        v = base.view(10, 10)                  # a view of an outside tensor: not counted
        a = base * 2                           # 400 bytes
        b = torch.empty(50, dtype=torch.float64)   # 400 bytes
        del a
        after = pm.live
    assert (pm.peak, after) == (800, 400)
    del b, v


def test_peak_memory_sees_activations_of_a_block():
    block = Z.Block(8, 12)
    x = torch.randn(10, 8)
    with Z.PeakMemory() as pm:
        y = block(x)
        kept = pm.live
    assert kept == 4 * 10 * (8 + 8 + 2 * 12 + 2)    # output, LN out, 2 hidden, mean and rstd
    del y


# ------------------------------------------------------------------ NCCL, where the GPUs exist
@pytest.mark.parametrize("n", (1, 2))
def test_the_wrappers_on_nccl(refs, n):
    """The rank function of the gloo runs, on one GPU per rank with NCCL (TorchComm only)."""
    if not dist.is_nccl_available() or torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} CUDA GPUs and NCCL")
    res = run_distributed(train_all, n, "cuda", backend="nccl", timeout=300)
    for r in res:
        for kind in KINDS:
            for opt_name in OPTS:
                got = r[kind, opt_name, "torch"]
                for k in trainable_names():
                    # cuBLAS and NCCL sum in other orders than the CPU: a looser bound
                    assert_close(got[k], refs[opt_name][k], atol=1e-4, rtol=1e-4, msg=f"{kind} {opt_name} {k}")


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("call, exc, match", [
    (lambda: Z.model_state_bytes(10, 4, 4), ValueError, "stage must be one of 0 (DDP)"),
    (lambda: Z.model_state_bytes(10, 0, 1), ValueError, "n_gpus must be an int >= 1"),
    (lambda: Z.model_state_bytes(0, 4, 1), ValueError, "psi must be a number >= 1"),
    (lambda: Z.model_state_bytes(10, 4, 1, K=-1), ValueError, "K must be a number >= 0"),
    (lambda: Z.comm_bytes_per_step(10, 4, True), ValueError, "stage must be one of"),
    (lambda: Z.comm_bytes_per_step(10, 4, 1, elem_bytes=-2), ValueError, "elem_bytes"),
    (lambda: Z.TinyLM(d=0), ValueError, "TinyLM: d must be an int >= 1"),
    (lambda: Z.tiny_model(d=0), ValueError, "d must be an int >= 1"),
    (lambda: Z.DistributedDataParallel("model"), TypeError, "module must be an nn.Module"),
    (lambda: Z.DistributedDataParallel(Z.TinyLM(), bucket_size_mb=-1), ValueError, "bucket_size_mb must be a number >= 0"),
    (lambda: Z.DistributedDataParallel(Z.TinyLM(), comm="c"), TypeError, "comm must be a Comm"),
    (lambda: Z.ShardedOptimizer(Z.TinyLM().parameters(), "adam"), TypeError, "optimizer_cls must be a torch.optim.Optimizer class"),
    (lambda: Z.ShardedOptimizer(Z.TinyLM().parameters(), torch.optim.Adam, master_dtype=torch.int8), TypeError,
     "master_dtype must be a floating torch.dtype"),
    (lambda: Z.ShardedDataParallel(Z.TinyLM(), stage=0), ValueError, "stage must be one of 1 (ZeRO-1), 2 (ZeRO-2), 3 (ZeRO-3)"),
    (lambda: Z.ShardedDataParallel(Z.TinyLM(), units=[nn.Linear(2, 2)]), ValueError, "units must be submodules"),
    (lambda: Z.ShardedDataParallel(Z.TinyLM(), mixed_precision="bf16"), TypeError, "mixed_precision must be a MixedPrecision"),
    (lambda: Z.CommCounter().reduce_scatter(torch.empty(3), torch.empty(4)), ValueError,
     "inp must have N·3 = 3 elements (N = 1), got 4"),
    (lambda: Z.CommCounter().all_gather(torch.empty(3), torch.empty(3, dtype=torch.float64)),
     TypeError, "one dtype"),
    (lambda: Z.TorchComm().all_gather(torch.empty(2), torch.empty(3)), ValueError,
     "out must have N·3 = 3 elements"),
    (lambda: Z.CommCounter().all_reduce(3.0), TypeError, "t must be a torch.Tensor"),
    (lambda: Z.TorchComm().broadcast(torch.empty(2), 1), ValueError, "src must be a rank in [0, 0]"),
])
def test_bad_inputs_raise_clear_errors(call, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        call()
