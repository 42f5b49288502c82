"""course_utils.launch.run_distributed: real processes, fast errors, timeouts, no leftovers."""
import os
import signal
import sys
import time

import pytest
import torch
import torch.distributed as dist

from course_utils.launch import RankError, run_distributed

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc are Linux")
fork_server = pytest.mark.skipif(
    "forkserver" not in __import__("multiprocessing").get_all_start_methods(),
    reason="no forkserver here")


def children(pid=None):
    """Live processes this process started (from /proc), except the helpers multiprocessing keeps
    for the interpreter's lifetime by design: the resource tracker and the fork server. The fork
    server's own children (the ranks it forked) do count."""
    out = []
    for child, cmd in _direct_children(pid or os.getpid()):
        if "resource_tracker" in cmd:
            continue
        if "multiprocessing.forkserver" in cmd:
            out += _direct_children(child)
        else:
            out.append((child, cmd))
    return out


def _direct_children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            cmd = open(f"/proc/{d}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append((int(d), cmd.replace("\0", " ")))
    return out


def all_reduce_sum(rank, world_size, scale):
    t = torch.full((3,), float(rank)) * scale
    x = torch.randn(64, 64) @ torch.randn(64, 64)  # an OpenMP op after fork must not hang
    dist.all_reduce(t)
    print(f"rank {rank} has {t[0].item():g}")
    return {"rank": rank, "sum": t, "matmul_ok": bool(torch.isfinite(x).all())}


def crash_on_one(rank, world_size):
    if rank == 1:
        raise ValueError("rank one is broken")
    dist.barrier()  # rank 0 waits here for a rank that will never come


def hang_on_zero(rank, world_size):
    if rank == 0:
        time.sleep(600)
    dist.barrier()


def exit_hard(rank, world_size):
    if rank == 1:
        os._exit(3)
    dist.barrier()


def sleepy(rank, world_size):
    time.sleep(600)


def returns_unpicklable(rank, world_size):
    return lambda: None


@linux_only
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_results_come_back_in_rank_order(world_size, capsys):
    torch.ones(256, 256) @ torch.ones(256, 256)  # use the parent's OpenMP pool before forking
    out = run_distributed(all_reduce_sum, world_size, 2.0, timeout=60)
    total = 2.0 * world_size * (world_size - 1) / 2  # closed form of 2 * sum(ranks)
    assert [r["rank"] for r in out] == list(range(world_size))
    for r in out:
        torch.testing.assert_close(r["sum"], torch.full((3,), total))
        assert r["matmul_ok"]
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"[rank {r}] rank {r} has {total:g}" for r in range(world_size)]
    assert children() == []


