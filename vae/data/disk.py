"""A prepared image set on disk: written whole or not at all, read back whole or refused in one line.

Layout (the pattern of the grammar corpora): a `datasets.DatasetDict` saved with
`save_to_disk`, one row per image (`pixels`: the H·W bits as a fixed-size uint8 list, `label`:
the class or −1, and for sets drawn from a known model `codes`: the true code grid), plus
`manifest.json`, written last, listing every other file with its size and sha256. A truncated,
edited or deleted file is therefore named when the set is loaded, instead of surfacing as an
Arrow traceback or as silently different data.

Should move to the engine: the temp-sibling + swap-in writer and the checksummed loader are the
same for corpora and image sets (the grammar copy lives in grammars/corpus_disk.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.files import check_writable_dir, os_error

MANIFEST_FORMAT = 1
DAMAGED = "the image set is damaged: prepare it again with `gfnem prepare`"


def features(pixels: int, code_cells: int | None):
    """The columns of every split: the schema a loaded split must match exactly."""
    import datasets

    cols = {"pixels": datasets.Sequence(datasets.Value("uint8"), length=pixels),
            "label": datasets.Value("int16")}
    if code_cells:
        cols["codes"] = datasets.Sequence(datasets.Value("int16"), length=code_cells)
    return datasets.Features(cols)


def to_split(images: np.ndarray, labels: np.ndarray, codes: np.ndarray | None):
    """(N, H, W) uint8 images (+ labels, codes) as one `datasets.Dataset`, built from Arrow
    buffers directly (no Python loop over images)."""
    import datasets
    import pyarrow as pa

    n = images.shape[0]
    pixels = int(np.prod(images.shape[1:]))
    arrays = {"pixels": pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(images, dtype=np.uint8).reshape(-1)), pixels),
        "label": pa.array(labels.astype(np.int16))}
    cells = None
    if codes is not None:
        cells = int(np.prod(codes.shape[1:]))
        arrays["codes"] = pa.FixedSizeListArray.from_arrays(
            pa.array(codes.astype(np.int16).reshape(-1)), cells)
    table = pa.table(arrays)
    if table.num_rows != n:
        raise ValueError("column lengths disagree")
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features(pixels, cells)))


def fingerprint(splits: dict[str, dict[str, np.ndarray]]) -> str:
    """sha256 over every split's arrays (name, shape, C-order bytes), in split order."""
    digest = hashlib.sha256()
    for name, arrays in splits.items():
        for key in sorted(arrays):
            value = arrays[key]
            if value is None:
                continue
            value = np.ascontiguousarray(value)
            digest.update(f"{name}/{key}/{value.dtype.str}/{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def check_output_dir(out: Path) -> None:
    """Refuse, before any input is read, to replace anything but an empty directory or an
    earlier prepared set, or an output whose parent cannot be written."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir())
                                               or (out / "manifest.json").is_file())):
        raise GfnemError("exists and is not a prepared data set; refusing to overwrite it", out,
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
    out = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative != "manifest.json":
            out[relative] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def save_image_set(splits: dict[str, dict[str, np.ndarray]], manifest: dict, out: Path) -> Path:
    """Write `splits` ({name: {"images", "labels", "codes"?}}) and the manifest into a temporary
    sibling of `out`, then swap it in: a failure leaves the old set (or nothing)."""
    import datasets

    out = Path(out)
    check_output_dir(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    datasets.disable_progress_bars()
    manifest = dict(manifest, format=MANIFEST_FORMAT)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        parts = {name: to_split(a["images"], a["labels"], a.get("codes"))
                 for name, a in splits.items()}
        datasets.DatasetDict(parts).save_to_disk(str(tmp))
        manifest["files"] = file_checksums(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n",
                                           encoding="utf-8")
        _swap_in(tmp, out)
    except OSError as exc:
        raise os_error(exc, out) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
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


def read_manifest(path: Path) -> dict:
    """The manifest of a prepared set, its required entries checked; one line on damage."""
    path = Path(path)
    if path.is_file():
        raise GfnemError("is a file, not a prepared image set directory", path,
                         hint="give a directory written by `gfnem prepare`")
    target = path / "manifest.json"
    if not target.is_file():
        raise GfnemError("not a prepared image set (no manifest.json)", path,
                         hint="create it with `gfnem prepare shapes` or `gfnem prepare mnist`")
    try:
        manifest = json.loads(target.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise GfnemError(f"cannot read: {exc.strerror or exc}", target) from None
    except ValueError as exc:
        raise GfnemError(f"unreadable JSON: {first_line(exc)}", target, hint=DAMAGED) from None
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    shape = manifest.get("image_shape") if isinstance(manifest, dict) else None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    good = (isinstance(splits, dict) and bool(splits)
            and all(isinstance(s, dict) and type(s.get("images")) is int and s["images"] >= 0
                    for s in splits.values())
            and manifest.get("format") == MANIFEST_FORMAT
            and isinstance(manifest.get("kind"), str)
            and isinstance(manifest.get("fingerprint"), str)
            and isinstance(shape, list) and len(shape) == 2
            and all(type(v) is int and v > 0 for v in shape)
            and isinstance(files, dict)
            and all(isinstance(v, dict) and type(v.get("bytes")) is int
                    and isinstance(v.get("sha256"), str) for v in files.values()))
    if not good:
        raise GfnemError("damaged manifest: a required entry is missing or malformed", target,
                         hint=DAMAGED)
    for relative, expected in files.items():
        file = path / relative
        if not file.is_file():
            raise GfnemError("missing file of a prepared image set", file, hint=DAMAGED)
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise GfnemError(f"{size:,} bytes where the manifest says {expected['bytes']:,} "
                             "(truncated or changed)", file, hint=DAMAGED)
        if sha256_file(file) != expected["sha256"]:
            raise GfnemError("changed since the set was prepared (sha256 differs from the "
                             "manifest)", file, hint=DAMAGED)
    return manifest


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
