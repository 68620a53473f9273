"""Prepared data sets on disk, for every family: written whole or not at all, checked on load.

A family's `prepare` builds its data set (a corpus, an image set) into a temporary sibling of
the output folder; the manifest, written last, lists every other file with its size and
sha256; then the folder is swapped in — one atomic exchange where Linux offers it
(renameat2 RENAME_EXCHANGE), else two renames whose interruption the next prepare repairs.
So a kill at any moment leaves the old data set or the new one, and a truncated, edited or
deleted file is named when the set is loaded instead of surfacing as an Arrow traceback or
as silently different data. `manifest_of` and `load_split` are the reading side both
families share: what a path holds instead of a prepared set, and one split checked against
its manifest (a family adds only its own range check).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.files import check_writable_dir, os_error


def check_output_dir(out: Path, what: str) -> None:
    """Refuse, before any input is read, to replace anything but an empty directory or an
    earlier prepared `what`, and an output whose parent cannot be written (the set is built in
    a sibling there and renamed into place)."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir())
                                               or (out / "manifest.json").is_file())):
        raise GfnemError(f"exists and is not a prepared {what}; refusing to overwrite it", out,
                         hint="choose another --out")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise GfnemError("a parent of this path is a file, not a directory", out)
    check_writable_dir(existing, out)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(root: Path) -> dict[str, dict]:
    """Size and sha256 of every file under `root` but the manifest, by relative path."""
    out = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative != "manifest.json":
            out[relative] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def check_files(root: Path, files: dict, what: str, damaged: str) -> None:
    """Every file the manifest lists is there, of its size and content; else one line."""
    for relative, expected in files.items():
        target = Path(root) / relative
        if not target.is_file():
            raise GfnemError(f"missing file of a prepared {what}", target, hint=damaged)
        size = target.stat().st_size
        if size != expected["bytes"]:
            raise GfnemError(f"{size:,} bytes where the manifest says {expected['bytes']:,} "
                             "(truncated or changed)", target, hint=damaged)
        if sha256_file(target) != expected["sha256"]:
            raise GfnemError(f"changed since the {what} was prepared (sha256 differs from the "
                             "manifest)", target, hint=damaged)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def write_json(path: Path, payload: object) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n",
                          encoding="utf-8")


def write_prepared(out: Path, fill: Callable[[Path], dict], what: str) -> Path:
    """`fill(tmp)` writes the data set's files into the temporary folder and returns its
    manifest; the file list is added, the manifest written last, and the folder swapped in.
    A failure leaves the old set (or nothing) and no temporary folder; OSErrors are one line."""
    out = Path(out)
    check_output_dir(out, what)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        recover(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        manifest = fill(tmp)
        manifest["files"] = file_checksums(tmp)
        write_json(tmp / "manifest.json", manifest)     # last: its presence means whole
        swap_in(tmp, out)
    except OSError as exc:
        raise os_error(exc, out) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is exchanged with it atomically where the
    system can, else moved aside first and put back on failure."""
    if not out.exists():
        tmp.rename(out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)      # tmp now holds the old set
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_cwd, exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def leftovers(out: Path) -> list[tuple[Path, str, int]]:
    """(path, "tmp" or "old", pid) of the temporary siblings prepares of `out` leave."""
    found = []
    if not out.parent.is_dir():
        return found
    for path in out.parent.iterdir():
        for kind in ("tmp", "old"):
            prefix = f".{out.name}.{kind}-"
            if path.name.startswith(prefix) and path.name[len(prefix):].isdigit():
                found.append((path, kind, int(path.name[len(prefix):])))
    return found


def set_aside(out: Path) -> Path | None:
    """A whole data set an interrupted prepare moved aside from `out`, if any."""
    aside = [p for p, _, _ in leftovers(Path(out)) if (p / "manifest.json").is_file()]
    return aside[0] if aside else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(out: Path) -> None:
    """Undo what a killed prepare left: a set moved aside with nothing in its place is put
    back, and temporary folders of dead processes are removed."""
    for path, kind, pid in leftovers(out):
        if pid == os.getpid() or _alive(pid):
            continue
        if kind == "old" and not out.exists() and (path / "manifest.json").is_file():
            path.rename(out)
        else:
            shutil.rmtree(path, ignore_errors=True)


def load_split(folder: Path, features, count: int, what: str, unit: str, damaged: str,
               value_problem: Callable[[object], str | None] | None = None,
               validate: bool = False):
    """One split of a prepared set through `datasets`, checked against its manifest: the
    columns, the row count, then `value_problem(arrow_table)` (a family's range check, None
    when the values are fine). Any failure of the library on a damaged folder is reported as
    the damage it is, in one line naming the folder. `validate`: let Arrow check every offset
    and buffer (for sets without checksums to trust)."""
    import datasets

    if not folder.is_dir():
        raise GfnemError("missing split folder", folder, hint=damaged)
    problem = None
    try:
        split = datasets.Dataset.load_from_disk(str(folder))
        if validate:
            split.data.table.validate(full=True)
        if split.features != features:
            problem = f"its columns are not those of a prepared {what}"
        elif split.num_rows != count:
            problem = f"{split.num_rows:,} {unit} where the manifest says {count:,}"
        elif value_problem is not None:
            problem = value_problem(split.data.table)
    except Exception as exc:   # datasets / pyarrow on a damaged folder: many exception types
        raise GfnemError(f"cannot read this split: {first_line(exc)}", folder,
                         hint=damaged) from None
    if problem:
        raise GfnemError(problem, folder, hint=damaged)
    return split


def manifest_of(path: Path, what: str, create: str) -> Path:
    """The manifest file of the prepared set at `path`, or a one-line error saying what is
    there instead: a file, nothing (or what an interrupted prepare set aside), a folder that
    no `prepare` wrote. `what` names the set ("corpus"), `create` the command that makes one."""
    path = Path(path)
    if path.is_file():
        raise GfnemError(f"is a file, not a prepared {what} directory", path,
                         hint="give a directory written by `gfnem prepare`")
    if not path.exists():
        aside = set_aside(path)
        if aside is not None:
            raise GfnemError(f"no {what} here: an interrupted `gfnem prepare` left one in "
                             f"{aside.name}", path, hint="prepare it again (which puts "
                             f"the old {what} back first), or rename that folder")
        raise GfnemError(f"no such {what} directory", path, hint=f"create it with {create}")
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise GfnemError(f"not a prepared {what} (no manifest.json)", path,
                         hint=f"create it with {create}")
    return manifest
