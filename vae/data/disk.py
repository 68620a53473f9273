"""A prepared image set on disk: written whole or not at all, read back whole or refused in one line.

Layout (the pattern of the grammar corpora): a `datasets.DatasetDict` saved with
`save_to_disk`, one row per image (`pixels`: the H·W bits as a fixed-size uint8 list, `label`:
the class or −1, and for sets drawn from a known model `codes`: the true code grid), plus
`manifest.json`, written last, listing every other file with its size and sha256. A truncated,
edited or deleted file is therefore named when the set is loaded, instead of surfacing as an
Arrow traceback or as silently different data.

Writing whole, swapping in and checking the file list are the engine's (`engine/prepared.py`),
shared with the grammar corpora.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from gfnem_cli.engine import prepared
from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.prepared import first_line

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
    """Refuse, before any input is read, an --out that is not empty, not an image set, or not
    writable (`engine.prepared`)."""
    prepared.check_output_dir(out, "image set")


def save_image_set(splits: dict[str, dict[str, np.ndarray]], manifest: dict, out: Path) -> Path:
    """Write `splits` ({name: {"images", "labels", "codes"?}}) and the manifest, whole, into a
    temporary sibling of `out` and swap it in (`engine.prepared`)."""
    import datasets

    def fill(tmp: Path) -> dict:
        datasets.disable_progress_bars()
        parts = {name: to_split(a["images"], a["labels"], a.get("codes"))
                 for name, a in splits.items()}
        datasets.DatasetDict(parts).save_to_disk(str(tmp))
        return dict(manifest, format=MANIFEST_FORMAT)

    return prepared.write_prepared(out, fill, "image set")


def read_manifest(path: Path) -> dict:
    """The manifest of a prepared set, its required entries checked; one line on damage."""
    target = prepared.manifest_of(Path(path), "image set",
                                  "`gfnem prepare shapes` or `gfnem prepare mnist`")
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
    prepared.check_files(path, files, "image set", DAMAGED)
    return manifest

