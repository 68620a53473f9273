"""Fault injection for tests/test_fault_injection*.py: a fork server that runs `gfnem` commands
in real child processes, each with at most one fault patched in (the client, `ForkServer`,
is in tests/test_fault_injection.py).

Starting `python -m gfnem_cli` costs seconds (torch, datasets); forty kill points would not fit
a CI budget. So `python tests/fault_driver.py` imports everything once, then reads one job per
line on stdin (JSON), forks a child per job and answers one JSON line: the child's exit code or
the signal that killed it. A child is a real process: SIGKILL (sent by the child itself at the
chosen moment, or by the server after a delay) kills it with no cleanup, as a crash would.

Faults (`job["fault"]`, counted per process; `call` is 1-based):
  write_atomic {call, phase}  inside the N-th atomic write (`engine.files.write_atomic`):
                              phase start (temp file created, empty), half (half the bytes
                              written), before_replace (complete temp, not yet renamed), after
  step / validate {call, phase: before|after}   in the method's N-th train_step / validate
  metrics {call}              the N-th metrics line is half written, then SIGKILL
  fill_disk {after_save, free, filler}  after the N-th checkpoint `Trainer.save`, fill the
                              filesystem of `filler` to leave `free` bytes: a real ENOSPC next;
                              with at_log_crossing, fill it just before the first later metrics
                              line that needs a new page (a real ENOSPC inside a metrics write)
  oserror {errno, match, on, after_save}  writes to paths containing `match` raise
                              OSError(errno), once N checkpoints were saved: on "open" (also
                              mkdir, rename, mkstemp: a read-only filesystem) or on "write"
                              (opened and truncated, then the write fails: a full disk)
  kill_in {target, call, phase}  SIGKILL before/after the N-th call of "module:function"
                              (phase interrupt_after: a real SIGINT as it returns)
  stub {target, returns}      "module:function" returns this value (a list of faults applies all)
  count {file}                no fault: write how many calls of each kind above the run made
  kill_after (job key)        the server SIGKILLs the child after this many seconds
  signals (job key)           [[delay, signum], ...]: the server sends these (SIGTERM, SIGINT)
"""
from __future__ import annotations

import builtins
import errno as errno_mod
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- in the child
def _die() -> None:
    sys.stdout.flush(), sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _killing(inner, hit, phase: str):
    """`inner`, but the call `hit()` picks SIGKILLs the process before or after it runs."""
    def wrapped(*args, **kwargs):
        fire = hit()
        if fire and phase == "before":
            _die()
        out = inner(*args, **kwargs)
        if fire and phase == "interrupt_after":     # a real Ctrl-C landing as it returns
            os.kill(os.getpid(), signal.SIGINT)
            return out
        if fire:
            _die()
        return out
    return wrapped


def _resolve(target: str):
    """"module:attr.attr" -> (object holding the last attr, its name)."""
    import importlib

    module, dotted = target.split(":")
    owner, (*path, attr) = importlib.import_module(module), dotted.split(".")
    for part in path:
        owner = getattr(owner, part)
    assert hasattr(owner, attr), f"no {target} to patch"
    return owner, attr


