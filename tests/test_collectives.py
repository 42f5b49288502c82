"""Tests of course_utils.collectives (generated from notebooks/10_collectives.ipynb).

Every collective built from send/recv is compared with torch.distributed's own on 2, 3 and 4
real processes (gloo), on awkward sizes and several dtypes; the ring all-reduce's byte count with
its formula; the Megatron tensor-parallel MLP's output and gradients with the dense MLP; and every
bad-input error.
"""
import importlib.util
import re
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from course_utils import collectives as C
from course_utils.exercises import ExerciseError
from course_utils.launch import RankError, run_distributed

ROOT = Path(__file__).resolve().parent.parent
OPS = {"sum": dist.ReduceOp.SUM, "prod": dist.ReduceOp.PRODUCT, "max": dist.ReduceOp.MAX,
       "min": dist.ReduceOp.MIN}



def launch(fn, n, *args):
    return run_distributed(fn, n, *args, timeout=20, echo=False)

def rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype in (torch.int64, torch.int32):
        return torch.randint(-5, 6, shape, generator=g, dtype=dtype)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------- the eight collectives
def eight_vs_dist(rank, n):
    """Each collective, ours and the library's, on the same awkward inputs. Returns name -> pairs."""
    out = {}
    src = n - 1
    x = rand((7,), torch.float64, rank)                                   # length 7: awkward
    ref = x.clone()
    dist.broadcast(ref, src)
    out["broadcast"] = (C.broadcast(x, src), ref)

    big = rand((2 * n, 3), torch.float32, 100 + rank)                     # equal pieces for dist
    ref = torch.empty(2, 3)
    dist.scatter(ref, list(big.tensor_split(n)) if rank == 1 % n else None, src=1 % n)
    out["scatter"] = (C.scatter(big, 1 % n), ref)
    x7 = torch.arange(7.0) * 10                                           # uneven: 7 over n
    out["scatter uneven"] = (C.scatter(x7 + rank, 0), x7.tensor_split(n)[rank])  # src 0's values

    g = rand((2, 3), torch.int64, 200 + rank)
    refs = [torch.empty_like(g) for _ in range(n)] if rank == src else None
    dist.gather(g, refs, dst=src)
    mine = C.gather(g, src)
    out["gather"] = (torch.stack(mine), torch.stack(refs)) if rank == src else (mine, None)

    for op in ("sum", "max", "min"):
        ref = x.clone()
        dist.reduce(ref, dst=1 % n, op=OPS[op])
        mine = C.reduce(x, 1 % n, op)
        out[f"reduce {op}"] = (mine, ref) if rank == 1 % n else (mine, None)

    a = rand((3, 5), torch.int64, 300 + rank)
    refs = [torch.empty_like(a) for _ in range(n)]
    dist.all_gather(refs, a)
    out["all_gather"] = (torch.stack(C.all_gather(a)), torch.stack(refs))
    out["ring_all_gather"] = (torch.stack(C.ring_all_gather(a)), torch.stack(refs))

    pieces = list(rand((7,), torch.float32, 400 + rank).tensor_split(n))  # uneven pieces
    for op in ("sum", "max", "min"):                    # pairwise exchange and the ring's phase
        ref = torch.empty_like(pieces[rank])
        dist.reduce_scatter(ref, pieces, op=OPS[op])
        out[f"reduce_scatter {op}"] = (C.reduce_scatter(pieces, op), ref)
        out[f"ring_reduce_scatter {op}"] = (C.ring_reduce_scatter(pieces, op), ref)

    ref = x.clone()
    dist.all_reduce(ref)
    out["all_reduce_naive"] = (C.all_reduce_naive(x), ref)

    chunks = [rand((2, 3), torch.float64, 500 + 10 * rank + j) for j in range(n)]
    ref = torch.empty(n, 2, 3, dtype=torch.float64)
    dist.all_to_all_single(ref, torch.stack(chunks))      # (n, 2, 3): block j goes to rank j
    out["all_to_all"] = (torch.stack(C.all_to_all(chunks)), ref)
    x7 = rand((7,), torch.float64, 600 + rank)                            # uneven pieces of 7
    sizes = [len(p) for p in x7.tensor_split(n)]
    ref = torch.empty(sizes[rank] * n, dtype=torch.float64)
    dist.all_to_all_single(ref, x7, output_split_sizes=[sizes[rank]] * n, input_split_sizes=sizes)
    out["all_to_all uneven"] = (torch.cat(C.all_to_all(list(x7.tensor_split(n)))), ref)
    return out


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda n: f"{n}ranks")
def eight(request):
    return request.param, launch(eight_vs_dist, request.param)


