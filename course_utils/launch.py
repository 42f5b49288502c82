"""Run a function on several real processes joined by ``torch.distributed``.

``run_distributed(fn, world_size, *args)`` starts ``world_size`` operating-system processes, joins
them into one process group (gloo on CPUs, NCCL on GPUs), calls ``fn(rank, world_size, *args)`` in
each and returns the ranks' return values as a list. It is what the multi-process lessons (07-09)
use from a notebook; scripts use ``torchrun`` instead, and the same rank function works in both.

What it guarantees, and why each piece is here:

* **Functions defined in a notebook cell work everywhere**: on Linux without a CUDA GPU ranks are
  started with ``fork``, which copies the notebook's memory, functions included. Elsewhere
  (a Linux machine with CUDA GPUs: ``forkserver``; macOS and Windows: ``spawn``) ranks are fresh
  processes and the function and its arguments are sent to them by value with ``cloudpickle``
  (lambdas, closures and notebook-defined classes too), together with the notebook's environment
  variables and random-number state, so a rank sees what a forked one would.
* **Backward passes before the launch do no harm**: once a process has run a backward pass on a
  machine with CUDA, autograd refuses to run in processes forked from it (its device threads
  cannot be forked; PyTorch's wiki "Autograd and Fork"). So on such machines ranks fork from a
  *fork server*: a separate interpreter, started on the first call (about 2 s), that has
  imported torch, so later launches take tens of milliseconds, and never runs autograd or CUDA.
* **Each rank uses one CPU thread**: GNU OpenMP is not fork-safe, so a forked child whose parent
  already ran a parallel op hangs in its first matmul unless its thread pool is reset; one thread
  per rank is also what N ranks on a small CPU should use.
* **Deterministic output**: each rank's ``print`` output (stdout) is captured and printed after the
  run in rank order as ``[rank r] ...``, so a notebook shows the same text on every run
  (interleaved output from processes would not be). A rank's stderr (Python warnings, which carry
  file paths) and low-level output (C++ warnings) are kept for the error report of a failed rank.
* **Errors surface fast**: a rank that raises is reported within a fraction of a second as one
  :class:`RankError` naming the rank, with its traceback; the other ranks are stopped. When every
  rank failed with the same error, the report says so instead of blaming one of them.
* **Tracebacks show the notebook's lines**: a function sent by value keeps the name of the cell
  it was defined in (cloudpickle 3.1.3 and later replace it by ``<dynamic-code>``; see
  :func:`_code_reduce`), and the cells' source travels with it, so a rank's traceback shows the
  failing line as a forked rank's does.
* **Nothing hangs**: start-up (starting the processes, rebuilding the function in them and joining
  the process group; a few seconds on a busy machine) has its own bound of ``max(60, timeout)``
  seconds, after which a ``TimeoutError`` names the ranks that did not connect. ``timeout``
  counts from the moment every rank has joined the group: after it the ranks still running are
  killed and a ``TimeoutError`` names them (with a hint when some ranks had already returned: the
  ranks then made different calls, or sent tensors of different sizes). Collectives inside the
  group time out only after that, so the report always comes from the launcher.
* **No process outlives the call**: ranks are reaped in a ``finally`` block. Should the notebook's
  kernel itself be killed, a forked rank dies with it (Linux ``PR_SET_PDEATHSIG``), and a
  fork-server or spawned rank exits as soon as multiprocessing's pipe from the kernel closes.
  The fork server itself (GPU machines only) is no rank: an idle process that stays for the
  kernel's lifetime, so that later launches are fast, and exits with the kernel.
* **No "address already in use"**: the rendezvous store listens on a port the OS picks (port 0)
  and is held by the parent for the call, so a re-run after an interrupt never collides.

Known limits: on a machine with CUDA, ranks started with an explicit ``start_method="fork"``
still cannot run autograd once the notebook ran a backward pass (the error report then carries a
hint). With ``forkserver`` and ``spawn`` whatever the rank function uses must be picklable by
cloudpickle (no open files, locks or generators in its arguments or globals), and torch settings
changed in the notebook (other than the random state) are not carried over. The fork server
imports torch and course_utils (Triton with it) once, with the environment of the first call:
a variable read at import time, such as ``TRITON_INTERPRET``, must be set before that call.
"""
from __future__ import annotations

import collections
import contextlib
import datetime
import importlib
import io
import linecache
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import queue
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings

import torch
import torch.distributed as dist

