"""MNIST as binary images: the threshold protocol (raw IDX files) and static binarized MNIST.

- `threshold` (the GFlowNet-EM paper's code, Hu et al. 2023): the four gzipped IDX files of
  LeCun et al., pixel = grey/255 > 0.5; 60k train / 10k test, with a declared validation
  hold-out of `valid_size` training images drawn by a fixed, recorded seed (`valid_size=0`
  keeps the paper's 60k training images and an empty validation split).
- `static` (Larochelle & Murray 2011): `binarized_mnist_uint8.npz`, 50k/10k/10k, each array's
  content sha256 checked against the published values. Its test array is sorted by digit.

Every defect of the input (missing file, truncated or corrupt gzip/npz, a wrong IDX magic
number, sizes that do not match the bytes, images and labels of different counts, a checksum
mismatch) is a one-line `GfnemError` naming the file, raised before anything is written.
"""
from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.prepared import first_line, sha256_file
from vae.data.disk import check_output_dir, fingerprint, save_image_set

IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# sha256 of the standard gzipped image files (../shared/data/README.md); a mismatch is only a
# note, since a recompressed copy of the same images is just as good.
IDX_SHA256 = {
    "train-images-idx3-ubyte.gz": "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    "t10k-images-idx3-ubyte.gz": "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
}
STATIC_FILE = "binarized_mnist_uint8.npz"
# sha256 of each array's C-order bytes (../shared/data/README.md): these must match.
STATIC_SHA256 = {
    "train": "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
    "valid": "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
    "test": "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
}
STATIC_SIZES = {"train": 50000, "valid": 10000, "test": 10000}
PROTOCOLS = ("threshold", "static")
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
DEFAULT_VALID_SIZE, DEFAULT_VALID_SEED = 5000, 0


# ============================================================================ IDX
def read_gzip(path: Path) -> bytes:
    if not path.is_file():
        raise GfnemError("missing file" if not path.exists() else "is not a file", path,
                         hint="give the folder holding the four MNIST .gz files")
    try:
        return gzip.decompress(path.read_bytes())
    except EOFError:
        raise GfnemError("truncated gzip file (the stream ends early)", path,
                         hint="download the file again") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise GfnemError(f"corrupt gzip file: {first_line(exc)}", path,
                         hint="download the file again") from None


def parse_idx(data: bytes, path: Path, magic: int) -> np.ndarray:
    """An IDX array of unsigned bytes (dtype code 0x08), its header checked against its size."""
    kind = "image" if magic == IMAGE_MAGIC else "label"
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise GfnemError(f"{len(data)} bytes: too short for an IDX header", path)
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise GfnemError(f"wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
                         f"(an MNIST {kind} file)", path, hint="is this the right file?")
    if len(data) < header:
        raise GfnemError(f"{len(data)} bytes: too short for an IDX header of {ndim} sizes", path)
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise GfnemError(f"inconsistent sizes: the header says {' x '.join(map(str, dims))} "
                         f"= {expected:,} bytes but the file holds {len(data) - header:,}", path,
                         hint="the file is truncated or damaged; download it again")
    return np.frombuffer(data, np.uint8, expected, header).reshape(dims)


