"""Atomic, checksummed checkpoints and the random-number state that makes `--resume` exact.

A checkpoint is the zip archive `torch.save` writes, with one addition: the archive's comment
(the standard zip field after the end-of-central-directory record) holds
`gfnem-sha256:<hex>`, the SHA-256 of the archive as `torch.save` wrote it (comment empty). The
file stays an ordinary zip that `torch.load` (and `unzip`) read unchanged, so every tool and
test that opens a checkpoint directly keeps working; `load` checks the digest first, so damage
`torch.load` would not notice (a flipped byte inside tensor data) is a one-line error.
Checkpoints written before the checksum (no comment) still load, unchecked.

A checkpoint is written to a temporary file in the same folder, read back and checked, and
only then renamed over the old one, so an interruption at any moment leaves the previous
checkpoint or the new one, never a torn file. `save_atomic(..., keep_previous=P)` first keeps
the checkpoint being replaced (when it is intact) as P, `previous.pt` beside `last.pt`; on
`--resume`, `load_newest` falls back to it when last.pt is damaged or missing.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.files import temporary_name, write_atomic

FORMAT_VERSION = 1
PREVIOUS = "previous.pt"         # the checkpoint last.pt replaced, kept until the next save

_MAGIC = b"gfnem-sha256:"
_COMMENT_LEN = len(_MAGIC) + 64
_EOCD = b"PK\x05\x06"            # the zip end-of-central-directory record: 22 bytes + comment

# Checkpoint keys renamed to the engine's neutral words; runs written before the rename keep
# resuming, parsing and evaluating because `load` maps them, here and nowhere else.
RENAMED_METHOD_KEYS = {"grammar_optimizer": "model_optimizer"}
RENAMED_EM_KEYS = {"grammar_updates": "model_updates"}


class DamagedCheckpoint(GfnemError):
    """A checkpoint file that is unreadable, truncated or fails its checksum."""


def previous_of(path: Path) -> Path:
    return Path(path).with_name(PREVIOUS)


def with_checksum(archive: bytes) -> bytes:
    """`torch.save`'s archive with its SHA-256 in the zip comment (see the module docstring)."""
    if archive[-22:-18] != _EOCD or archive[-2:] != b"\0\0":
        raise AssertionError("torch.save did not end its archive with an empty zip comment")
    comment = _MAGIC + hashlib.sha256(archive).hexdigest().encode("ascii")
    return archive[:-2] + len(comment).to_bytes(2, "little") + comment


def check_bytes(data: bytes, path: Path) -> bool:
    """True when `data` carries a checksum and it matches, False for a checkpoint written
    before checksums; raises `DamagedCheckpoint` (no hint: `load` adds it) for a mismatch or
    a cut-off checksum."""
    tail = data[-(_COMMENT_LEN + 22):]
    if (len(tail) == _COMMENT_LEN + 22 and tail[:4] == _EOCD
            and tail[20:22] == _COMMENT_LEN.to_bytes(2, "little")
            and tail[22:22 + len(_MAGIC)] == _MAGIC):
        archive = data[:-(_COMMENT_LEN + 2)] + b"\0\0"
        if hashlib.sha256(archive).hexdigest().encode("ascii") != tail[22 + len(_MAGIC):]:
            raise DamagedCheckpoint("checkpoint is damaged: its contents do not match its "
                                    "checksum (changed on disk after it was written)", path)
        return True
    if _MAGIC in data[-4 * _COMMENT_LEN:]:
        raise DamagedCheckpoint("checkpoint is damaged: its checksum is cut short (a "
                                "truncated file)", path)
    return False