__all__ = ["run_distributed", "RankError", "default_start_method"]

_HOST = "127.0.0.1"
# Start-up (processes started, the function rebuilt in them, the group joined) gets
# max(_STARTUP_MIN_S, timeout) seconds of its own; `timeout` counts from when every rank connected.
_STARTUP_MIN_S = 60.0
# What the fork server imports once, so that each rank it forks starts with them already loaded
# (symbolic_shapes: autograd imports it, slowly, on the first backward with an explicit gradient;
# cloudpickle: rebuilding the rank function needs it).
_PRELOAD = ["torch", "torch.distributed", "course_utils.launch",
            "torch.fx.experimental.symbolic_shapes", "cloudpickle"]


class RankError(RuntimeError):
    """A rank raised (or died); the message holds its traceback."""

    def __init__(self, rank: int, world_size: int, detail: str, output: str = ""):
        self.rank, self.world_size, self.detail, self.output = rank, world_size, detail, output
        msg = f"rank {rank} of {world_size} failed\n\n--- traceback of rank {rank} ---\n{detail.rstrip()}"
        if output.strip():
            msg += f"\n--- output of rank {rank} before it failed ---\n{output.rstrip()}"
        super().__init__(msg)


def _cuda_device_count() -> int:
    """CUDA GPUs visible here, counted through NVML where it works, so CUDA is not initialised in
    this process (torch tries NVML first; ``course_utils`` also sets PYTORCH_NVML_BASED_CUDA_CHECK)."""
    try:
        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return 0


def default_start_method() -> str:
    """``fork`` on Linux without CUDA GPUs (fast, and what CI and most learners use);
    ``forkserver`` on Linux with CUDA GPUs (autograd cannot run in processes forked from one that
    ran backward there); ``spawn`` on macOS and Windows."""
    if not sys.platform.startswith("linux"):
        return "spawn"
    return "forkserver" if _cuda_device_count() > 0 else "fork"


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


def _exit_with_caller() -> None:
    """A fork-server or spawned rank is not the notebook's child, or not one that PR_SET_PDEATHSIG
    covers: watch multiprocessing's pipe to the process that started it and exit when it closes."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch():
        mp.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-caller", daemon=True).start()


def _adopt_environment(env: dict) -> None:
    """Make this fresh process's environment the notebook's (as it would be after a fork)."""
    for k in [k for k in os.environ if k not in env]:
        del os.environ[k]
    for k, v in env.items():
        if os.environ.get(k) != v:
            os.environ[k] = v


def _unpack(rng: dict, sources: dict, blob: bytes):
    """Rebuild (fn, args) sent by value, then take over the notebook's random state."""
    linecache.cache.update(sources)  # notebook cells' source lines, for tracebacks
    try:
        fn, args = pickle.loads(blob)
    except Exception as e:
        raise RuntimeError(f"run_distributed: the rank function and its arguments could not be "
                           f"rebuilt in the new process ({type(e).__name__}: {e}). A module they "
                           f"refer to by name must be importable there (a .py file next to the "
                           f"notebook is).") from e
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["random"])
    if rng.get("numpy") is not None:
        import numpy  # noqa: PLC0415

        numpy.random.set_state(rng["numpy"])
    return fn, args


# After the first failure, how long the parent waits for the other ranks' reports. The wait ends
# early once every rank has reported or exited; only a rank that is still running (a hang, or a
# long computation) makes the error wait the whole time. 1 s was too short on a loaded 2-core CI
# machine: a rank's report of the same error arrived later, and the wrong rank was blamed.
_GRACE_S = 5.0


def _rank_main(rank, world_size, backend, port, timeout, threads, parent_pid, logdir, go, job, q,
               shipped=False, startup=None):
    """One rank. ``job`` is ``(fn, args)`` after a fork, or ``(env, rng, sources, blob)`` sent by value.
    It reports ``"connected"`` once it has joined the group, then ``"ok"`` or ``"error"``."""
    _die_with_parent()
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)
    if shipped:
        _exit_with_caller()
        _adopt_environment(job[0])
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
    startup = timeout if startup is None else startup
    # The parent stops this rank at the latest `startup + timeout` s after launch; the group's own
    # timeouts (store, connecting, every collective) are longer than that, so a stuck collective is
    # reported by the parent (which names every stuck rank), not as an error of one rank.
    td = datetime.timedelta(seconds=startup + timeout + 5)
    try:
        # Wait until every rank has been forked before anyone connects to the store: a fork taken
        # while the parent's store thread serves a connection (inside getnameinfo, holding glibc's
        # resolver lock) gives the child that lock held forever, and the child hangs.
        if not go.wait(startup):
            raise TimeoutError(f"rank {rank} was never told to start")
        fn, args = _unpack(*job[1:]) if shipped else job
        if backend == "nccl":
            torch.cuda.set_device(rank)
        store = dist.TCPStore(_HOST, port, None, False, timeout=td,
                              use_libuv=not sys.platform.startswith("win"))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=td)
        q.put((rank, "connected", None))  # the run's timeout starts when every rank has sent this
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
        # Flush the report into the pipe before leaving the group: peers waiting for this rank
        # fail only once its connections close, so a failed rank's report reaches the parent
        # before theirs and the error blames the rank that failed first.
        q.close()
        q.join_thread()
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