@linux_only
def test_no_fork_warning_reaches_the_notebook():
    """Python 3.12+ warns that fork() in a threaded process may deadlock; the launcher keeps that
    out of cell output so notebooks read the same on Python 3.10-3.13."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_distributed(all_reduce_sum, 2, 1.0, timeout=60, echo=False)
    assert [str(w.message) for w in caught if "fork" in str(w.message)] == []


@linux_only
def test_a_crashing_rank_is_reported_fast_with_its_traceback():
    t0 = time.monotonic()
    with pytest.raises(RankError) as e:
        run_distributed(crash_on_one, 2, timeout=60)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"the error took {elapsed:.1f} s to surface"
    msg = str(e.value)
    assert e.value.rank == 1
    assert msg.startswith("rank 1 of 2 failed")
    assert "ValueError: rank one is broken" in msg
    assert "in crash_on_one" in msg           # the learner's frame is in the traceback
    assert "_rank_main" not in msg            # the launcher's own frame is not
    assert children() == []


@linux_only
def test_the_failed_rank_is_blamed_not_the_ranks_that_waited_for_it():
    # Rank 1 fails while ranks 0, 2 and 3 wait for it in a barrier; they fail too once its
    # connections close. Its report must reach the parent first (it is flushed before the rank
    # leaves the group), so the error names rank 1 every time.
    for _ in range(5):
        with pytest.raises(RankError) as e:
            run_distributed(crash_on_one, 4, timeout=60, echo=False)
        assert e.value.rank == 1 and "ValueError: rank one is broken" in e.value.detail
    assert children() == []


@linux_only
def test_a_hanging_rank_is_stopped_at_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks 0, 1 did not finish within 3 s"):
        run_distributed(hang_on_zero, 2, timeout=3)
    elapsed = time.monotonic() - t0
    assert 3 <= elapsed < 10
    assert children() == []


def slow_to_connect(seconds, only_rank=None):
    """dist.init_process_group, but slow (in ranks forked from this process): a busy machine."""
    real = dist.init_process_group

    def init(*args, **kwargs):
        if only_rank is None or kwargs.get("rank") == only_rank:
            time.sleep(seconds)
        return real(*args, **kwargs)

    return init


@linux_only
def test_the_timeout_counts_from_when_every_rank_has_connected(monkeypatch):
    """Rendezvous can take seconds on a loaded machine; it must not eat a short timeout."""
    monkeypatch.setattr(dist, "init_process_group", slow_to_connect(3.0))
    assert run_distributed(quick, 2, timeout=2, echo=False) == [2.0, 2.0]
    assert children() == []


@linux_only
def test_start_up_has_its_own_bound_and_message(monkeypatch):
    from course_utils import launch

    monkeypatch.setattr(launch, "_STARTUP_MIN_S", 2.0)
    monkeypatch.setattr(dist, "init_process_group", slow_to_connect(600, only_rank=1))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        run_distributed(quick, 2, timeout=1, echo=False)
    assert 2 <= time.monotonic() - t0 < 10
    # rank 0 waits inside init_process_group for rank 1, so neither has connected
    assert "ranks 0, 1 did not connect within 2 s" in str(e.value)
    assert "did not finish" not in str(e.value)
    assert children() == []


def returns_early(rank, world_size):
    if rank == 0:
        time.sleep(600)  # still busy (as if waiting for a message) when the timeout comes
    return rank


def extra_collective_on_zero(rank, world_size):
    t = torch.ones(2)
    if rank == 0:
        dist.all_reduce(t)  # rank 1 never calls it: it returns, and its connections close
    return t


@linux_only
def test_a_timeout_with_finished_ranks_says_calls_differ():
    with pytest.raises(TimeoutError) as e:
        run_distributed(returns_early, 3, timeout=2)
    msg = str(e.value)
    assert "rank 0 did not finish within 2 s" in msg
    assert "Hint: ranks 1, 2 returned while rank 0 is still waiting" in msg
    assert "calls or sizes differ between ranks" in msg
    assert children() == []


@linux_only
def test_a_rank_left_alone_in_a_collective_gets_the_calls_differ_hint():
    with pytest.raises(RankError) as e:
        run_distributed(extra_collective_on_zero, 2, timeout=30)
    assert e.value.rank == 0
    assert "Hint: rank 1 returned while rank 0 was still waiting" in str(e.value)
    assert "calls or sizes differ between ranks" in str(e.value)
    assert children() == []


def all_fail(rank, world_size):
    raise KeyError("the same key everywhere")


def fail_differently(rank, world_size):
    raise KeyError(f"key {rank}")


@linux_only
def test_ranks_that_all_fail_the_same_way_are_reported_as_such():
    with pytest.raises(RankError) as e:
        run_distributed(all_fail, 3, timeout=30)
    msg = str(e.value)
    assert e.value.rank == 0 and msg.startswith("rank 0 of 3 failed")
    assert "KeyError: 'the same key everywhere'" in msg
    assert "--- all 3 ranks failed the same way: the traceback above is rank 0's ---" in msg
    assert "consequence" not in msg and "calls or sizes differ" not in msg
    with pytest.raises(RankError) as e:  # different messages: one is blamed, the others listed
        run_distributed(fail_differently, 2, timeout=30)
    assert "the same way" not in str(e.value) and "probably as a consequence" in str(e.value)
    assert children() == []


@linux_only
def test_a_rank_that_dies_without_reporting():
    with pytest.raises(RankError, match=r"rank 1 of 2 failed[\s\S]*exited with code 3"):
        run_distributed(exit_hard, 2, timeout=30)
    assert children() == []


@linux_only
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_an_interrupt_kills_the_ranks_and_a_rerun_works(method):
    class Interrupt(Exception):
        pass

    def raise_interrupt(signum, frame):
        raise Interrupt

    # A first launch before the interrupt: it imports what a launch imports (sympy, through
    # torch.fx, takes over a second on some machines) and starts the fork server. An interrupt that
    # lands inside an import leaves that module half-imported for the rest of the process, which
    # would break every later test in this worker, not just this one.
    run_distributed(all_reduce_sum, 2, 1.0, timeout=60, echo=False, start_method=method)
    old = signal.signal(signal.SIGALRM, raise_interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)  # like pressing "interrupt kernel" after 1 s
    try:
        with pytest.raises(Interrupt):
            run_distributed(sleepy, 2, timeout=60, start_method=method)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert children() == []
    out = run_distributed(all_reduce_sum, 2, 1.0, timeout=60, echo=False,  # no "address in use"
                          start_method=method)
    assert out[1]["sum"][0].item() == 1.0


@linux_only
def test_unsendable_results_are_explained():
    with pytest.raises(RankError, match="cannot be sent back"):
        run_distributed(returns_unpicklable, 2, timeout=30)


def test_notebook_functions_work_under_spawn():
    """macOS and Windows have only spawn: a function defined in a notebook cell is sent by value."""
    nb = notebook()
    out = run_distributed(nb["make_step"](1.0), 2, nb["Shard"](torch.ones(2)), timeout=120,
                          echo=False, start_method="spawn")
    for r in out:  # rank r holds SCALE + 1 + r = [2 + r, 3 + r]; summed over ranks 0 and 1
        torch.testing.assert_close(r["sum"], torch.tensor([5.0, 7.0]))


def test_spawn_works_with_an_importable_function():
    out = run_distributed(all_reduce_sum, 2, 1.0, timeout=120, echo=False, start_method="spawn")
    assert [r["sum"][0].item() for r in out] == [1.0, 1.0]


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(fn=None, world_size=2), TypeError, "fn must be a function"),
    (dict(fn=sleepy, world_size=0), ValueError, "world_size must be an int >= 1"),
    (dict(fn=sleepy, world_size=2, backend="mpi"), ValueError, "backend must be 'gloo' or 'nccl'"),
    (dict(fn=sleepy, world_size=2, timeout=0), ValueError, "timeout must be a positive"),
    (dict(fn=sleepy, world_size=2, threads_per_rank=0), ValueError, "threads_per_rank"),
])
def test_bad_arguments(kwargs, exc, match):
    fn, ws = kwargs.pop("fn"), kwargs.pop("world_size")
    with pytest.raises(exc, match=match):
        run_distributed(fn, ws, **kwargs)


@pytest.mark.skipif(torch.cuda.device_count() >= 64, reason="needs fewer GPUs than asked")
def test_nccl_needs_enough_gpus():
    with pytest.raises(RuntimeError, match="needs 64 CUDA GPUs"):
        run_distributed(sleepy, 64, backend="nccl")


def nccl_all_reduce(rank, world_size):
    t = torch.full((4,), float(rank + 1), device="cuda")
    dist.all_reduce(t)
    return {"device": t.device.index, "sum": t.cpu()}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_nccl_on_two_gpus():
    # spawn: earlier tests in this process may have initialised CUDA, which forked ranks cannot use
    out = run_distributed(nccl_all_reduce, 2, backend="nccl", timeout=120, echo=False,
                          start_method="spawn")
    assert [r["device"] for r in out] == [0, 1]  # one GPU per rank
    for r in out:
        torch.testing.assert_close(r["sum"], torch.full((4,), 3.0))  # 1 + 2


def warns_and_prints(rank, world_size):
    import warnings

    warnings.warn("a warning that names a file path")
    print("only this line is echoed")
    return rank


@linux_only
def test_only_stdout_is_echoed(capsys):
    run_distributed(warns_and_prints, 2, timeout=60)
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"[rank {r}] only this line is echoed" for r in range(2)]
    assert "warning" not in out.out + out.err


def quick(rank, world_size):
    t = torch.ones(1)
    dist.all_reduce(t)
    return t.item()


@linux_only
def test_many_four_rank_launches_never_hang_at_start_up():
    """Forking while the parent's store thread served an earlier rank (inside getnameinfo, holding
    glibc's resolver lock) hung about 2% of 4-rank launches; ranks now connect only after all are
    forked."""
    for _ in range(25):
        assert run_distributed(quick, 4, timeout=20, echo=False) == [4.0] * 4
    assert children() == []


def print_then_hang(rank, world_size):
    print(f"rank {rank} reached the barrier")
    if rank == 0:
        time.sleep(600)
    dist.barrier()


@linux_only
def test_a_timeout_shows_what_the_stuck_ranks_printed():
    with pytest.raises(TimeoutError) as e:
        run_distributed(print_then_hang, 2, timeout=3)
    msg = str(e.value)
    assert "--- last lines printed by rank 0 ---\nrank 0 reached the barrier" in msg
    assert "--- last lines printed by rank 1 ---\nrank 1 reached the barrier" in msg


@fork_server
def test_forkserver_works_with_an_importable_function():
    assert run_distributed(quick, 2, timeout=120, echo=False, start_method="forkserver") == [2.0, 2.0]


@linux_only
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_failed_start_shows_its_own_error(method, monkeypatch):
    import multiprocessing.process

    real_start = multiprocessing.process.BaseProcess.start

    def start(self):
        if self.name == "rank1":
            raise OSError("cannot start another process")
        real_start(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    with pytest.raises(OSError, match="cannot start another process"):
        run_distributed(sleepy, 2, timeout=30, start_method=method)
    assert children() == []  # rank 0, started, was reaped


def test_an_unpicklable_argument_is_named_before_anything_starts():
    import threading

    with pytest.raises(TypeError) as e:
        run_distributed(all_reduce_sum, 2, threading.Lock(), timeout=30, start_method="spawn")
    msg = str(e.value)
    assert "'all_reduce_sum'" in msg and "argument 1 after world_size (a lock)" in msg, msg


def test_an_unpicklable_global_is_blamed_on_the_function():
    nb = notebook()
    with pytest.raises(TypeError, match=r"'uses_a_generator'[\s\S]*the function itself, or a global"):
        run_distributed(nb["uses_a_generator"], 2, timeout=30, start_method="spawn")


def test_a_missing_cloudpickle_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # makes `import cloudpickle` fail
    with pytest.raises(ImportError, match="pip install cloudpickle"):
        run_distributed(quick, 2, timeout=30, start_method="spawn")


def test_the_default_start_method(monkeypatch):
    from course_utils import launch

    monkeypatch.setattr(launch, "_cuda_device_count", lambda: 0)
    assert launch.default_start_method() == ("fork" if sys.platform.startswith("linux") else "spawn")
    monkeypatch.setattr(launch, "_cuda_device_count", lambda: 2)
    assert launch.default_start_method() == ("forkserver" if sys.platform.startswith("linux") else "spawn")


def test_counting_gpus_does_not_initialise_cuda():
    from course_utils import launch

    if torch.cuda.is_initialized():
        pytest.skip("an earlier test in this process initialised CUDA")
    launch.default_start_method()
    assert not torch.cuda.is_initialized()


# Code as a notebook cell defines it: module __main__, a global tensor, a class, a closure. Its
# source goes into linecache under a made-up file name, as IPython does with cells.
NOTEBOOK_CELL = """
import os, torch, torch.distributed as dist