def _install(fault: dict) -> None:
    kind, calls = fault["kind"], {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == fault.get("call", 1)

    if kind == "write_atomic":
        from gfnem_cli.engine import checkpoint, files

        original, phase = files.write_atomic, fault["phase"]

        def write_atomic(path, write, binary=True, *more):      # more: the checkpoint's check
            if not hit():
                return original(path, write, binary, *more)

            def torn(handle):
                if phase == "start":
                    _die()
                if phase == "half":
                    import io
                    buffer = io.BytesIO() if binary else io.StringIO()
                    write(buffer)
                    data = buffer.getvalue()
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    _die()
                write(handle)

            if phase == "before_replace":
                real_replace = os.replace
                os.replace = lambda *a, **k: _die()
                try:
                    return original(path, torn, binary, *more)
                finally:
                    os.replace = real_replace
            original(path, torn, binary, *more)
            if phase == "after":
                _die()

        files.write_atomic = checkpoint.write_atomic = write_atomic
    elif kind in ("step", "validate"):
        from gfnem_cli.engine.trainer import Trainer

        init, name = Trainer.__init__, "train_step" if kind == "step" else "validate"

        def patched_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            setattr(self.method, name, _killing(getattr(self.method, name), hit, fault["phase"]))

        Trainer.__init__ = patched_init
    elif kind == "metrics":
        from gfnem_cli.engine.trainer import Trainer

        log = Trainer._log

        def _log(self, record):
            if not hit():
                return log(self, record)
            real, scratch = self.metrics_path, self.metrics_path.with_name("scratch.line")
            self.metrics_path = scratch
            log(self, record)
            self.metrics_path = real
            line = scratch.read_bytes()
            scratch.unlink()
            with open(real, "ab") as handle:
                handle.write(line[: len(line) // 2])
            _die()

        Trainer._log = _log
    elif kind == "fill_disk":
        from gfnem_cli.engine.trainer import Trainer

        if fault.get("at_log_crossing"):
            log, page = Trainer._log, 4096

            def _log(self, record):
                size = self.metrics_path.stat().st_size if self.metrics_path.exists() else 0
                line = len(json.dumps({"time": 0.001, "elapsed_s": 1.234, **record})) + 10
                if SAVES["n"] >= fault["after_save"] and size % page + line > page + 8:
                    fill(Path(fault["filler"]), 0)
                return log(self, record)

            Trainer._log = _log
        _arm_after_saves(fault["after_save"], lambda: None if fault.get("at_log_crossing")
                         else fill(Path(fault["filler"]), fault["free"]))
    elif kind == "oserror":
        armed = {"on": not fault.get("after_save")}
        if fault.get("after_save"):
            _arm_after_saves(fault["after_save"], lambda: armed.update(on=True))
        _patch_oserror(fault["errno"], fault["match"], fault.get("on", "open"), armed)
    elif kind == "kill_in":             # e.g. target "os:rename", "shutil:rmtree"
        owner, attr = _resolve(fault["target"])
        setattr(owner, attr, _killing(getattr(owner, attr), hit, fault["phase"]))
    elif kind == "stub":                # {target, returns}: a function made to return a value
        owner, attr = _resolve(fault["target"])
        setattr(owner, attr, lambda *a, **k: fault["returns"])
    elif kind == "count":
        _count()
    else:
        raise ValueError(f"unknown fault {kind}")


COUNTS: dict[str, int] = {}


def _count() -> None:
    """Count the calls each fault kind can target (written to fault["file"] at exit)."""
    from gfnem_cli.engine import checkpoint, files
    from gfnem_cli.engine.trainer import Trainer

    def counted(kind, inner):
        def wrapped(*args, **kwargs):
            COUNTS[kind] = COUNTS.get(kind, 0) + 1
            return inner(*args, **kwargs)
        return wrapped

    files.write_atomic = checkpoint.write_atomic = counted("write_atomic", files.write_atomic)
    Trainer._log, init = counted("metrics", Trainer._log), Trainer.__init__

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.method.train_step = counted("step", self.method.train_step)
        self.method.validate = counted("validate", self.method.validate)

    Trainer.__init__ = patched_init


def fill(filler: Path, free: int) -> None:
    """Write `filler` until the filesystem is full, then give back `free` bytes."""
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert exc.errno == errno_mod.ENOSPC, exc
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - free))


SAVES = {"n": 0}


def _arm_after_saves(count: int, then) -> None:
    """Count checkpoint saves (`Trainer.save`); call `then()` right after the count-th."""
    from gfnem_cli.engine.trainer import Trainer

    save = Trainer.save

    def patched_save(self):
        save(self)
        SAVES["n"] += 1
        if SAVES["n"] == count:
            then()

    Trainer.save = patched_save


class _FailingWrites:
    """A file opened for writing on a disk that is full: every write raises ENOSPC."""

    def __init__(self, handle, code: int, path: str):
        self._handle, self._code, self._path = handle, code, path

    def write(self, data):
        raise OSError(self._code, os.strerror(self._code), self._path)

    writelines = write

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def _patch_oserror(code: int, match: str, on: str, armed: dict) -> None:
    """Writes to paths containing `match` fail with OSError(code): at the open (`on="open"`,
    also mkdir, rename, mkstemp...: a read-only filesystem) or at the first write (`"write"`:
    a full disk, the file already opened and truncated)."""
    import io
    import tempfile

    def name(path) -> str | None:
        if isinstance(path, int):          # os.fdopen(fd) (write_atomic) opens by descriptor
            try:
                return os.readlink(f"/proc/self/fd/{path}")
            except OSError:
                return None
        return os.fsdecode(os.fspath(path)) if isinstance(path, (str, bytes, os.PathLike)) \
            else None

    def hits(path) -> bool:
        shown = name(path)
        return armed["on"] and shown is not None and match in shown

    def fail(path):
        raise OSError(code, os.strerror(code), name(path))

    def writing(mode) -> bool:
        return any(c in mode for c in "wax+")

    real_open, real_os_open = io.open, os.open

    def open_(file, mode="r", *args, **kwargs):
        if on == "open" and hits(file) and writing(mode):
            fail(file)
        handle = real_open(file, mode, *args, **kwargs)
        if on == "write" and hits(file) and writing(mode):
            return _FailingWrites(handle, code, name(file))
        return handle

    builtins.open = io.open = open_     # os.fdopen and Path.open call io.open
    if on != "open":
        return

    def os_open(path, flags, *args, **kwargs):
        if hits(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            fail(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(real):
        def wrapped(path, *args, **kwargs):
            for target in (path, *args[:1]):
                if hits(target):
                    fail(target)
            return real(path, *args, **kwargs)
        return wrapped

    os.open = os_open
    for call in ("mkdir", "rename", "replace", "unlink", "rmdir", "truncate"):
        setattr(os, call, guard(getattr(os, call)))
    real_mkstemp = tempfile.mkstemp
    tempfile.mkstemp = lambda *a, dir=None, **k: (fail(dir) if dir and hits(dir) else
                                                  real_mkstemp(*a, dir=dir, **k))


def _child(job: dict) -> None:
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.chdir(job.get("cwd") or REPO)
    # Ctrl-C as a terminal delivers it: a test runner started as a background job inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1
    try:
        faults = job.get("fault") or []
        for fault in faults if isinstance(faults, list) else [faults]:
            _install(fault)
        from gfnem_cli.app import app

        sys.argv = ["gfnem", *job["argv"]]
        app(args=job["argv"], prog_name="gfnem")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what an uncaught exception prints in a real process
        traceback.print_exc()
    finally:
        if isinstance(job.get("fault"), dict) and job["fault"]["kind"] == "count":
            Path(job["fault"]["file"]).write_text(json.dumps(COUNTS))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve() -> None:
    import torch

    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])   # imports torch._dynamo (1.5 s)
    import gfnem_cli.app  # noqa: F401  (everything imported once here, shared by every child)
    for module in ("datasets", "rich.progress", "gfnem_cli.families", "grammars.run",
                   "grammars.training.em_methods", "grammars.training.exact_marginal",
                   "grammars.inference.parsing", "grammars.inference.run_scores",
                   "grammars.data.inputs", "grammars.inference.tree_draws",
                   "grammars.data.synthetic", "grammars.models", "grammars.gflownet",
                   "grammars.training.mcem", "grammars.charts.viterbi",
                   "pydantic", "typer._adapters", "rich._emoji_codes",
                   "multiprocessing.synchronize"):
        try:            # only to save each child the import; a renamed module costs time
            __import__(module)
        except ImportError:
            pass
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(job)
        deadline = started + job.get("kill_after", 90)     # else a hung child: 90 s
        hung, signals = False, sorted(job.get("signals", []))   # [[delay, signum], ...]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            while signals and time.perf_counter() >= started + signals[0][0]:
                os.kill(pid, signals.pop(0)[1])
            if time.perf_counter() >= deadline:
                hung = "kill_after" not in job
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        answer = {"wall": round(time.perf_counter() - started, 3),
                  "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                  "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                  "hung": hung}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _serve()
