"""Grade learners' notebooks: run each one and tabulate its exercises.

    make grade SUBMISSIONS=homework/03                 # every file under the folder
    python -m course_utils.grade alice.ipynb bob.ipynb --lesson 03 --timeout 300 --hidden cases.py

Each submission runs in its own kernel (the Python running this module), in a scratch copy in a
fresh temporary folder, top to bottom with errors allowed (an exercise left undone must not stop
the ones after it), within ``--timeout`` seconds for the whole notebook. The grader reads a
submission once and never writes to it. A notebook that hangs is stopped at its timeout; one that
kills its kernel, or deletes the files of its working folder, loses only what it had not yet run;
either way the other rows are unaffected: each notebook runs in its own worker process, which the
grader kills (with its kernel) if it outlives the timeout.

The table, one row per submission and one column per exercise of the lesson, says for each
exercise ``passed``, ``failed: <the checker's message>``, ``not attempted`` (the learner copy's
``NotImplementedError`` is still there) or ``error: <what happened>`` (the cell raised outside
its checker, its checker call is gone, the cell is missing, or the notebook stopped before it).
A file that is not a notebook, or a notebook of another lesson, gets a row that says so. The
table is written as CSV and Markdown (``--out``, default ``grades/``, ignored by git) and the
Markdown is printed.

Hidden cases: ``--hidden FILE`` names a Python file defining ``HIDDEN = {"Exercise 3.1": [cases],
...}``; each learner kernel gets it through ``course_utils.exercises.HIDDEN_CASES_ENV``, and
``check_function`` runs those cases after the visible ones (the learner's copy never shows them).
Keep the file out of the learners' reach.

The lesson is the one named by the notebooks' header (``# 03 · ...``), or ``--lesson``; its
exercises are read from the solved lesson in ``notebooks/`` (``--lessons`` names another folder).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_utils.exercises import HIDDEN_CASES_ENV, TITLE_RE

ROOT = Path(__file__).resolve().parent.parent
HEADER_RE = re.compile(r"^#\s+(\d\d)\s*·", re.M)
GRACE_S = 20  # after the timeout, the worker gets this long to stop its kernel before it is killed
PASSED, FAILED, NOT_ATTEMPTED, ERROR = "passed", "failed", "not attempted", "error"

__all__ = ["grade", "Row", "main"]


@dataclass
class Row:
    submission: str
    lesson: str = ""
    result: str = ""
    exercises: dict[str, str] = field(default_factory=dict)
    note: str = ""


# ---- reading notebooks --------------------------------------------------------------------------

def _read_notebook(data: bytes):
    """The notebook in ``data`` (nbformat 4), or raise ValueError saying why it is not one."""
    import nbformat  # noqa: PLC0415

    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    except UnicodeDecodeError as e:
        raise ValueError("not text (a binary file?)") from e
    except Exception as e:  # noqa: BLE001 - nbformat raises several kinds for a bad file
        raise ValueError(f"not a Jupyter notebook ({type(e).__name__}: {str(e)[:80]})") from e
    if not isinstance(nb.get("cells"), list):
        raise ValueError("not a Jupyter notebook (no cells)")
    return nb


def lesson_of(nb) -> str | None:
    """The lesson number of a notebook, from its header ``# NN · Title`` (a learner copy has a
    banner cell before it, so the first few markdown cells are looked at)."""
    for cell in [c for c in nb.cells if c.cell_type == "markdown"][:3]:
        m = HEADER_RE.search(cell.source)
        if m:
            return m.group(1)
    return None


def exercise_cells(nb) -> dict[str, int]:
    """Exercise name -> index of its cell (the first line ``# Exercise N.M — title``)."""
    out = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            m = TITLE_RE.match(cell.source.lstrip())
            if m:
                out.setdefault(" ".join(m.group(1).split()), i)
    return out


def known_lessons(folder: Path) -> dict[str, Path]:
    return {p.name[:2]: p for p in sorted(folder.glob("[0-9][0-9]_*.ipynb"))}


def expand(paths: list[str]) -> list[Path]:
    """Files, and every file under a folder (hidden ones and checkpoints left out), sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and not any(
                part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return out


# ---- running one notebook (in a worker process) -----------------------------------------------

def _kernel_spec_manager():
    """Kernel specs that resolve ``python3`` to this very interpreter (the course's venv), as
    nbval's --nbval-current-env does, whatever kernels the machine has installed."""
    from ipykernel.kernelspec import get_kernel_dict  # noqa: PLC0415
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # noqa: PLC0415

    class Here(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(resource_dir="", **get_kernel_dict())

    return Here()


def _worker(notebook: Path, timeout: float, fd: int) -> int:
    """Execute ``notebook`` (in the current folder), writing one JSON line to ``fd`` per executed
    cell: {"cell": i, "stdout": ..., "error": [ename, evalue] or null}; then {"stop": reason}."""
    import nbformat  # noqa: PLC0415
    from jupyter_client import AsyncKernelManager  # noqa: PLC0415
    from nbclient import NotebookClient  # noqa: PLC0415
    from nbclient.exceptions import CellTimeoutError, DeadKernelError  # noqa: PLC0415

    out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def emit(**kw):
        out.write(json.dumps(kw) + "\n")
        out.flush()

    deadline = time.monotonic() + timeout
    nb = nbformat.read(notebook, as_version=4)
    # The asynchronous manager: with a blocking one, nbclient waits on the shell socket without
    # looking at the kernel, and a kernel that died is only noticed at the timeout.
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=_kernel_spec_manager())
    client = NotebookClient(nb, km=km, allow_errors=True, interrupt_on_timeout=False,
                            timeout=int(timeout), startup_timeout=int(min(timeout, 60)),
                            resources={"metadata": {"path": str(notebook.parent)}})
    i = -1
    try:
        with client.setup_kernel(cwd=str(notebook.parent)):
            pid = getattr(km.provisioner, "pid", None)
            emit(kernel_pid=pid)
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CellTimeoutError("the notebook's time is up")
                client.timeout = max(1, int(left))
                client.execute_cell(cell, i)
                stdout = "".join(o.get("text", "") for o in cell.outputs
                                 if o.output_type == "stream" and o.get("name") == "stdout")
                err = next(([o.ename, o.evalue] for o in cell.outputs if o.output_type == "error"),
                           None)
                emit(cell=i, stdout=stdout[-4000:], error=err)
        emit(stop="done")
    except CellTimeoutError:
        emit(stop="timeout", cell=i)
    except DeadKernelError:
        emit(stop="dead", cell=i)
    except Exception as e:  # noqa: BLE001 - reported in the learner's row, not raised
        emit(stop="error", cell=i, message=f"{type(e).__name__}: {e}"[:300])
    return 0


def _run(nb_bytes: bytes, name: str, timeout: float, hidden: Path | None) -> list[dict]:
    """Run a copy of the notebook in a fresh folder through a worker process; its JSON lines."""
    base = Path(tempfile.mkdtemp(prefix="course-grade-"))
    work = base / "work"
    work.mkdir()
    (work / name).write_bytes(nb_bytes)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop(HIDDEN_CASES_ENV, None)
    if hidden is not None:
        env[HIDDEN_CASES_ENV] = str(hidden.resolve())
    # An unlinked file that the worker writes through an inherited descriptor: nothing the
    # notebook does to its folder can remove or change what was already recorded.
    record = tempfile.TemporaryFile(mode="w+b")
    log = tempfile.TemporaryFile(mode="w+b")
    cmd = [sys.executable, "-m", "course_utils.grade", "--_worker", str(work / name),
           "--timeout", str(timeout), "--_fd", str(record.fileno())]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, pass_fds=(record.fileno(),),
                            start_new_session=True)
    killed = False
    try:
        proc.wait(timeout + GRACE_S)
    except subprocess.TimeoutExpired:
        killed = True
    record.seek(0)
    lines = [json.loads(ln) for ln in record.read().decode("utf-8", "replace").splitlines()
             if ln.strip().startswith("{")]
    kernel = next((ln["kernel_pid"] for ln in lines if ln.get("kernel_pid")), None)
    for pgid in (proc.pid, kernel):  # the worker's group, then the kernel's (its own session)
        if pgid:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    proc.wait()
    if killed and not any("stop" in ln for ln in lines):
        lines.append({"stop": "timeout", "cell": max((ln.get("cell", -1) for ln in lines),
                                                     default=-1)})
    elif not any("stop" in ln for ln in lines):
        log.seek(0)
        tail = log.read().decode("utf-8", "replace").strip().splitlines()[-1:]
        lines.append({"stop": "error", "cell": -1,
                      "message": f"the grader's worker exited with code {proc.returncode}: "
                                 + (tail[0][:200] if tail else "no message")})
    record.close()
    log.close()
    shutil.rmtree(base, ignore_errors=True)
    return lines


# ---- judging one exercise ---------------------------------------------------------------------

def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.replace("\x1b", "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _no(stop: dict) -> str:
    """The cell where a notebook stopped, counted from 1 as a person counts them."""
    cell = stop.get("cell")
    return f"{cell + 1}" if isinstance(cell, int) and cell >= 0 else "?"


def judge(name: str, source: str, ran: dict | None, stop: dict) -> str:
    """The verdict for one exercise cell: passed / failed: … / not attempted / error: …"""
    if ran is None:
        why = {"timeout": f"not run: the notebook ran out of time (in cell {_no(stop)})",
               "dead": f"not run: the kernel died (in cell {_no(stop)})",
               }.get(stop.get("stop"), f"not run: {stop.get('message', 'the notebook stopped')}")
        return f"{ERROR}: {why}"
    err = ran.get("error")
    if err:
        ename, evalue = err
        if ename == "NotImplementedError" and "your code goes here" in evalue:
            return NOT_ATTEMPTED
        if ename in ("ExerciseError", "AssertionError"):
            return f"{FAILED}: {_one_line(evalue)}"
        return f"{ERROR}: {_one_line(f'{ename}: {evalue}')}"
    if re.search(rf"^✓ {re.escape(name)}\b", ran.get("stdout", ""), re.M):
        if not re.search(rf"check_(function|answer)\(\s*[\"']{re.escape(name)}[\"']", source):
            return f"{ERROR}: the cell printed a ✓ line but does not call the checker"
        return PASSED
    return (f"{ERROR}: the cell ran, but its checker printed no ✓ line (is the "
            f"check_function / check_answer call still there?)")


# ---- the whole table --------------------------------------------------------------------------

def _grade_one(path: Path, label: str, lesson: str, names: list[str], lessons: dict[str, Path],
               timeout: float, hidden: Path | None) -> Row:
    row = Row(submission=label)
    blank = dict.fromkeys(names, "")
    if path.suffix.lower() != ".ipynb":
        return Row(label, "", f"not a notebook ({path.suffix or 'no extension'})", blank,
                   "only .ipynb files are graded")
    try:
        data = path.read_bytes()
        nb = _read_notebook(data)
    except (OSError, ValueError) as e:
        return Row(label, "", "not a notebook", blank, str(e))
    theirs = lesson_of(nb)
    row.lesson = theirs or "?"
    if theirs != lesson:
        what = (f"a notebook of lesson {theirs} ({lessons[theirs].stem})" if theirs in lessons
                else f"a notebook of lesson {theirs}" if theirs
                else "a notebook without a lesson header ('# NN · Title')")
        return Row(label, row.lesson, "other lesson", blank,
                   f"{what}, not of lesson {lesson} ({lessons[lesson].stem}): not run")
    start = time.monotonic()
    lines = _run(data, path.name if path.name.endswith(".ipynb") else "submission.ipynb",
                 timeout, hidden)
    took = time.monotonic() - start
    ran = {ln["cell"]: ln for ln in lines if "cell" in ln and "stop" not in ln}
    stop = next((ln for ln in lines if "stop" in ln), {"stop": "error", "message": "no result"})
    cells = exercise_cells(nb)
    for name in names:
        if name not in cells:
            row.exercises[name] = f"{ERROR}: no cell starting '# {name} —' in the notebook"
            continue
        i = cells[name]
        verdict = judge(name, nb.cells[i].source, ran.get(i), stop)
        if ran.get(i) is None and stop.get("cell") == i:
            verdict = f"{ERROR}: " + {"timeout": "it ran out of time in this cell",
                                      "dead": "the kernel died in this cell"}.get(
                stop["stop"], stop.get("message", "the notebook stopped in this cell"))
        row.exercises[name] = verdict
    passed = sum(v == PASSED for v in row.exercises.values())
    row.result = f"{passed}/{len(names)} passed"
    row.note = {"done": f"ran in {took:.0f} s",
                "timeout": f"stopped: over the {timeout:g} s timeout in cell {_no(stop)}",
                "dead": f"stopped: the kernel died in cell {_no(stop)}",
                }.get(stop["stop"], f"stopped: {stop.get('message', '')}")
    return row


def grade(files: list[Path], *, root: Path | None = None, lesson: str | None = None,
          timeout: float = 300, hidden: Path | None = None, lessons_dir: Path | None = None,
          jobs: int = 1) -> tuple[str, list[str], list[Row]]:
    """Grade ``files``; return (lesson, exercise names, rows in the order of ``files``)."""
    lessons = known_lessons(lessons_dir or ROOT / "notebooks")
    if lesson is None:
        found = collections.Counter()
        for f in files:
            if f.suffix.lower() == ".ipynb":
                try:
                    found[lesson_of(_read_notebook(f.read_bytes()))] += 1
                except (OSError, ValueError):
                    pass
        found.pop(None, None)
        ranked = found.most_common()
        if not ranked:
            raise SystemExit("grade: no notebook of a lesson among the submissions; "
                             "name the lesson with --lesson NN")
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            raise SystemExit(f"grade: the submissions are of lessons {sorted(found)} in equal "
                             f"numbers; say which one to grade with --lesson NN")
        lesson = ranked[0][0]
    lesson = f"{int(lesson):02d}" if str(lesson).isdigit() else str(lesson)
    if lesson not in lessons:
        raise SystemExit(f"grade: no lesson {lesson} in {lessons_dir or ROOT / 'notebooks'} "
                         f"(lessons: {', '.join(lessons)})")
    import nbformat  # noqa: PLC0415

    names = list(exercise_cells(nbformat.read(lessons[lesson], as_version=4)))

    def label(f: Path) -> str:
        try:
            return str(f.resolve().relative_to(root.resolve())) if root else f.name
        except ValueError:
            return str(f)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        rows = list(pool.map(lambda f: _grade_one(f, label(f), lesson, names, lessons, timeout,
                                                  hidden), files))
    return lesson, names, rows


def _cells(row: Row, names: list[str]) -> list[str]:
    return [row.submission, row.lesson, row.result] + [row.exercises.get(n, "") for n in names] + [
        row.note]


def write_tables(out: Path, stem: str, names: list[str], rows: list[Row]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    head = ["submission", "lesson", "result"] + names + ["note"]
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(_cells(r, names) for r in rows)

    def md(text: str) -> str:
        text = _one_line(text, 90)
        return text.replace("|", "\\|") or " "

    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(md(c) for c in _cells(r, names)) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m course_utils.grade",
        description="Run learners' notebooks, each in its own kernel and scratch folder, and "
                    "write a table of learner × exercise (CSV and Markdown).")
    ap.add_argument("files", nargs="*", help="notebooks, or folders of them")
    ap.add_argument("--lesson", help="lesson number to grade (default: the submissions' own)")
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds for one whole notebook (default 300)")
    ap.add_argument("--hidden", type=Path, help="Python file with HIDDEN = {name: [cases]}")
    ap.add_argument("--out", type=Path, default=Path("grades"),
                    help="folder for NN_topic.csv and NN_topic.md (default grades/)")
    ap.add_argument("--jobs", "-j", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="notebooks run side by side (default: half the CPU cores)")
    ap.add_argument("--lessons", type=Path, help="folder of the solved lessons (default notebooks/)")
    ap.add_argument("--_worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        return _worker(args._worker, args.timeout, args._fd)
    if not args.files:
        ap.error("name the submissions: notebooks, or a folder of them")
    if args.hidden is not None and not args.hidden.is_file():
        ap.error(f"--hidden {args.hidden}: no such file")
    files = expand(args.files)
    if not files:
        ap.error(f"no files in {' '.join(args.files)}")
    root = Path(args.files[0]) if len(args.files) == 1 and Path(args.files[0]).is_dir() else None
    start = time.monotonic()
    lesson, names, rows = grade(files, root=root, lesson=args.lesson, timeout=args.timeout,
                                hidden=args.hidden, lessons_dir=args.lessons, jobs=args.jobs)
    stem = known_lessons(args.lessons or ROOT / "notebooks")[lesson].stem
    csv_path, md_path = write_tables(args.out, stem, names, rows)
    print(md_path.read_text(encoding="utf-8"))
    print(f"{len(rows)} submissions of lesson {lesson} graded in {time.monotonic() - start:.0f} s:"
          f" {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