SCALE = torch.tensor([1.0, 2.0])

class Shard:
    def __init__(self, values):
        self.values = values

def make_step(offset):
    def step(rank, world_size, shard):
        t = shard.values * SCALE + offset + rank
        dist.all_reduce(t)
        print(f"rank {rank}: COURSE_TEST_VAR={os.environ.get('COURSE_TEST_VAR')}")
        return {"sum": t, "draw": torch.rand(2), "cls": type(shard).__name__}
    return step

def fails_in_a_cell(rank, world_size):
    if rank == 1:
        raise ValueError("broken in a notebook cell")
    dist.barrier()

def backward_in_rank(rank, world_size):
    w = torch.ones(3, requires_grad=True)
    (w * (rank + 1)).pow(2).sum().backward()
    dist.all_reduce(w.grad)
    return w.grad

GEN = (i for i in range(3))

def nested_code():
    add = lambda v: v + 1
    return [add(v) for v in range(3)]

def uses_a_generator(rank, world_size):
    return next(GEN)
"""


def notebook():
    import linecache

    name = "/tmp/ipykernel_0/cell_1.py"
    linecache.cache[name] = (len(NOTEBOOK_CELL), None, NOTEBOOK_CELL.splitlines(True), name)
    ns = {"__name__": "__main__"}
    exec(compile(NOTEBOOK_CELL, name, "exec"), ns)
    return ns


@fork_server
def test_forkserver_runs_notebook_code_with_the_notebooks_environment(monkeypatch, capsys):
    nb = notebook()
    step = nb["make_step"](1.0)
    assert step.__module__ == "__main__"
    monkeypatch.setenv("COURSE_TEST_VAR", "set in the notebook")  # after the server started, maybe
    torch.manual_seed(7)
    expected_draw = torch.rand(2)
    torch.manual_seed(7)  # a rank starts from the notebook's random state, as a forked one does
    out = run_distributed(step, 2, nb["Shard"](torch.ones(2)), timeout=60, start_method="forkserver")
    for r in out:
        torch.testing.assert_close(r["sum"], torch.tensor([5.0, 7.0]))
        torch.testing.assert_close(r["draw"], expected_draw)
        assert r["cls"] == "Shard"
    assert capsys.readouterr().out.splitlines() == [
        f"[rank {r}] rank {r}: COURSE_TEST_VAR=set in the notebook" for r in range(2)]
    assert children() == []


@fork_server
def test_forkserver_imports_a_module_next_to_the_notebook(tmp_path, monkeypatch):
    """A function from a .py file the notebook imported travels by name: the rank must find the
    file through sys.path as it is now, not as it was when the fork server started."""
    (tmp_path / "helpers_next_to_notebook.py").write_text(
        "import os\ndef rank_fn(rank, world_size):\n    return rank + 100, os.getcwd()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from helpers_next_to_notebook import rank_fn

    out = run_distributed(rank_fn, 2, timeout=60, echo=False, start_method="forkserver")
    assert out == [(100, str(tmp_path)), (101, str(tmp_path))]


@fork_server
def test_forkserver_runs_a_lambda():
    offset = torch.tensor(10.0)
    assert run_distributed(lambda rank, n: (offset + rank).item(), 2, timeout=60, echo=False,
                           start_method="forkserver") == [10.0, 11.0]


@pytest.mark.parametrize("method", [pytest.param("forkserver", marks=fork_server), "spawn"])
def test_a_rank_started_fresh_reports_a_failure_with_the_cells_source(method):
    """cloudpickle 3.1.3 renamed every pickled function's file to <dynamic-code>, so tracebacks
    from forkserver ranks (GPU Linux) and spawned ones (macOS, Windows) lost the cell's lines."""
    t0 = time.monotonic()
    with pytest.raises(RankError) as e:
        run_distributed(notebook()["fails_in_a_cell"], 2, timeout=60, start_method=method)
    assert time.monotonic() - t0 < (10 if method == "forkserver" else 60)
    msg = str(e.value)
    assert e.value.rank == 1 and msg.startswith("rank 1 of 2 failed")
    assert "in fails_in_a_cell" in msg and "ValueError: broken in a notebook cell" in msg
    assert 'raise ValueError("broken in a notebook cell")' in msg  # the cell's line, shown
    assert 'File "/tmp/ipykernel_0/cell_1.py"' in msg and "<dynamic-code>" not in msg
    assert "_rank_main" not in msg
    assert children() == []


