"""Run a function on several real processes joined by ``torch.distributed``.

``run_distributed(fn, world_size, *args)`` starts ``world_size`` operating-system processes, joins
them into one process group (gloo on CPUs, NCCL on GPUs), calls ``fn(rank, world_size, *args)`` in
each and returns the ranks' return values as a list. It is what the multi-process lessons (07-09)
use from a notebook; scripts use ``torchrun`` instead, and the same rank function works in both.

What it guarantees, and why each piece is here:

* **Functions defined in a notebook cell work on Linux**: ranks are started with ``fork``, which
  copies the notebook's memory, functions included. Where only ``spawn`` exists (macOS, Windows)
  a rank function must be importable from a ``.py`` file; a notebook-defined one is refused with
  a message saying so, instead of the cryptic "Can't get attribute" pickling error.
* **Each rank uses one CPU thread**: GNU OpenMP is not fork-safe, so a forked child whose parent
  already ran a parallel op hangs in its first matmul unless its thread pool is reset; one thread
  per rank is also what N ranks on a small CPU should use.
* **Deterministic output**: each rank's ``print`` output (stdout) is captured and printed after the
  run in rank order as ``[rank r] ...``, so a notebook shows the same text on every run
  (interleaved output from processes would not be). A rank's stderr (Python warnings, which carry
  file paths) and low-level output (C++ warnings) are kept for the error report of a failed rank.
* **Errors surface fast**: a rank that raises is reported within a fraction of a second as one
  :class:`RankError` naming the rank, with its traceback; the other ranks are stopped.
* **Nothing hangs**: after ``timeout`` seconds the ranks still running are killed and a
  ``TimeoutError`` names them. The same timeout bounds every collective inside the group.
* **No process outlives the call**: ranks are reaped in a ``finally`` block, and on Linux each
  rank also dies with its parent (``PR_SET_PDEATHSIG``) should the kernel itself be killed.
* **Known limit (GPU machines)**: once this process has run a backward pass on a machine with
  CUDA, autograd refuses to run in forked children (its device threads cannot be forked); the
  error report then carries a hint. Shipping functions to fresh processes (forkserver plus
  pickling by value) would lift this and the spawn-only restriction; not done yet.
* **No "address already in use"**: the rendezvous store listens on a port the OS picks (port 0)
  and is held by the parent for the call, so a re-run after an interrupt never collides.
"""
from __future__ import annotations

import datetime
import importlib
import io
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings

import torch
import torch.distributed as dist

__all__ = ["run_distributed", "RankError", "default_start_method"]

_HOST = "127.0.0.1"


class RankError(RuntimeError):
    """A rank raised (or died); the message holds its traceback."""

    def __init__(self, rank: int, world_size: int, detail: str, output: str = ""):
        self.rank, self.world_size, self.detail, self.output = rank, world_size, detail, output
        msg = f"rank {rank} of {world_size} failed\n\n--- traceback of rank {rank} ---\n{detail.rstrip()}"
        if output.strip():
            msg += f"\n--- output of rank {rank} before it failed ---\n{output.rstrip()}"
        super().__init__(msg)