@pytest.mark.parametrize("name", ["broadcast", "scatter", "scatter uneven", "gather", "reduce sum",
                                  "reduce max", "reduce min", "all_gather", "reduce_scatter sum",
                                  "reduce_scatter max", "reduce_scatter min", "all_reduce_naive", "all_to_all",
                                  "all_to_all uneven", "ring_reduce_scatter sum", "ring_reduce_scatter max",
                                  "ring_reduce_scatter min", "ring_all_gather"])
def test_collective_matches_torch_distributed(eight, name):
    n, res = eight
    for rank, r in enumerate(res):
        mine, ref = r[name]
        if ref is None:                      # a rooted collective gives non-roots nothing
            assert mine is None, f"{name}: rank {rank} should get None"
        else:
            assert_close(mine, ref, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}, rank {rank}: {m}")


# --------------------------------------------------------------------------------- ring all-reduce
RING_CASES = [((7,), torch.float32, "sum"), ((1,), torch.float64, "sum"), ((3, 5), torch.float64, "max"),
              ((2, 3, 2), torch.int64, "sum"), ((5,), torch.int64, "min"), ((6,), torch.float64, "prod"),
              ((9,), torch.bfloat16, "sum")]


def ring_vs_dist(rank, n):
    out = []
    for shape, dtype, op in RING_CASES:
        x = rand(shape, dtype, 10 * rank + len(out))
        ref = x.clone()
        dist.all_reduce(ref, op=OPS[op])
        out.append((C.ring_all_reduce(x, op), ref))
    stats = {}
    for length in (12, 7):
        st = C.CommStats()
        C.ring_all_reduce(torch.ones(length), stats=st)
        stats[length] = (st.bytes_sent, st.bytes_received, st.messages_sent)
    st = C.CommStats()
    C.all_gather(torch.ones(5, dtype=torch.float64), stats=st)
    stats["all_gather"] = st.bytes_sent
    st = C.CommStats()
    C.ring_all_gather(torch.ones(5, dtype=torch.float64), stats=st)
    stats["ring_all_gather"] = (st.bytes_sent, st.messages_sent)
    st = C.CommStats()
    C.ring_reduce_scatter(list(torch.ones(12).tensor_split(n)), stats=st)
    stats["ring_reduce_scatter"] = (st.bytes_sent, st.messages_sent)
    # the all-reduce is its two phases: reduce-scatter's output, all-gathered, is the all-reduce
    x = rand((4 * n,), torch.float64, 77 + rank)
    stats["composed"] = (torch.cat(C.ring_all_gather(C.ring_reduce_scatter(list(x.tensor_split(n))))),
                         C.ring_all_reduce(x))
    trace = []
    C.ring_all_reduce(torch.full((n,), 2 ** rank, dtype=torch.int64), trace=trace)
    stats["trace"] = torch.stack(trace)                    # (2(N-1)+1, N): one number per chunk
    return out, stats


