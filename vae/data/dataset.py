"""A prepared image set read back from disk (`load_image_set`), with its splits as tensors.

Every file is checked against the manifest before `datasets` opens anything, and each split
against the manifest's counts, image shape and the binary pixel range, so a damaged set is
one line naming the file, never an Arrow traceback (the contract `load_corpus` keeps for
grammars).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine import prepared
from vae.data.disk import DAMAGED, features, read_manifest


@dataclass
class ImageSet:
    """`sizes`: images per split, empty ones included; tensors are built once per split."""

    path: Path
    manifest: dict
    sizes: dict[str, int]
    data: dict                                   # non-empty split -> datasets.Dataset
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.manifest["image_shape"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def describe_splits(self) -> str:
        return ", ".join(f"{name} {count:,}" for name, count in self.sizes.items())

    def split(self, name: str):
        """The named non-empty split, or a one-line error listing every split and its size."""
        if name not in self.sizes:
            raise GfnemError(f"no split {name!r} (splits: {self.describe_splits()})", self.path,
                             hint="name one of the non-empty splits")
        if self.sizes[name] == 0:
            raise GfnemError(f"split {name!r} is empty (splits: {self.describe_splits()})",
                             self.path, hint="name a non-empty split, or prepare the set again "
                                             "with a validation hold-out")
        return self.data[name]

    def images(self, name: str) -> torch.Tensor:
        """(N, H, W) uint8 in {0, 1}."""
        return self._column(name, "pixels", (-1, *self.image_shape), torch.uint8)

    def labels(self, name: str) -> torch.Tensor:
        """(N,) class labels, −1 where the set has none."""
        return self._column(name, "label", (-1,), torch.long)

    def codes(self, name: str) -> torch.Tensor | None:
        """(N, h, w) true code grids of a set drawn from a known model (shapes), else None."""
        grid = self.manifest.get("model", {}).get("grid")
        if grid is None:
            return None
        return self._column(name, "codes", (-1, *grid), torch.long)

    def true_nll(self, name: str, first: int = 0) -> tuple[float, float] | None:
        """(mean, standard error) of the exact −log p(x) in nats per image under the
        generating model, where it is known: the stored split figure, or for the split's
        `first` images only (a partial evaluation) recomputed by the generating model."""
        value = self.manifest.get("true_nll", {}).get(name)
        if value is None:
            return None
        if first and first < self.sizes[name]:
            from vae.data.shapes import ShapesModel

            nll = -ShapesModel.from_options(self.manifest["model"]).log_marginal(
                self.images(name)[:first])
            return float(nll.mean()), float(nll.std() / len(nll) ** 0.5) if len(nll) > 1 else 0.0
        return float(value), float(self.manifest.get("true_nll_stderr", {}).get(name, 0.0))

    def _column(self, split: str, column: str, shape, dtype) -> torch.Tensor:
        key = (split, column)
        if key not in self._cache:
            array = self.split(split).data.table.column(column).combine_chunks()
            if hasattr(array, "flatten"):
                array = array.flatten()
            values = array.to_numpy(zero_copy_only=False)
            self._cache[key] = torch.from_numpy(np.array(values).reshape(shape)).to(dtype)
        return self._cache[key]


def load_image_set(path: Path) -> ImageSet:
    """Read a prepared image set, checking every file first; damage is one line."""
    import datasets

    path = Path(path)
    manifest = read_manifest(path)
    sizes = {name: stats["images"] for name, stats in manifest["splits"].items()}
    listing = path / "dataset_dict.json"
    try:
        listed = json.loads(listing.read_text(encoding="utf-8")).get("splits")
    except (OSError, ValueError, AttributeError) as exc:
        raise GfnemError(f"unreadable split list: {prepared.first_line(exc)}", listing,
                         hint=DAMAGED) from None
    if not isinstance(listed, list) or set(map(str, listed)) != set(sizes):
        raise GfnemError(f"lists splits {listed!r} but the manifest has {sorted(sizes)}",
                         listing, hint=DAMAGED)
    grid = manifest.get("model", {}).get("grid")
    cells = int(np.prod(grid)) if grid else None
    expected = features(int(np.prod(manifest["image_shape"])), cells)
    datasets.disable_progress_bars()
    data = {name: _load_split(path / name, count, expected, manifest)   # empty: no arrow file
            for name, count in sizes.items() if count > 0}
    return ImageSet(path, manifest, sizes, data)


def _load_split(folder: Path, count: int, expected, manifest: dict):
    import pyarrow.compute as pc

    def values_problem(table) -> str | None:
        if not count:
            return None
        if pc.max(pc.list_flatten(table.column("pixels"))).as_py() > 1:
            return "pixels other than 0 and 1"
        if "codes" in table.column_names:
            codes = pc.list_flatten(table.column("codes"))
            k = manifest["model"]["num_codes"]
            if pc.min(codes).as_py() < 0 or pc.max(codes).as_py() >= k:
                return f"codes outside 0..{k - 1}"
        return None

    return prepared.load_split(folder, expected, count, "image set", "images", DAMAGED,
                               values_problem)