def test_code_sent_by_value_keeps_its_file_name_nested_code_too():
    """What a fresh rank rebuilds from _pack: the function, the closure inside it, a lambda and a
    comprehension inside that, each with the cell's file name, and the cell's lines."""
    import linecache

    from course_utils import launch

    step = notebook()["make_step"](1.0)
    _, rng, sources, blob = launch._pack(step, (), "spawn")
    linecache.cache.pop("/tmp/ipykernel_0/cell_1.py")  # a fresh process has no such entry
    fn, args = launch._unpack(rng, sources, blob)

    def codes(code):
        yield code
        for c in code.co_consts:
            if isinstance(c, type(code)):
                yield from codes(c)

    assert fn.__name__ == "step" and args == ()
    assert {c.co_filename for c in codes(fn.__code__)} == {"/tmp/ipykernel_0/cell_1.py"}
    assert "dist.all_reduce(t)" in linecache.getline("/tmp/ipykernel_0/cell_1.py", 13)
    nested = notebook()["nested_code"]
    _, rng, sources, blob = launch._pack(nested, (), "spawn")
    rebuilt, _ = launch._unpack(rng, sources, blob)
    assert rebuilt() == [1, 2, 3]
    names = {c.co_name: c.co_filename for c in codes(rebuilt.__code__)}
    assert "<lambda>" in names and set(names.values()) == {"/tmp/ipykernel_0/cell_1.py"}, names


