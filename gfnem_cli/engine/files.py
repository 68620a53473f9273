"""Writing user-visible files so that a failure never leaves a torn or half-replaced one.

Every file gfnem writes (checkpoints, configs, reports, parses, JSON) goes through here: the
bytes land in a temporary sibling, are flushed to disk, and are renamed over the target, so
a reader (or a crash) sees either the old file or the new one. Output paths are checked
before any work starts (`check_output_file`; for a run also a probe file and
`check_free_space`), so a command that will not be able to write its result refuses at once
instead of after an hour of decoding.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable

from gfnem_cli.engine.errors import GfnemError

FILE_MODE = 0o644   # what a plain `open(..., "w")` gives under the usual umask


def os_error(exc: OSError, path: object | None = None, doing: str = "cannot write") -> GfnemError:
    """An OSError as the one-line user error: which file, what went wrong, what to do."""
    where = path if path is not None else (exc.filename or None)
    reason = exc.strerror or str(exc)
    hints = {errno.ENOSPC: "free some disk space and run the command again",
             errno.EROFS: "choose an output on a writable filesystem",
             errno.EACCES: "choose an output you may write to",
             errno.EPERM: "choose an output you may write to",
             errno.EISDIR: "give a file name, not a directory",
             errno.ENOTDIR: "a parent of this path is a file, not a directory",
             errno.EDQUOT: "free some space within your quota and run the command again"}
    return GfnemError(f"{doing}: {reason}", where, hint=hints.get(exc.errno))


def write_atomic(path: Path, write: Callable[[object], None], binary: bool = True,
                 check: Callable[[str], None] | None = None) -> None:
    """Call `write(handle)` on a temporary sibling of `path`, fsync, then rename it over `path`.

    `check(name)`, when given, runs on the complete, fsynced temporary file just before the
    rename (a checkpoint reads itself back there); whatever it raises stops the write with
    `path` untouched. The temporary file is removed on any failure; OSErrors become one-line
    `GfnemError`s.
    """
    path = Path(path)
    if path.is_dir():
        raise GfnemError("is a directory, not a file", path, hint="give a file name")
    tmp = temporary_name(path.parent, "." + path.name + ".", ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = create_exclusive(tmp)
        os.fchmod(fd, FILE_MODE)           # whatever the umask
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise os_error(exc, path) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def temporary_name(folder: Path, prefix: str, suffix: str) -> str:
    """A fresh name, chosen before the file exists: whatever interrupts the creation (a second
    Ctrl-C lands in any thread), the cleanup already knows which file to remove."""
    return os.path.join(folder, prefix + secrets.token_hex(6) + suffix)


def create_exclusive(name: str) -> int:
    """Create `name`, which must not exist yet; the one place files are created (tests
    inject read-only filesystems and full disks here)."""
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text), binary=False)


def check_output_file(path: Path) -> None:
    """Refuse, before any work, an output that names a directory or sits where no file can
    be created (missing permissions, a read-only filesystem); nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise GfnemError("is a directory, not a file", path, hint="give a file name")
    parent = path.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise GfnemError("a parent of this path is a file, not a directory", path)
    check_writable_dir(existing, path)


def check_writable_dir(directory: Path, shown: object | None = None) -> None:
    """Create and delete a probe file in `directory`: the only test that sees read-only
    mounts and root-owned folders alike (`os.access` is always true for root)."""
    probe = temporary_name(Path(directory), ".gfnem-probe-", "")
    try:
        os.close(create_exclusive(probe))
    except OSError as exc:
        raise os_error(exc, shown if shown is not None else directory) from None
    finally:
        if os.path.exists(probe):
            os.unlink(probe)


def check_free_space(directory: Path, needed: int, shown: object | None = None) -> None:
    """Refuse, before any write, a filesystem with fewer than `needed` bytes free for an
    unprivileged writer (`shutil.disk_usage`); a filesystem that cannot say is let through."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < needed:
        raise GfnemError(f"no space left for this run: {_size(free)} free on its filesystem, "
                         f"its checkpoint files need about {_size(needed)}",
                         shown if shown is not None else directory,
                         hint="free some disk space, or choose an --out on another disk")


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