def _code_reduce(code):
    """Reduce a code object as cloudpickle does, but keep its file name.

    cloudpickle 3.1.3 and later write ``<dynamic-code>`` in place of ``co_filename`` (their
    ``_code_reduce``: it makes the bytes independent of where a function was defined), so a
    rank's traceback could no longer find the notebook cell's lines. cloudpickle's own reducer
    still does the work (its arguments follow the running Python's ``CodeType``); the original
    name is put back in the rank by :func:`_code_with_filename`. Nested code objects (a closure, a
    lambda or a comprehension inside the function; on Python 3.11 and earlier, comprehensions are
    code objects in ``co_consts``) go through here too, because pickling ``co_consts`` calls
    the pickler again."""
    import cloudpickle  # noqa: PLC0415 - _pack checked that it is installed

    make, args = cloudpickle.Pickler.dispatch_table[types.CodeType](code)
    return _code_with_filename, (make, args, code.co_filename)


def _code_with_filename(make, args, filename: str):
    """Rebuild, in the rank, a code object that :func:`_code_reduce` took apart."""
    code = make(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


_PICKLERS: dict = {}


def _pickler(cloudpickle):
    """A ``cloudpickle.Pickler`` whose code objects keep their ``co_filename`` (cloudpickle 2.1 to
    3.x all keep their reducers in the class attribute ``dispatch_table``, a ChainMap that the
    C pickler consults for types that ``reducer_override`` leaves alone, code objects among them)."""
    base = cloudpickle.Pickler
    if base not in _PICKLERS:
        table = base.dispatch_table
        if types.CodeType in table:  # where this cloudpickle reduces code objects itself
            table = collections.ChainMap({types.CodeType: _code_reduce}, table)
        _PICKLERS[base] = type("KeepFilenamePickler", (base,), {"dispatch_table": table})
    return _PICKLERS[base]


def _dumps(obj, cloudpickle) -> bytes:
    buf = io.BytesIO()
    _pickler(cloudpickle)(buf).dump(obj)
    return buf.getvalue()


def _pack(fn, args, method: str) -> tuple:
    """What a fresh rank needs to act like a forked one: the environment, the random state,
    notebook cells' source (for tracebacks), and fn with its arguments pickled by value."""
    try:
        import cloudpickle  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(f"run_distributed: start method {method!r} sends the rank function to the "
                          f"new processes with cloudpickle, which is not installed here. Install "
                          f"it with: pip install cloudpickle") from e
    try:
        blob = _dumps((fn, args), cloudpickle)
    except Exception as e:  # noqa: BLE001 - name the culprit, whatever pickling raised
        raise TypeError(_unpicklable_text(fn, args, method, e, cloudpickle)) from e
    numpy = sys.modules.get("numpy")
    rng = {"torch": torch.get_rng_state(), "random": random.getstate(),
           "numpy": numpy.random.get_state() if numpy is not None else None}
    sources = {k: v for k, v in list(linecache.cache.items())
               if isinstance(v, tuple) and len(v) == 4 and v[1] is None}  # cells, not files
    return dict(os.environ), rng, sources, blob


def _unpicklable_text(fn, args, method, err, cloudpickle) -> str:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    culprit = f"something in them cannot be pickled ({type(err).__name__}: {err})"
    try:
        cloudpickle.dumps(fn)
    except Exception as e:  # noqa: BLE001
        culprit = (f"the function itself, or a global or variable it uses, cannot be pickled "
                   f"({type(e).__name__}: {e})")
    else:
        for i, a in enumerate(args):
            try:
                cloudpickle.dumps(a)
            except Exception as e:  # noqa: BLE001
                culprit = (f"argument {i + 1} after world_size (a {type(a).__name__}) cannot be "
                           f"pickled ({type(e).__name__}: {e})")
                break
    return (f"run_distributed: with start method {method!r} the ranks are new processes, and "
            f"'{name}' and its arguments are sent to them pickled (cloudpickle); {culprit}. Pass "
            f"plain data (tensors, numbers, strings, lists, dicts), and create locks, open files, "
            f"generators or connections inside the rank function.")


@contextlib.contextmanager
def _no_main_rerun():
    """forkserver and spawn would re-run the main script (``__main__.__file__``) in every rank to
    find functions defined there; the rank function is sent by value instead, so skip that (a
    script's top-level code, run_distributed included, must not run again in each rank)."""
    from multiprocessing import spawn  # noqa: PLC0415

    original = spawn.get_preparation_data

    def preparation_data(name):
        data = original(name)
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
        return data

    spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        spawn.get_preparation_data = original


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
    bounds the run from the moment every rank has joined the process group; start-up before that
    has its own bound of ``max(60, timeout)`` s. With ``echo`` each rank's printed output is
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
    if backend == "nccl":
        if not dist.is_nccl_available() or torch.cuda.device_count() < world_size:
            raise RuntimeError(f"run_distributed: backend='nccl' needs {world_size} CUDA GPUs; "
                               f"this machine has {torch.cuda.device_count()}. Use backend='gloo'.")
        if method == "fork" and torch.cuda.is_initialized():
            raise RuntimeError(
                "run_distributed: CUDA is already initialised in this process, and forked "
                "processes cannot use it. Pass start_method='forkserver' (the default on Linux "
                "with a GPU), or restart the kernel and call run_distributed before any CUDA work.")

    if sys.platform.startswith("win"):
        os.environ.setdefault("USE_LIBUV", "0")  # gloo on Windows has no libuv transport
    shipped = method != "fork"
    job = _pack(fn, args, method) if shipped else (fn, args)  # before the store: may raise
    if method == "fork":
        # autograd imports this lazily (and slowly: sympy) on the first backward with an explicit
        # gradient; importing it once here saves every forked rank from paying for it again.
        importlib.import_module("torch.fx.experimental.symbolic_shapes")
    startup = max(_STARTUP_MIN_S, timeout)
    td = datetime.timedelta(seconds=startup + timeout + 5)  # see _rank_main: the parent acts first
    store = dist.TCPStore(_HOST, 0, None, True, timeout=td, wait_for_workers=False,
                          use_libuv=not sys.platform.startswith("win"))
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)  # used when the server starts (first call)
    q, go = ctx.Queue(), ctx.Event()
    logdir = tempfile.mkdtemp(prefix="run_distributed-")
    parent = os.getpid() if method == "fork" else None  # fresh ranks watch a pipe instead
    procs = [ctx.Process(target=_rank_main, name=f"rank{r}", daemon=True,
                         args=(r, world_size, backend, store.port, timeout, threads_per_rank,
                               parent, logdir, go, job, q, shipped, startup))
             for r in range(world_size)]
    results: dict[int, bytes] = {}
    try:
        with warnings.catch_warnings(), _no_main_rerun() if shipped else contextlib.nullcontext():
            # Python 3.12+ warns that fork() in a multi-threaded process may deadlock; the
            # children reset their thread pools first (see the module docstring).
            warnings.simplefilter("ignore", DeprecationWarning)
            for p in procs:
                p.start()
        go.set()  # every rank exists now: they may connect to the store (see _rank_main)
        startup_end = time.monotonic() + startup
        deadline = None                # startup_end until every rank has connected, then this
        connected: set[int] = set()    # ranks that have joined the process group
        failures: dict[int, str] = {}  # rank -> traceback, or how the process died
        died: set[int] = set()         # ranks that exited without reporting
        grace_end = None
        while len(results) + len(failures) < world_size:
            now = time.monotonic()
            if grace_end is not None and now >= grace_end:
                break
            if grace_end is None and deadline is None and now >= startup_end:
                late = [r for r in range(world_size) if r not in connected]
                raise TimeoutError(_startup_text(late, startup, logdir))
            if grace_end is None and deadline is not None and now >= deadline:
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
                        grace_end = grace_end or time.monotonic() + _GRACE_S
                else:
                    continue
            if status == "connected":
                connected.add(rank)
                if len(connected) == world_size:  # the run starts now
                    deadline = time.monotonic() + timeout
            elif status == "error":
                failures[rank] = payload
                # Peers of a failed rank fail soon after ("connection reset"), and ranks that fail
                # the same way report too; wait for them (the loop ends as soon as every rank is
                # accounted for) so the report blames the rank that failed first, not one that saw
                # the fallout, and can tell "all ranks failed the same way".
                grace_end = grace_end or time.monotonic() + _GRACE_S
            else:
                results[rank] = payload
        if failures:
            raise _rank_error(failures, died, results, world_size, logdir) from None
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