def default_start_method() -> str:
    """``fork`` on Linux (notebook-defined functions work), ``spawn`` elsewhere."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort; the parent's finally block still reaps
        pass


def _detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, (list, tuple)):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


def _rank_main(rank, world_size, backend, port, timeout, threads, parent_pid, logdir, go, fn,
               args, q):
    _die_with_parent()
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)
    torch.set_num_threads(threads)
    # Prints go to a line-buffered file the parent reads (also after a timeout); stderr (Python
    # warnings, which carry file paths) and fd-level output (C++ warnings) only reach error reports.
    out = open(os.path.join(logdir, f"rank{rank}.out"), "w", buffering=1, encoding="utf-8")
    err = open(os.path.join(logdir, f"rank{rank}.err"), "w", buffering=1, encoding="utf-8")
    low = open(os.path.join(logdir, f"rank{rank}.low"), "wb", buffering=0)
    os.dup2(low.fileno(), 1)
    os.dup2(low.fileno(), 2)
    sys.stdout, sys.stderr = out, err
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR=_HOST, MASTER_PORT=str(port))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # all ranks share this host
    elif sys.platform == "darwin":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0")
    td = datetime.timedelta(seconds=timeout)
    try:
        # Wait until every rank has been forked before anyone connects to the store: a fork taken
        # while the parent's store thread serves a connection (inside getnameinfo, holding glibc's
        # resolver lock) gives the child that lock held forever, and the child hangs.
        if not go.wait(timeout):
            raise TimeoutError(f"rank {rank} was never told to start")
        if backend == "nccl":
            torch.cuda.set_device(rank)
        store = dist.TCPStore(_HOST, port, None, False, timeout=td,
                              use_libuv=not sys.platform.startswith("win"))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=td)
        result = fn(rank, world_size, *args)
        buf = io.BytesIO()
        try:
            torch.save(_detach(result), buf)
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"rank {rank} returned a value that cannot be sent back to the "
                            f"notebook ({type(e).__name__}: {e}); return tensors, numbers, "
                            f"strings, or lists/dicts of them") from e
        out.flush()
        q.put((rank, "ok", buf.getvalue()))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        etype, exc, tb = sys.exc_info()
        if tb is not None and tb.tb_frame.f_code is _rank_main.__code__:
            tb = tb.tb_next  # start the traceback at the learner's function, not in here
        out.flush()
        err.flush()
        q.put((rank, "error", "".join(traceback.format_exception(etype, exc, tb))))
    finally:
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass
        q.close()
        q.join_thread()


def _read(logdir: str, rank: int, kind: str) -> str:
    try:
        with open(os.path.join(logdir, f"rank{rank}.{kind}"), "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _reap(procs) -> None:
    procs = [p for p in procs if p.pid is not None]  # a failed start leaves some unstarted
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(2.0)
    for p in procs:
        p.close()


def _death_text(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (SIGKILL often means it ran out of memory)" if -exitcode == signal.SIGKILL else ""
        return f"the process was killed by {name}{hint} before it could report"
    return f"the process exited with code {exitcode} before it could report (os._exit or a crash)"


def run_distributed(fn, world_size: int, *args, backend: str = "gloo", timeout: float = 60,
                    echo: bool = True, threads_per_rank: int = 1,
                    start_method: str | None = None) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` real processes; return their results.

    ``backend`` is ``"gloo"`` (CPU tensors) or ``"nccl"`` (one CUDA GPU per rank). ``timeout`` (s)
    bounds the whole call and every collective in it. With ``echo`` each rank's printed output is
    shown after the run, in rank order. Results travel back through ``torch.save``, so return
    tensors, numbers, strings or containers of them.
    """
    if not callable(fn):
        raise TypeError(f"run_distributed: fn must be a function fn(rank, world_size, ...), "
                        f"got {type(fn).__name__}")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"run_distributed: world_size must be an int >= 1, got {world_size!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"run_distributed: backend must be 'gloo' or 'nccl', got {backend!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"run_distributed: timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(threads_per_rank, int) or threads_per_rank < 1:
        raise ValueError(f"run_distributed: threads_per_rank must be an int >= 1, got {threads_per_rank!r}")
    method = start_method or default_start_method()
    if method not in mp.get_all_start_methods():
        raise ValueError(f"run_distributed: start method {method!r} is not available here; "
                         f"choose one of {mp.get_all_start_methods()}")
    if method != "fork" and getattr(fn, "__module__", None) == "__main__":
        raise RuntimeError(
            f"run_distributed: on this system processes are started with {method!r}, which can "
            f"only import a rank function from a module. '{fn.__name__}' was defined in the "
            f"notebook (module __main__), where the new processes cannot find it (the error would "
            f"read \"Can't get attribute\"). Move it into a .py file next to the notebook, "
            f"import it, and pass the imported function.")
    if backend == "nccl":
        if not dist.is_nccl_available() or torch.cuda.device_count() < world_size:
            raise RuntimeError(f"run_distributed: backend='nccl' needs {world_size} CUDA GPUs; "
                               f"this machine has {torch.cuda.device_count()}. Use backend='gloo'.")
        if method == "fork" and torch.cuda.is_initialized():
            raise RuntimeError(
                "run_distributed: CUDA is already initialised in this process, and forked "
                "processes cannot use it. Restart the kernel and call run_distributed before "
                "any CUDA work, or put the rank function in a module and pass start_method='spawn'.")

    if sys.platform.startswith("win"):
        os.environ.setdefault("USE_LIBUV", "0")  # gloo on Windows has no libuv transport
    if method == "fork":
        # autograd imports this lazily (and slowly: sympy) on the first backward with an explicit
        # gradient; importing it once here saves every forked rank from paying for it again.
        importlib.import_module("torch.fx.experimental.symbolic_shapes")
    td = datetime.timedelta(seconds=timeout)
    store = dist.TCPStore(_HOST, 0, None, True, timeout=td, wait_for_workers=False,
                          use_libuv=not sys.platform.startswith("win"))
    ctx = mp.get_context(method)
    q, go = ctx.Queue(), ctx.Event()
    logdir = tempfile.mkdtemp(prefix="run_distributed-")
    parent = os.getpid() if method == "fork" else None  # forkserver children have another parent
    procs = [ctx.Process(target=_rank_main, name=f"rank{r}", daemon=True,
                         args=(r, world_size, backend, store.port, timeout, threads_per_rank,
                               parent, logdir, go, fn, args, q))
             for r in range(world_size)]
    results: dict[int, bytes] = {}
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns that fork() in a multi-threaded process may deadlock; the
            # children reset their thread pools first (see the module docstring).
            warnings.simplefilter("ignore", DeprecationWarning)
            for p in procs:
                p.start()
        go.set()  # every rank exists now: they may connect to the store (see _rank_main)
        deadline = time.monotonic() + timeout
        failures: dict[int, str] = {}  # rank -> traceback, or how the process died
        died: set[int] = set()         # ranks that exited without reporting
        grace_end = None
        while len(results) + len(failures) < world_size:
            now = time.monotonic()
            if grace_end is not None and now >= grace_end:
                break
            if grace_end is None and now >= deadline:
                pending = [r for r in range(world_size) if r not in results]
                raise TimeoutError(_timeout_text(pending, results, timeout, logdir))
            try:
                rank, status, payload = q.get(timeout=0.1)
            except queue.Empty:
                for r, p in enumerate(procs):
                    if r in results or r in failures or p.exitcode is None:
                        continue
                    try:  # a report may still be in the pipe
                        rank, status, payload = q.get(timeout=1.0)
                        break
                    except queue.Empty:
                        failures[r] = _death_text(p.exitcode)
                        died.add(r)
                        grace_end = grace_end or time.monotonic() + 1.0
                else:
                    continue
            if status == "error":
                failures[rank] = payload
                # Peers of a failed rank fail soon after ("connection reset"); wait a moment so
                # the report blames the rank that failed first, not one that saw the fallout.
                grace_end = grace_end or time.monotonic() + 1.0
            else:
                results[rank] = payload
        if failures:
            first = min(died) if died else next(iter(failures))
            detail = failures[first] + _hint(failures[first])
            others = [r for r in failures if r != first]
            if others:
                lines = [failures[r].strip().splitlines()[-1] for r in others]
                detail += ("\n--- other ranks failed after it, probably as a consequence ---\n" +
                           "\n".join(f"rank {r}: {line}" for r, line in zip(others, lines)))
            output = "".join(_read(logdir, first, k) for k in ("out", "err", "low"))
            raise RankError(first, world_size, detail, output) from None
        outputs = {r: _read(logdir, r, "out") for r in range(world_size)}
    finally:
        _reap(procs)
        q.close()
        shutil.rmtree(logdir, ignore_errors=True)
        del store
    if echo:
        for r in range(world_size):
            for line in outputs[r].splitlines():
                print(f"[rank {r}] {line}")
    return [torch.load(io.BytesIO(results[r]), weights_only=False) for r in range(world_size)]


def _timeout_text(pending, results, timeout, logdir) -> str:
    text = (f"run_distributed: rank{'s' if len(pending) > 1 else ''} "
            f"{', '.join(map(str, pending))} did not finish within {timeout:g} s and "
            f"{'were' if len(pending) > 1 else 'was'} stopped. A common cause is a rank "
            f"waiting in a collective (or recv) that another rank never calls.")
    for r in pending:  # what the stuck ranks printed last is often the best clue
        lines = _read(logdir, r, "out").splitlines()[-5:]
        if lines:
            text += f"\n--- last lines printed by rank {r} ---\n" + "\n".join(lines)
    return text


def _hint(detail: str) -> str:
    if "autograd's threading in combination with fork" in detail:
        return ("\nHint: this process ran a backward pass before starting the ranks, and on a "
                "machine with a GPU autograd's threads cannot be forked. Restart the kernel and "
                "start the ranks before any backward pass, or put the rank function in a module "
                "and pass start_method='spawn'.")
    return ""