@fork_server
def test_forkserver_stops_a_hanging_rank_at_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        run_distributed(print_then_hang, 2, timeout=3, start_method="forkserver")
    assert 3 <= time.monotonic() - t0 < 10
    assert "ranks 0, 1 did not finish within 3 s" in str(e.value)
    assert "--- last lines printed by rank 1 ---\nrank 1 reached the barrier" in str(e.value)
    assert children() == []


@fork_server
def test_forkserver_ranks_run_backward_after_the_parent_did():
    """The defect this path exists for: on a machine with CUDA, a backward pass in the notebook
    breaks autograd in forked ranks. On a CPU-only machine fork works too, so this only guards the
    path; the real case is test_backward_before_launch_on_a_gpu_machine (needs 2 GPUs)."""
    w = torch.ones(2, requires_grad=True)
    (w * 3).sum().backward()
    out = run_distributed(notebook()["backward_in_rank"], 2, timeout=60, echo=False,
                          start_method="forkserver")
    for g in out:
        torch.testing.assert_close(g, torch.full((3,), 10.0))  # 2 * 1**2 + 2 * 2**2


KILLED_CALLER = """
import os, sys, time
import torch.distributed as dist
from course_utils.launch import run_distributed

# top level, no __main__ guard: the ranks must not run this script again
print(run_distributed(lambda rank, n: rank, 2, echo=False, start_method="forkserver"), flush=True)

def write_pid_then_sleep(rank, world_size, folder):
    with open(os.path.join(folder, f"{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

run_distributed(write_pid_then_sleep, 2, sys.argv[1], timeout=120, start_method="forkserver")
"""


