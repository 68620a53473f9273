"""A batch of labeled binary trees as tensors: the latent z shared by every grammar component.

A binary tree over n words has n - 1 internal nodes. Each node is a span [start, end) (end
exclusive, 0-based word positions, width >= 2) with a nonterminal label. Rows are padded to
the longest sentence with -1. Node order within a row carries no meaning (a sampler may keep
its construction order). Leaves (width-1 spans) are implicit: preterminals are summed out of
every reward, and only Viterbi decoding names them (`preterminals`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from grammars.data.treebank import escape_word  # noqa: F401  (the escaping trees are written with)


@dataclass
class BinaryTrees:
    spans: torch.Tensor                       # (B, L-1, 2) long, -1 padded
    labels: torch.Tensor                      # (B, L-1) long, -1 padded
    lengths: torch.Tensor                     # (B,) long
    preterminals: torch.Tensor | None = None  # (B, L) long, -1 padded; Viterbi only

    def __len__(self) -> int:
        return self.lengths.shape[0]

    def span_lists(self) -> list[list[tuple[int, int]]]:
        """Per tree, its internal-node spans as (start, end) tuples (whole sentence included)."""
        spans = self.spans.tolist()
        out = []
        for row, n in zip(spans, self.lengths.tolist()):
            out.append([(i, j) for i, j in row[: max(n - 1, 0)]])
        return out

    def labeled_lists(self) -> list[list[tuple[int, int, int]]]:
        spans, labels = self.spans.tolist(), self.labels.tolist()
        return [[(i, j, a) for (i, j), a in zip(s[: max(n - 1, 0)], l[: max(n - 1, 0)])]
                for s, l, n in zip(spans, labels, self.lengths.tolist())]

    def to_brackets(self, words: list[list[str]]) -> list[str]:
        """One bracketed string per tree, e.g. `(NT-3 (T-5 the) (T dog))`, for EVALB and peers.

        Nonterminals are `NT-k`; preterminals `T-k` when decoded, else the bare label `T`.
        """
        pre = self.preterminals.tolist() if self.preterminals is not None else None
        out = []
        for b, nodes in enumerate(self.labeled_lists()):
            sent = words[b]
            label = {(i, j): a for i, j, a in nodes}

            def leaf(k: int) -> str:
                tag = "T" if pre is None or pre[b][k] < 0 else f"T-{pre[b][k]}"
                return f"({tag} {escape_word(sent[k])})"

            def build(i: int, j: int) -> str:
                if j - i == 1:
                    return leaf(i)
                # the split is the largest child span starting at i
                k = max(e for (s, e) in label if s == i and e < j) if any(
                    s == i and e < j for (s, e) in label) else i + 1
                return f"(NT-{label[(i, j)]} {build(i, k)} {build(k, j)})"

            n = len(sent)
            out.append(build(0, n) if n > 1 else leaf(0) if n == 1 else "()")
        return out