def read_idx_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_name, label_name = IDX_FILES[split]
    images = parse_idx(read_gzip(folder / image_name), folder / image_name, IMAGE_MAGIC)
    labels = parse_idx(read_gzip(folder / label_name), folder / label_name, LABEL_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise GfnemError(f"{labels.shape[0]:,} labels but {image_name} has "
                         f"{images.shape[0]:,} images", folder / label_name,
                         hint="the image and label files do not belong together")
    if labels.size and int(labels.max()) > 9:
        raise GfnemError(f"label {int(labels.max())} is not a digit 0-9", folder / label_name)
    return images, labels


def read_threshold(folder: Path, valid_size: int = DEFAULT_VALID_SIZE,
                   valid_seed: int = DEFAULT_VALID_SEED) -> tuple[dict, dict]:
    """(splits, manifest) of the threshold protocol; nothing is written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GfnemError("not a folder" if folder.exists() else "missing folder", folder,
                         hint="give the folder holding the four MNIST .gz files")
    train_x, train_y = read_idx_pair(folder, "train")
    test_x, test_y = read_idx_pair(folder, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise GfnemError(f"test images are {test_x.shape[1:]} but training images are "
                         f"{train_x.shape[1:]}", folder / IDX_FILES["test"][0])
    if not 0 <= valid_size < train_x.shape[0]:
        raise GfnemError(f"--valid-size {valid_size} must lie in 0..{train_x.shape[0] - 1}",
                         hint="0 keeps every training image, as the paper does")
    order = np.random.default_rng(valid_seed).permutation(train_x.shape[0])
    valid_rows, train_rows = np.sort(order[:valid_size]), np.sort(order[valid_size:])
    binary = {n: (x > 127).astype(np.uint8) for n, x in (("train", train_x), ("test", test_x))}
    splits = {
        "train": {"images": binary["train"][train_rows], "labels": train_y[train_rows]},
        "valid": {"images": binary["train"][valid_rows], "labels": train_y[valid_rows]},
        "test": {"images": binary["test"], "labels": test_y},
    }
    sources = {name: sha256_file(folder / name) for pair in IDX_FILES.values() for name in pair}
    notes = [f"{name} differs from the standard file (sha256 {digest[:12]}...)"
             for name, digest in sources.items()
             if name in IDX_SHA256 and IDX_SHA256[name] != digest]
    manifest = _manifest("threshold", splits, {
        "threshold": "grey/255 > 0.5", "valid_size": valid_size, "valid_seed": valid_seed,
        "valid_from": "train (rows drawn by numpy default_rng(valid_seed).permutation)"},
        sources, notes)
    return splits, manifest


# ============================================================================ static
def read_static(path: Path) -> tuple[dict, dict]:
    """(splits, manifest) of static binarized MNIST, every array's sha256 checked."""
    path = Path(path)
    if path.is_dir():
        path = path / STATIC_FILE
    if not path.is_file():
        raise GfnemError("missing file" if not path.exists() else "is not a file", path,
                         hint=f"give {STATIC_FILE} or the folder holding it")
    splits = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name, rows in STATIC_SIZES.items():
                if name not in archive.files:
                    raise GfnemError(f"no array {name!r} (arrays: {', '.join(archive.files)})",
                                     path, hint="this is not binarized_mnist_uint8.npz")
                array = archive[name]
                if array.dtype != np.uint8 or array.shape != (rows, 784):
                    raise GfnemError(f"array {name!r} is {array.dtype} {array.shape}, expected "
                                     f"uint8 ({rows}, 784)", path)
                splits[name] = np.ascontiguousarray(array)
    except GfnemError:
        raise
    except Exception as exc:   # zipfile / zlib / numpy on a damaged archive: many types
        raise GfnemError(f"corrupt or truncated npz archive: {first_line(exc)}", path,
                         hint="download the file again") from None
    for name, array in splits.items():
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        if digest != STATIC_SHA256[name]:
            raise GfnemError(f"checksum mismatch for array {name!r}: sha256 {digest[:16]}... "
                             f"is not the published {STATIC_SHA256[name][:16]}...", path,
                             hint="the file is damaged or not the standard static binarization")
        if int(array.max()) > 1:
            raise GfnemError(f"array {name!r} holds values other than 0 and 1", path)
    out = {name: {"images": array.reshape(-1, 28, 28),
                  "labels": np.full(array.shape[0], -1, np.int16)}
           for name, array in splits.items()}
    manifest = _manifest("static", out, {}, {path.name: sha256_file(path)},
                         ["the test split is sorted by digit: shuffle before taking a subset"])
    return out, manifest


# ============================================================================ entry point
def prepare_mnist(path: Path, out: Path, protocol: str = "threshold",
                  valid_size: int = DEFAULT_VALID_SIZE,
                  valid_seed: int = DEFAULT_VALID_SEED) -> dict:
    """Read, check and save; returns the manifest. The output is checked before any input is
    read and written only once everything has been read."""
    if protocol not in PROTOCOLS:
        raise GfnemError(f"unknown protocol {protocol!r}", hint="valid: " + ", ".join(PROTOCOLS))
    check_output_dir(Path(out))
    if protocol == "threshold":
        splits, manifest = read_threshold(Path(path), valid_size, valid_seed)
    else:
        splits, manifest = read_static(Path(path))
    save_image_set(splits, manifest, Path(out))
    return manifest


def _manifest(protocol: str, splits: dict, options: dict, sources: dict, notes: list) -> dict:
    shape = list(next(iter(splits.values()))["images"].shape[1:])
    return {"kind": "mnist", "protocol": protocol, "options": options,
            "image_shape": [int(v) for v in shape],
            "splits": {name: {"images": int(s["images"].shape[0])} for name, s in splits.items()},
            "sources": sources, "notes": notes, "fingerprint": fingerprint(splits)}