@linux_only
@fork_server
def test_a_killed_caller_leaves_no_forkserver_ranks(tmp_path):
    """Fork-server ranks are not the caller's children (PR_SET_PDEATHSIG does not reach them) and
    keep the server alive; they must notice the caller's death themselves."""
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(KILLED_CALLER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with open(tmp_path / "out.txt", "w") as out:  # not a pipe: a leftover rank would hold it open
        caller = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    pids = []
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert caller.poll() is None, (tmp_path / "out.txt").read_text()
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.1)
        time.sleep(0.2)  # let the pid files be written in full
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        caller.kill()
        caller.wait()
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(os.path.exists(f"/proc/{p}") for p in pids), "a rank outlived its caller"
    finally:
        caller.kill()
        for p in pids:  # clean up after a failure
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert (tmp_path / "out.txt").read_text().splitlines()[0] == "[0, 1]"


GPU_BACKWARD_FIRST = """
import torch, torch.distributed as dist
import course_utils
from course_utils.launch import RankError, default_start_method, run_distributed

assert default_start_method() == "forkserver", default_start_method()
w = torch.ones(3, device="cuda", requires_grad=True)
(w * 2).sum().backward()  # autograd starts its device threads; CUDA is initialised here too

def cpu_step(rank, world_size):  # defined in __main__, like a notebook cell
    x = torch.ones(3, requires_grad=True)
    (x * (rank + 1)).sum().backward()
    dist.all_reduce(x.grad)
    return x.grad

def gpu_step(rank, world_size):
    x = torch.ones(3, device="cuda", requires_grad=True)
    (x * (rank + 1)).sum().backward()
    dist.all_reduce(x.grad)
    return x.grad.cpu()

try:  # the defect: forked ranks cannot run backward now
    run_distributed(cpu_step, 2, timeout=120, echo=False, start_method="fork")
    print("fork: no error (unexpected on a GPU machine)")
except RankError as e:
    assert "start_method='forkserver'" in str(e), e
    print("fork: refused with the hint")
for backend, fn in (("gloo", cpu_step), ("nccl", gpu_step)):
    out = run_distributed(fn, 2, backend=backend, timeout=120, echo=False)
    assert [g.tolist() for g in out] == [[3.0] * 3] * 2, out
print("backward after backward ok")
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_backward_before_launch_on_a_gpu_machine():
    """The case that broke lessons 11-13 on GPU machines: backward in the notebook, then ranks
    that run backward (gloo on CPU and NCCL on GPUs), with the default start method."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", GPU_BACKWARD_FIRST], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "backward after backward ok" in r.stdout, r.stdout + r.stderr
    assert "fork: refused with the hint" in r.stdout, r.stdout


NOTEBOOK_LIKE = """
import torch, torch.distributed as dist
import course_utils                      # as a notebook's first cell does
from course_utils.launch import run_distributed
def fn(rank, world_size):                # defined in __main__, like a notebook cell
    t = torch.full((2,), float(rank + 1), device="cuda")
    dist.all_reduce(t)
    return t.cpu()
out = run_distributed(fn, 2, backend="nccl", timeout=120, echo=False)  # forkserver by default
assert [o.tolist() for o in out] == [[3.0, 3.0], [3.0, 3.0]], out
print("nccl from a notebook-like process ok")
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_nccl_ranks_start_from_a_notebook_like_process():
    import subprocess

    r = subprocess.run([sys.executable, "-c", NOTEBOOK_LIKE], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "nccl from a notebook-like process ok" in r.stdout, r.stdout + r.stderr
