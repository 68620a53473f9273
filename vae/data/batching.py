"""Images to batches, in a deterministic shuffled order (the trainer's `BatchSchedule`).

The batches of epoch e are a function of (seed, e) alone, with the same seeding protocol as
the grammar family's `BucketedSchedule`, so a resumed run sees exactly the batches it would
have seen. Images all have one size, so there is no bucketing: a batch is a slice of a
permutation. The split's pixels stay one uint8 tensor; a batch is an index into it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gfnem_cli.engine.transfer import to_device


@dataclass
class ImageBatch:
    images: torch.Tensor     # (B, H, W) uint8 in {0, 1}
    index: torch.Tensor      # (B,) rows of the split, for aligning outputs

    def to(self, device) -> "ImageBatch":
        """On a GPU: pinned, then copied without waiting (see the grammar batch's `to`)."""
        return ImageBatch(to_device(self.images, device), self.index)

    def __len__(self) -> int:
        return self.images.shape[0]

    def rows(self, rows: list[int]) -> "ImageBatch":
        """These rows alone (a rank's shard of the batch)."""
        pick = torch.tensor(rows, dtype=torch.long)
        return ImageBatch(self.images[pick], self.index[pick])


def in_order_batches(images: torch.Tensor, batch_size: int) -> list[ImageBatch]:
    """Evaluation batches in the split's own order."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    rows = torch.arange(images.shape[0])
    return [ImageBatch(images[chunk], chunk) for chunk in rows.split(batch_size)]


class ImageSchedule:
    """Shuffled training batches of `batch_size` images; `drop_last` drops a short tail."""

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_batches(self, epoch: int) -> list[ImageBatch]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(self.images.shape[0], generator=generator)
        chunks = list(order.split(self.batch_size))
        if self.drop_last and chunks and chunks[-1].numel() < self.batch_size:
            chunks.pop()
        return [ImageBatch(self.images[chunk], chunk) for chunk in chunks]