def save_atomic(state: dict[str, Any], path: Path, keep_previous: Path | None = None) -> None:
    """Serialize in memory, add the checksum, then write through `files.write_atomic`: the
    temporary file is read back and its checksum checked before it replaces `path`, and just
    before that the file at `path`, when intact, is kept as `keep_previous` (a hard link, or
    a copy where links are not supported). A full disk or a read-only output is a one-line
    error, and `path` and `keep_previous` stay as they were."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = with_checksum(buffer.getvalue())

    def verify_then_keep(temporary: str) -> None:
        if not check_bytes(Path(temporary).read_bytes(), path):
            raise DamagedCheckpoint("checkpoint read back without its checksum", path)
        if keep_previous is not None and path.is_file() and _intact(path):
            _keep(path, Path(keep_previous))

    try:
        write_atomic(path, lambda handle: handle.write(data), True, verify_then_keep)
    except DamagedCheckpoint as exc:
        raise DamagedCheckpoint(f"the new checkpoint read back damaged ({exc.message}); the "
                                "checkpoint before it is kept", path,
                                hint="check the disk, then resume the run") from None


def _keep(current: Path, previous: Path) -> None:
    """`previous` becomes the file at `current` in one rename, never a torn file. When it is
    that file already (a write killed after the last keep leaves the two names on one file),
    there is nothing to do: a rename between two links of one file would do nothing and
    leave the new link behind."""
    if previous.exists() and os.path.samefile(current, previous):
        return
    link = temporary_name(previous.parent, "." + previous.name + ".", ".tmp")
    try:
        try:
            os.link(current, link)
        except OSError:                  # no hard links here (FAT, some network mounts)
            with open(current, "rb") as source, open(link, "xb") as target:
                shutil.copyfileobj(source, target)
                target.flush()
                os.fsync(target.fileno())
        os.replace(link, previous)
        link = None
    finally:
        if link is not None and os.path.exists(link):
            os.unlink(link)


def _read(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint at `path`, checksum checked; `DamagedCheckpoint` without a hint."""
    if not path.exists():
        raise GfnemError("no checkpoint here", path, hint="train a model first with `gfnem train`")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedCheckpoint(f"cannot read checkpoint: {exc.strerror or exc}", path) from None
    check_bytes(data, path)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated, corrupted or foreign file
        raise DamagedCheckpoint(f"cannot read checkpoint ({type(exc).__name__}): the file is "
                                "damaged or not a checkpoint", path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise GfnemError("not a gfnem checkpoint of this version", path)
    missing = [key for key in ("step", "method", "config") if key not in state]
    if missing:
        raise DamagedCheckpoint(f"checkpoint lacks {', '.join(missing)}", path)
    return state


def _intact(path: Path) -> bool:
    """Whether `path` reads as a checkpoint: its checksum (one without one: torch.load)."""
    try:
        data = path.read_bytes()
        if check_bytes(data, path):
            return True
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        return True
    except Exception:
        return False


def _hint(path: Path) -> str:
    """What to do about a damaged checkpoint: the intact ones beside it, if any."""
    path = Path(path)
    intact = [p.name for p in (path.with_name("last.pt"), previous_of(path),
                               path.with_name("best.pt"))
              if p != path and p.is_file() and _intact(p)]
    if not intact:
        return "restore it from a copy, or start the run again"
    text = f"{', '.join(intact)} beside it {'is' if len(intact) == 1 else 'are'} intact"
    if path.name == "last.pt" and PREVIOUS in intact:
        text += f": `gfnem train --resume` continues from {PREVIOUS}"
    elif path.name == "best.pt" and "last.pt" in intact:
        text += ": use --checkpoint last"
    return text


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (`parse`, `evaluate`, `--resume`): a damaged one is a one-line
    `DamagedCheckpoint` whose hint names the intact checkpoints beside it."""
    path = Path(path)
    try:
        state = _read(path, map_location)
    except DamagedCheckpoint as exc:
        raise DamagedCheckpoint(exc.message, path, hint=exc.hint or _hint(path)) from None
    return upgrade(state)


def load_newest(last: Path, on_warning: Callable[[str], None] | None = None,
                map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """The newest intact checkpoint of a run, for `--resume`: `last`, or, when it is damaged
    or missing, `previous.pt` beside it, with a one-line warning (on stderr by default)."""
    last, previous = Path(last), previous_of(last)
    if not previous.is_file():
        try:
            return last, load(last, map_location)
        except DamagedCheckpoint as exc:
            raise DamagedCheckpoint(exc.message, last, hint="no intact checkpoint is left to "
                                    "resume from: restore it from a copy, or start the run "
                                    "again in a new --out") from None
    problem = "missing"
    if last.exists():
        try:
            return last, load(last, map_location)
        except DamagedCheckpoint as exc:
            problem = exc.message
    try:
        state = load(previous, map_location)
    except DamagedCheckpoint as exc:
        raise DamagedCheckpoint(f"{problem}, and {PREVIOUS} too ({exc.message})", last,
                                hint="restore one from a copy, or start the run again in a "
                                "new --out") from None
    (on_warning or warn_on_stderr)(f"{last}: {problem}; resuming from {PREVIOUS} (step "
                                   f"{state['step']}), the newest intact checkpoint")
    return previous, state


def warn_on_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def tensor_bytes(tree: Any) -> int:
    """Bytes of every tensor in a nested state (dicts, lists, tuples): a checkpoint's size,
    less the pickled rest."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_bytes(value) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_bytes(value) for value in tree)
    return 0


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint in the format written before the neutral names, read as today's: the
    method's `grammar_optimizer` is its `model_optimizer`, the EM state's `grammar_updates`
    its `model_updates`. A current checkpoint passes unchanged."""
    method = state.get("method")
    if isinstance(method, dict):
        for old, new in RENAMED_METHOD_KEYS.items():
            if old in method and new not in method:
                method[new] = method.pop(old)
        em = method.get("em")
        if isinstance(em, dict):
            for old, new in RENAMED_EM_KEYS.items():
                if old in em and new not in em:
                    em[new] = em.pop(old)
    return state


def capture_rng() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