def _last_line(report: str) -> str:
    lines = report.strip().splitlines()
    return lines[-1] if lines else ""


def _ranks(ranks) -> str:
    ranks = sorted(ranks)
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


def _rank_error(failures: dict, died: set, results: dict, world_size: int, logdir: str) -> RankError:
    """One RankError for the failed ranks: the rank that failed first (or died), its traceback,
    and what the others did."""
    last = {r: _last_line(t) for r, t in failures.items()}
    same = world_size > 1 and len(failures) == world_size and len(set(last.values())) == 1
    if same:  # nobody failed because of anybody else: show the lowest rank, deterministically
        first = min(failures)
    else:
        first = min(died) if died else next(iter(failures))
    detail = failures[first] + _hint(failures[first])
    if same:
        detail += (f"\n--- all {world_size} ranks failed the same way: the traceback above is "
                   f"rank {first}'s ---")
    else:
        others = [r for r in failures if r != first]
        if others:
            detail += ("\n--- other ranks failed after it, probably as a consequence ---\n" +
                       "\n".join(f"rank {r}: {last[r]}" for r in others))
        waited = any(f"torch{sep}distributed{sep}" in failures[first] for sep in "/\\")
        if results and waited:  # it failed inside a collective whose peers had already returned
            waiting = [r for r in range(world_size) if r not in results]
            detail += "\n" + _differ_hint(list(results), waiting, past=True)
    output = "".join(_read(logdir, first, k) for k in ("out", "err", "low"))
    return RankError(first, world_size, detail, output)