@pytest.mark.parametrize("n", [2, 3, 4])
def test_ring_all_reduce_matches_dist_and_sends_the_formula_bytes(n):
    res = launch(ring_vs_dist, n)
    for rank, (pairs, _) in enumerate(res):
        for (shape, dtype, op), (mine, ref) in zip(RING_CASES, pairs):
            assert mine.shape == ref.shape and mine.dtype == ref.dtype
            tol = dict(rtol=2e-2, atol=5e-2) if dtype == torch.bfloat16 else dict(rtol=1e-6, atol=1e-6)
            assert_close(mine, ref, **tol, msg=lambda m: f"{op} {shape} {dtype} rank {rank}: {m}")
    per_rank = [s[12] for _, s in res]       # K = 48 bytes, divisible by N
    for sent, received, messages in per_rank:
        assert sent == received == 2 * (n - 1) * 48 // n
        assert messages == 2 * (n - 1)
    awkward = [s[7][0] for _, s in res]      # K = 28 bytes: uneven chunks, exact total
    assert sum(awkward) == 2 * (n - 1) * 28
    assert all(s["all_gather"] == (n - 1) * 5 * 8 for _, s in res)
    assert all(s["ring_all_gather"] == ((n - 1) * 5 * 8, n - 1) for _, s in res)
    assert all(s["ring_reduce_scatter"] == ((n - 1) * 48 // n, n - 1) for _, s in res)
    for _, s in res:
        assert_close(*s["composed"])
    traces = torch.stack([s["trace"] for _, s in res])    # (N ranks, states, N chunks): bit masks
    everyone = 2 ** n - 1
    assert traces.shape == (n, 2 * (n - 1) + 1, n)
    assert torch.equal(traces[:, 0], (2 ** torch.arange(n))[:, None].expand(n, n))  # own data only
    assert torch.equal(traces[torch.arange(n), n - 1, torch.arange(n)], torch.full((n,), everyone))
    assert torch.equal(traces[:, -1], torch.full((n, n), everyone))


def test_ring_chunk_indices_formulas_and_consistency():
    for n in range(1, 9):
        for s in range(max(n - 1, 1)):
            for r in range(n):
                rs = C.ring_chunk_indices(r, s, n, "reduce-scatter")
                ag = C.ring_chunk_indices(r, s, n, "all-gather")
                assert rs == ((r - s - 1) % n, (r - s - 2) % n)
                assert ag == ((r - s) % n, (r - s - 1) % n)
                left = (r - 1) % n       # what the left neighbour sends is what r receives
                assert C.ring_chunk_indices(left, s, n, "reduce-scatter")[0] == rs[1]
                assert C.ring_chunk_indices(left, s, n, "all-gather")[0] == ag[1]
        if n > 1:                        # after reduce-scatter, rank r owns chunk r (dist's order)
            assert [C.ring_chunk_indices(r, n - 2, n, "reduce-scatter")[1] for r in range(n)] == \
                   list(range(n))
            # and the all-gather starts from it: rank r first sends chunk r
            assert [C.ring_chunk_indices(r, 0, n, "all-gather")[0] for r in range(n)] == list(range(n))


def test_bus_bandwidth_factors_of_nccl_tests():
    for n in (1, 2, 3, 4, 8):
        assert C.bus_bandwidth(10.0, n) == pytest.approx(10.0 * 2 * (n - 1) / n)
        assert C.bus_bandwidth(10.0, n, "all_gather") == pytest.approx(10.0 * (n - 1) / n)
        assert C.bus_bandwidth(10.0, n, "reduce_scatter") == pytest.approx(10.0 * (n - 1) / n)
        assert C.bus_bandwidth(10.0, n, "broadcast") == 10.0


# ------------------------------------------------------------------------- tensor-parallel MLP
def dense_mlp(b, s, h, dtype):
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(h, 4 * h).to(dtype), nn.Linear(4 * h, h).to(dtype)
    x = torch.randn(b, s, h, dtype=dtype, requires_grad=True)
    w = torch.randn(b, s, h, dtype=dtype)
    return fc1, fc2, x, w


def tp_step(rank, n, b, s, h, dtype):
    fc1, fc2, x, w = dense_mlp(b, s, h, dtype)
    calls = []

    def all_reduce(t):
        calls.append(tuple(t.shape))
        return C._library_all_reduce_sum(t)

    mlp = C.TensorParallelMLP(fc1, fc2, rank, n, all_reduce=all_reduce)
    z = mlp(x)
    (z * w).sum().backward()
    out = {"z": z, "x": x.grad, "calls": calls, **{k: p.grad for k, p in mlp.named_parameters()}}
    if rank == 0:  # the dense reference, computed in rank 0 from the same seed
        fc1, fc2, x, w = dense_mlp(b, s, h, dtype)
        z = fc2(F.gelu(fc1(x)))
        (z * w).sum().backward()
        out["dense"] = {"z": z, "x": x.grad, "fc1.weight": fc1.weight.grad, "fc1.bias": fc1.bias.grad,
                        "fc2.weight": fc2.weight.grad, "fc2.bias": fc2.bias.grad}
    return out


@pytest.mark.parametrize("n, b, s, h, dtype", [(2, 2, 3, 8, torch.float32), (4, 1, 5, 6, torch.float64),
                                               (3, 2, 1, 3, torch.float64)])
def test_tensor_parallel_mlp_output_and_gradients_equal_dense(n, b, s, h, dtype):
    res = launch(tp_step, n, b, s, h, dtype)
    ref = res[0]["dense"]
    for r in res:
        assert_close(r["z"], ref["z"])
        assert_close(r["x"], ref["x"])
        assert_close(r["fc2.bias"], ref["fc2.bias"])
        assert r["calls"] == [(b, s, h), (b, s, h)]   # g forward, f backward
    assert_close(torch.cat([r["fc1.weight"] for r in res], 0), ref["fc1.weight"])
    assert_close(torch.cat([r["fc1.bias"] for r in res], 0), ref["fc1.bias"])
    assert_close(torch.cat([r["fc2.weight"] for r in res], 1), ref["fc2.weight"])


def test_tensor_parallel_mlp_on_one_rank_is_the_dense_mlp_without_processes():
    fc1, fc2, x, w = dense_mlp(3, 2, 4, torch.float64)
    mlp = C.TensorParallelMLP(fc1, fc2, 0, 1, all_reduce=lambda t: t)
    with torch.no_grad():
        assert_close(mlp(x), fc2(F.gelu(fc1(x))))


def test_tp_ring_bytes_two_all_reduces_per_step():
    def fn(rank, n):
        torch.manual_seed(0)
        st = C.CommStats()
        mlp = C.TensorParallelMLP(nn.Linear(6, 24), nn.Linear(24, 6), rank, n,
                                  all_reduce=lambda t: C.ring_all_reduce(t, stats=st))
        mlp(torch.randn(2, 2, 6, requires_grad=True)).sum().backward()
        return st.bytes_sent
    K = 2 * 2 * 6 * 4
    assert launch(fn, 3) == [2 * 2 * (3 - 1) * K // 3] * 3


# ---------------------------------------------------------------------------- the benchmark
def test_allreduce_bandwidth_rows_and_the_script_in_ranks(tmp_path):
    spec = importlib.util.spec_from_file_location("bench07", ROOT / "scripts" / "collectives_bench.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.parse_size("4K") == 4096 and script.parse_size("1M") == 2 ** 20 and script.parse_size("64") == 64
    launch(lambda r, n: script.main(["--sizes", "4K,8K", "--reps", "1", "--no-png", "--out-dir", str(tmp_path)]), 3)
    lines = (tmp_path / "10_allreduce_bandwidth.csv").read_text().splitlines()
    assert lines[0].split(",") == ["backend", "world_size", "device", "algorithm", "bytes", "reps",
                                   "seconds", "algbw_GBps", "busbw_GBps"]
    assert len(lines) == 1 + 2 * len(C.ALL_REDUCE_ALGORITHMS)
    for line in lines[1:]:
        backend, ws, _, _, nbytes, reps, seconds, algbw, busbw = line.split(",")
        assert backend == "gloo" and ws == "3" and int(nbytes) in (4096, 8192) and reps == "1"
        assert float(algbw) == pytest.approx(int(nbytes) / float(seconds) / 1e9)
        assert float(busbw) == pytest.approx(float(algbw) * 2 * 2 / 3)


# ------------------------------------------------------------------------------ bad inputs
def test_outside_a_process_group_every_collective_says_where_to_call_it():
    calls = {"broadcast": lambda: C.broadcast(torch.ones(2)),
             "scatter": lambda: C.scatter(torch.ones(2)),
             "gather": lambda: C.gather(torch.ones(2)),
             "reduce": lambda: C.reduce(torch.ones(2)),
             "all_gather": lambda: C.all_gather(torch.ones(2)),
             "reduce_scatter": lambda: C.reduce_scatter([torch.ones(2)]),
             "all_to_all": lambda: C.all_to_all([torch.ones(2)]),
             "all_reduce_naive": lambda: C.all_reduce_naive(torch.ones(2)),
             "ring_all_reduce": lambda: C.ring_all_reduce(torch.ones(2)),
             "ring_reduce_scatter": lambda: C.ring_reduce_scatter([torch.ones(2)]),
             "ring_all_gather": lambda: C.ring_all_gather(torch.ones(2)),
             "allreduce_bandwidth": lambda: C.allreduce_bandwidth([4096])}
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=f"{name}: needs an initialised process group"):
            call()


BAD_IN_RANKS = [
    (lambda n: C.broadcast(torch.ones(2), src=n), ValueError, r"broadcast: src must be a rank in \[0, 1\]"),
    (lambda n: C.broadcast([1.0, 2.0]), TypeError, "broadcast: x must be a torch.Tensor, got list"),
    (lambda n: C.scatter(torch.tensor(3.0)), ValueError, "scatter: x must have at least 1 dimension"),
    (lambda n: C.gather(torch.ones(2), dst=-1), ValueError, r"gather: dst must be a rank in \[0, 1\]"),
    (lambda n: C.gather(torch.ones(2), dst=True), ValueError, "gather: dst must be a rank"),
    (lambda n: C.reduce(torch.ones(2), op="mean"), ValueError, "reduce: op must be one of"),
    (lambda n: C.reduce(torch.ones(2), dst=5), ValueError, r"reduce: dst must be a rank in \[0, 1\]"),
    (lambda n: C.all_reduce_naive(torch.ones(2), op="mean"), ValueError, "all_reduce_naive: op must be one of"),
    (lambda n: C.all_gather(torch.ones(2), stats=3), TypeError, "all_gather: stats must be a CommStats"),
    (lambda n: C.reduce_scatter([torch.ones(2)] * 3), ValueError,
     "reduce_scatter: chunks must be a list of world_size = 2 tensors, got 3 items"),
    (lambda n: C.reduce_scatter(torch.ones(2)), ValueError, "chunks must be a list of world_size = 2 tensors, got Tensor"),
    (lambda n: C.reduce_scatter([torch.ones(2), torch.ones(2, dtype=torch.int64)]), ValueError,
     r"every chunk must have the dtype and device of chunks\[0\]"),
    (lambda n: C.all_to_all([torch.ones(2)] * 3), ValueError,
     "all_to_all: chunks must be a list of world_size = 2 tensors, got 3 items"),
    (lambda n: C.all_to_all([torch.ones(2), "x"]), TypeError, r"chunks\[1\] must be a torch.Tensor"),
    (lambda n: C.ring_all_reduce(torch.ones(2), op="avg"), ValueError, "ring_all_reduce: op must be one of"),
    (lambda n: C.ring_all_reduce(torch.ones(2), stats={}), TypeError, "stats must be a CommStats or None, got dict"),
    (lambda n: C.allreduce_bandwidth([2]), ValueError, "sizes must be a non-empty list of byte counts >= 4"),
    (lambda n: C.allreduce_bandwidth([4096], reps=0), ValueError, "reps must be an int >= 1"),
    (lambda n: C.allreduce_bandwidth([4096], byte_budget=0), ValueError, "byte_budget must be a positive int"),
    (lambda n: C.ring_all_reduce(torch.ones(2), trace=()), TypeError, "trace must be a list or None, got tuple"),
    (lambda n: C.ring_reduce_scatter([torch.ones(2)]), ValueError,
     "ring_reduce_scatter: chunks must be a list of world_size = 2 tensors, got 1 items"),
    (lambda n: C.ring_reduce_scatter([torch.ones(2)] * 2, op="mean"), ValueError, "ring_reduce_scatter: op must be one of"),
    (lambda n: C.ring_all_gather("x"), TypeError, "ring_all_gather: x must be a torch.Tensor, got str"),
]


def bad_inputs(rank, n):
    out = []
    for call, _, _ in BAD_IN_RANKS:
        try:
            call(n)
            out.append(None)
        except Exception as e:  # noqa: BLE001 - compared in the parent
            out.append((type(e).__name__, str(e)))
    return out


def test_bad_inputs_inside_a_process_group():
    res = launch(bad_inputs, 2)
    for got in res:
        for (_, exc, pattern), g in zip(BAD_IN_RANKS, got):
            assert g is not None, f"expected {exc.__name__} matching {pattern!r}, nothing raised"
            assert g[0] == exc.__name__ and re.search(pattern, g[1]), (pattern, g)


@pytest.mark.parametrize("args, exc, match", [
    ((0, 0, 0, "reduce-scatter"), ValueError, "n must be an int >= 1"),
    ((4, 0, 4, "reduce-scatter"), ValueError, r"rank must be in \[0, 3\], got 4"),
    ((0, 3, 4, "reduce-scatter"), ValueError, r"step must be in \[0, 2\]"),
    ((0, 0, 4, "gather"), ValueError, "phase must be one of"),
])
def test_ring_chunk_indices_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        C.ring_chunk_indices(*args)


def test_bus_bandwidth_bad_input():
    with pytest.raises(ValueError, match="collective must be one of"):
        C.bus_bandwidth(1.0, 2, "all_to_all")
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        C.bus_bandwidth(1.0, 0)


def test_tensor_parallel_layers_bad_input():
    with pytest.raises(ValueError, match="out_features = 30 must be divisible by world_size = 4"):
        C.ColumnParallelLinear(nn.Linear(8, 30), 0, 4)
    with pytest.raises(ValueError, match="in_features = 30 must be divisible by world_size = 4"):
        C.RowParallelLinear(nn.Linear(30, 8), 0, 4)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 1\], got 2"):
        C.ColumnParallelLinear(nn.Linear(8, 16), 2, 2)
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        C.RowParallelLinear(nn.Linear(8, 16), 0, 0)
    with pytest.raises(TypeError, match="linear must be an nn.Linear, got Conv1d"):
        C.ColumnParallelLinear(nn.Conv1d(2, 2, 1), 0, 1)
    with pytest.raises(ValueError, match="fc1.out_features == fc2.in_features"):
        C.TensorParallelMLP(nn.Linear(4, 16), nn.Linear(8, 4), 0, 2)
    col = C.ColumnParallelLinear(nn.Linear(8, 16), 0, 2, all_reduce=lambda t: t)
    with pytest.raises(ValueError, match=r"last dimension in_features = 8, got shape \(3, 7\)"):
        col(torch.ones(3, 7))
    row = C.RowParallelLinear(nn.Linear(16, 8), 1, 2, all_reduce=lambda t: t)
    with pytest.raises(ValueError, match=r"in_features / world_size = 8, got shape \(3, 16\)"):
        row(torch.ones(3, 16))


def test_column_and_row_shards_are_the_right_slices():
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(6, 12), nn.Linear(12, 6)
    col = [C.ColumnParallelLinear(lin1, r, 3, all_reduce=lambda t: t) for r in range(3)]
    row = [C.RowParallelLinear(lin2, r, 3, all_reduce=lambda t: t) for r in range(3)]
    assert_close(torch.cat([c.weight for c in col], 0), lin1.weight)     # (12, 6): output blocks
    assert_close(torch.cat([c.bias for c in col], 0), lin1.bias)
    assert_close(torch.cat([r.weight for r in row], 1), lin2.weight)     # (6, 12): input blocks
    assert all(torch.equal(r.bias, lin2.bias) for r in row)             # the full bias, added once


def test_allreduce_bandwidth_byte_budget_caps_the_timed_calls():
    def fn(rank, n):
        return C.allreduce_bandwidth([1024, 4096, 65536], reps=5, warmup=0, byte_budget=8192)
    rows = launch(fn, 2)
    assert [r["reps"] for r in rows[0]] == [r["reps"] for r in rows[1]]   # every rank made the same calls
    assert {r["bytes"]: r["reps"] for r in rows[0]} == {1024: 5, 4096: 2, 65536: 1}


# ------------------------------------------------------------------ the exercise checker's launcher
def _recv_first_broadcast(x, src, stats):
    """A wrong Exercise 10.2 answer: every rank first waits for its left neighbour; nobody sends."""
    rank, n = dist.get_rank(), dist.get_world_size()
    return C.counted_recv(x, (rank - 1) % n, stats)


def test_exercise_10_2_checker_names_a_deadlock_within_15_s():
    t0 = time.monotonic()
    with pytest.raises(ExerciseError, match=re.escape(C.DEADLOCK_HINT)) as info:
        C.run_exercise_ranks("Exercise 10.2", C.tree_broadcast_case, 3, 2, _recv_first_broadcast,
                             timeout=10, where="N=3, src=2")
    assert time.monotonic() - t0 < 15, f"the checker took {time.monotonic() - t0:.1f} s"
    assert "Exercise 10.2 (N=3, src=2)" in str(info.value) and "within 10 s" in str(info.value)


def _stub_broadcast(x, src, stats):
    raise NotImplementedError("Exercise 10.2: your code goes here")


def _crashing_broadcast(x, src, stats):
    return x[10]                                       # IndexError on every rank


def test_exercise_checker_keeps_a_stub_and_names_a_crash():
    with pytest.raises(NotImplementedError, match="Exercise 10.2: your code goes here"):
        C.run_exercise_ranks("Exercise 10.2", C.tree_broadcast_case, 2, 0, _stub_broadcast)
    with pytest.raises(ExerciseError, match=r"Exercise 10.2: rank \d of 2 raised IndexError"):
        C.run_exercise_ranks("Exercise 10.2", C.tree_broadcast_case, 2, 0, _crashing_broadcast)


def _star_broadcast(x, src, stats):
    """Right values, wrong schedule: the root sends to every rank itself (N - 1 messages)."""
    return C.broadcast(x, src, stats=stats)


def test_exercise_10_2_case_runs_the_answer_beside_dist_broadcast():
    res = C.run_exercise_ranks("Exercise 10.2", C.tree_broadcast_case, 3, 1, _star_broadcast)
    for yours, ref, _ in res:
        assert_close(yours, ref, atol=0, rtol=0)
    assert res[1][2] == 2                              # a star root sends N - 1 = 2 messages, not ceil(log2 3)


def test_draw_ring_circle_labels_each_arrow_with_the_chunk_it_sends():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    C.draw_ring_circle(ax, 5, 2, "all-gather")
    labels = [t.get_text() for t in ax.texts if t.get_text().startswith("c")]
    assert labels == [f"c{C.ring_chunk_indices(r, 2, 5, 'all-gather')[0]}" for r in range(5)]
    assert all(t.get_fontsize() >= 9 for t in ax.texts)
    plt.close(fig)
