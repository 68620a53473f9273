"""Sentences to padded tensor batches, in a deterministic, length-bucketed order.

Batches of similar lengths waste little work on padding, and the order of epoch e is a pure
function of (seed, e) so that a resumed run sees exactly the batches it would have seen.
A length curriculum (Kim et al. 2019) admits sentences up to `start + e * increment` words
in epoch e.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gfnem_cli.engine.transfer import to_device


@dataclass
class SentenceBatch:
    ids: torch.Tensor        # (B, n) long, padded with 0
    lengths: torch.Tensor    # (B,) long
    index: torch.Tensor      # (B,) rows of the split, for aligning outputs
    host_lengths: torch.Tensor | None = None   # the lengths on the host, once `to` moved them

    def to(self, device) -> "SentenceBatch":
        """On a GPU: pinned, then copied without waiting (the step's first kernels queue
        behind the copy instead of the host waiting for it). The lengths stay on the host
        too: what a step sizes by them (the longest sentence, token counts, the sampler's
        rollouts) is read there, without waiting for the device."""
        return SentenceBatch(to_device(self.ids, device), to_device(self.lengths, device),
                             self.index, self.lengths_on_host)

    @property
    def lengths_on_host(self) -> torch.Tensor:
        return self.lengths if self.host_lengths is None else self.host_lengths

    def __len__(self) -> int:
        return self.lengths.shape[0]

    def rows(self, rows: list[int]) -> "SentenceBatch":
        """These rows alone, padded to their own longest (a rank's shard of the batch)."""
        pick = torch.tensor(rows, dtype=torch.long)
        lengths = self.lengths[pick]
        return SentenceBatch(self.ids[pick, : int(lengths.max())], lengths, self.index[pick])


def make_batch(sentences: list[list[int]], index: list[int]) -> SentenceBatch:
    lengths = torch.tensor([len(s) for s in sentences], dtype=torch.long)
    ids = torch.zeros(len(sentences), int(lengths.max()), dtype=torch.long)
    for row, sentence in enumerate(sentences):
        ids[row, : len(sentence)] = torch.tensor(sentence, dtype=torch.long)
    return SentenceBatch(ids, lengths, torch.tensor(index, dtype=torch.long))


def in_order_batches(sentences: list[list[int]], batch_size: int) -> list[SentenceBatch]:
    """Evaluation batches: sorted by length for speed; `index` restores the original order."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    return [make_batch([sentences[i] for i in chunk], chunk)
            for chunk in (order[k:k + batch_size] for k in range(0, len(order), batch_size))]


class BucketedSchedule:
    """Shuffled, length-bucketed training batches; the trainer's `BatchSchedule`."""

    def __init__(self, sentences: list[list[int]], batch_size: int, seed: int,
                 max_length: int = 0, curriculum_start: int = 0, curriculum_increment: int = 1,
                 bucket_batches: int = 50):
        self.sentences = sentences
        self.batch_size, self.seed, self.max_length = batch_size, seed, max_length
        self.curriculum_start, self.curriculum_increment = curriculum_start, curriculum_increment
        self.bucket_batches = bucket_batches

    def length_cap(self, epoch: int) -> int:
        caps = [c for c in (self.max_length,
                            self.curriculum_start + epoch * self.curriculum_increment
                            if self.curriculum_start > 0 else 0) if c > 0]
        return min(caps) if caps else 0

    def epoch_batches(self, epoch: int) -> list[SentenceBatch]:
        cap = self.length_cap(epoch)
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        pool = [i for i, s in enumerate(self.sentences)
                if len(s) >= 2 and (cap == 0 or len(s) <= cap)]
        pool = [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
        chunk = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, len(pool), chunk):
            bucket = sorted(pool[start:start + chunk], key=lambda i: len(self.sentences[i]))
            for k in range(0, len(bucket), self.batch_size):
                rows = bucket[k:k + self.batch_size]
                batches.append(make_batch([self.sentences[i] for i in rows], rows))
        order = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in order]