def _differ_hint(returned, waiting, past: bool) -> str:
    verb = ("was" if len(waiting) == 1 else "were") if past else ("is" if len(waiting) == 1 else "are")
    return (f"Hint: {_ranks(returned)} returned while {_ranks(waiting)} {verb} still waiting in a "
            f"collective (or send/recv): calls or sizes differ between ranks. Every rank must make "
            f"the same collective calls, in the same order, with tensors of the same shape, and "
            f"each send needs its matching recv.")


def _startup_text(late, startup, logdir) -> str:
    text = (f"run_distributed: {_ranks(late)} did not connect within {startup:g} s of the start "
            f"and {'were' if len(late) > 1 else 'was'} stopped (start-up: starting the process, "
            f"rebuilding the function in it and joining the process group; the run's own timeout "
            f"counts only from when every rank has connected). A busy machine can be slow to "
            f"start processes; a rank that blocks before it connects, or a port that a firewall "
            f"closes, never connects.")
    for r in late:  # a rank's warnings and low-level output say why it could not connect
        lines = (_read(logdir, r, "err") + _read(logdir, r, "low")).splitlines()[-5:]
        if lines:
            text += f"\n--- last lines of rank {r}'s error output ---\n" + "\n".join(lines)
    return text


def _timeout_text(pending, results, timeout, logdir) -> str:
    text = (f"run_distributed: rank{'s' if len(pending) > 1 else ''} "
            f"{', '.join(map(str, pending))} did not finish within {timeout:g} s (counted from "
            f"when every rank had connected) and {'were' if len(pending) > 1 else 'was'} "
            f"stopped. A common cause is a rank "
            f"waiting in a collective (or recv) that another rank never calls.")
    if results:  # some ranks finished while the others waited for them
        text += "\n" + _differ_hint(list(results), pending, past=False)
    for r in pending:  # what the stuck ranks printed last is often the best clue
        lines = _read(logdir, r, "out").splitlines()[-5:]
        if lines:
            text += f"\n--- last lines printed by rank {r} ---\n" + "\n".join(lines)
    return text


def _hint(detail: str) -> str:
    if "autograd's threading in combination with fork" in detail:
        return ("\nHint: this process ran a backward pass before starting the ranks, and on a "
                "machine with a GPU autograd's threads cannot be forked. Leave start_method at its "
                "default (forkserver on Linux with a GPU) or pass start_method='forkserver'.")
    return ""
