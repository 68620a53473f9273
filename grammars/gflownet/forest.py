"""A batch of partial parse forests as tensors: the state of the tree GFlowNet (DESIGN.md §5).

A state is the sequence of current subtree roots of a sentence. Every row of the batch keeps a
table of *slots*: slots 0..L-1 are the words (leaves), slots L..2L-2 hold internal nodes in the
order they were built, and slot 2L-1 is a scratch slot that rows with nothing to do write to,
so every update is one unconditional scatter for the whole batch (no Python loop over rows).
`roots` lists the slots of the current roots left to right (-1 padded).

Forward action `merge(pos, label)`: roots pos and pos+1 become the children of a new node.
Backward action `split(pos)`: a root that is an internal node is replaced by its two children;
the node stays in the table marked dead until `compact()` renumbers the survivors, so that
node order is always a valid bottom-up construction order.
All methods are functional (return a new Forest) and take an `active` mask: rows whose
trajectory has ended (or has no step left) are left unchanged.

`widest`, the most roots any row has, is a host int that every action keeps exact, so a
rollout sizes its encoder calls and counts its steps without reading the device (a GPU
would wait for each such read). A merge steps every row at the widest (rollouts step every
unfinished row) and a split one row there at least (a walk back from terminal forests splits
the row with the most steps left at every step); the sampler's tests check widest against
num_roots along rollouts, walks and local search.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from gfnem_cli.engine.device_checks import expect
from grammars.binary_trees import BinaryTrees


def write_slots(table: torch.Tensor, slot: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """table[b, slot[b]] = value[b] for every row, out of place (keeps autograd history)."""
    index = slot.view(-1, 1)
    if table.dim() == 3:
        index = index.unsqueeze(-1).expand(-1, 1, table.shape[-1])
        return table.scatter(1, index, value.unsqueeze(1))
    return table.scatter(1, index, value.view(-1, 1))


def read_slots(table: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """table[b, slot[b, ...]] with -1 slots read as -1 (or zeros for embeddings)."""
    safe = slot.clamp(min=0)
    if table.dim() == 3:
        out = table.gather(1, safe.unsqueeze(-1).expand(*safe.shape, table.shape[-1]))
        return out * (slot >= 0).unsqueeze(-1).to(out.dtype)
    out = table.gather(1, safe)
    return torch.where(slot >= 0, out, torch.full_like(out, -1))


@dataclass
class Forest:
    lengths: torch.Tensor     # (M,) sentence lengths
    start: torch.Tensor       # (M, S) span start of each slot (-1 unused)
    end: torch.Tensor         # (M, S) span end, exclusive
    label: torch.Tensor       # (M, S) nonterminal of a node slot, -1 for words and unused slots
    left: torch.Tensor        # (M, S) slot of the left child, -1 for words
    right: torch.Tensor       # (M, S) slot of the right child
    dead: torch.Tensor        # (M, S) bool: node split away by a backward step
    roots: torch.Tensor       # (M, L) slots of the current roots, -1 padded
    num_roots: torch.Tensor   # (M,)
    num_nodes: torch.Tensor   # (M,) node slots allocated (L .. L+num_nodes-1)
    widest: int = 1           # host: num_roots.max() (1 for an empty batch)

    # ----------------------------------------------------------------------- construction
    @staticmethod
    def leaves(lengths: torch.Tensor, longest: int | None = None) -> "Forest":
        """The initial state: every word is its own root. `longest`: lengths.max(), when the
        caller knows it on the host (read from `lengths` otherwise)."""
        lengths = lengths.long()
        m = lengths.shape[0]
        if longest is None:
            longest = int(lengths.max()) if m else 1
        elif m:
            expect((lengths <= longest) & (lengths == longest).any(),
                   f"longest = {longest} is not the longest of the lengths")
        big_l = max(longest, 1)
        dev = lengths.device
        s = 2 * big_l
        pos = torch.arange(big_l, device=dev).expand(m, big_l)
        is_word = pos < lengths[:, None]
        start = torch.full((m, s), -1, dtype=torch.long, device=dev)
        start[:, :big_l] = torch.where(is_word, pos, -1)
        end = torch.full((m, s), -1, dtype=torch.long, device=dev)
        end[:, :big_l] = torch.where(is_word, pos + 1, -1)
        minus = torch.full((m, s), -1, dtype=torch.long, device=dev)
        return Forest(
            lengths=lengths, start=start, end=end, label=minus, left=minus.clone(),
            right=minus.clone(), dead=torch.zeros(m, s, dtype=torch.bool, device=dev),
            roots=torch.where(is_word, pos, -1), num_roots=lengths.clone(),
            num_nodes=torch.zeros_like(lengths), widest=big_l if m else 1)

    # ----------------------------------------------------------------------------- shape
    @property
    def max_len(self) -> int:
        return self.roots.shape[1]

    @property
    def scratch(self) -> int:
        return self.start.shape[1] - 1

    # ----------------------------------------------------------------------- root views
    def root_start(self) -> torch.Tensor:
        return read_slots(self.start, self.roots)

    def root_end(self) -> torch.Tensor:
        return read_slots(self.end, self.roots)

    def root_label(self) -> torch.Tensor:
        return read_slots(self.label, self.roots)

    def root_mask(self) -> torch.Tensor:
        """(M, L) True where a root exists."""
        return torch.arange(self.max_len, device=self.roots.device) < self.num_roots[:, None]

    def merge_mask(self) -> torch.Tensor:
        """(M, L-1) True at positions i where roots i and i+1 can merge."""
        i = torch.arange(max(self.max_len - 1, 0), device=self.roots.device)
        return i < (self.num_roots[:, None] - 1)

    def split_mask(self) -> torch.Tensor:
        """(M, L) True at roots that are internal nodes (a backward step may split them)."""
        return self.root_mask() & (self.roots >= self.max_len)

    def locate(self, start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The merge position that builds node [start, end): (pos, ok) per row.

        ok is False where no two adjacent roots span exactly [start, end), i.e. the node's
        children are not both roots yet (an order that is not bottom-up) or the node is bogus.
        """
        r = self.max_len
        rstart, rend = self.root_start(), self.root_end()
        hit = (rstart == start[:, None]) & self.root_mask()
        pos = hit.long().argmax(1)
        nxt = rend.gather(1, (pos + 1).clamp(max=r - 1)[:, None]).squeeze(1)
        ok = hit.any(1) & (pos < self.num_roots - 1) & (nxt == end)
        return pos.clamp(max=max(r - 2, 0)), ok

    def num_splittable(self) -> torch.Tensor:
        return self.split_mask().sum(1)

    def done(self) -> torch.Tensor:
        """(M,) True once one root is left."""
        return self.num_roots <= 1

    # -------------------------------------------------------------------------- actions
    def next_slot(self, active: torch.Tensor) -> torch.Tensor:
        """(M,) the slot the next merge writes: a fresh node slot, or scratch where inactive."""
        return torch.where(active, self.max_len + self.num_nodes,
                           torch.full_like(self.num_nodes, self.scratch))

    def merge(self, pos: torch.Tensor, label: torch.Tensor, active: torch.Tensor) -> "Forest":
        """Forward step: merge roots pos and pos+1 under `label` in the rows where `active`
        (which holds every row with `widest` roots, unless that is one)."""
        big_l = self.max_len
        dev = self.roots.device
        pos = torch.where(active, pos, 0)
        lslot = self.roots.gather(1, pos[:, None]).squeeze(1)
        rslot = self.roots.gather(1, (pos + 1).clamp(max=big_l - 1)[:, None]).squeeze(1)
        new = self.next_slot(active)
        f = replace(
            self,
            start=write_slots(self.start, new, read_slots(self.start, lslot[:, None]).squeeze(1)),
            end=write_slots(self.end, new, read_slots(self.end, rslot[:, None]).squeeze(1)),
            label=write_slots(self.label, new, label),
            left=write_slots(self.left, new, lslot),
            right=write_slots(self.right, new, rslot),
        )
        j = torch.arange(big_l, device=dev)[None, :]
        src = (j + (j > pos[:, None]).long()).clamp(max=big_l - 1)
        roots = self.roots.gather(1, src)
        roots = torch.where(j == pos[:, None], new[:, None], roots)
        roots = torch.where(j >= (self.num_roots - 1)[:, None], -1, roots)
        f.roots = torch.where(active[:, None], roots, self.roots)
        step = active.long()
        f.num_roots = self.num_roots - step
        f.num_nodes = self.num_nodes + step
        f.widest = max(self.widest - 1, 1)
        return f

    def split(self, pos: torch.Tensor, active: torch.Tensor) -> "Forest":
        """Backward step: replace root `pos` (an internal node) by its two children in the
        rows where `active` (one row with `widest` roots at least)."""
        big_l = self.max_len
        dev = self.roots.device
        pos = torch.where(active, pos, 0)
        slot = self.roots.gather(1, pos[:, None]).squeeze(1)
        lslot = read_slots(self.left, slot[:, None]).squeeze(1)
        rslot = read_slots(self.right, slot[:, None]).squeeze(1)
        j = torch.arange(big_l, device=dev)[None, :]
        src = (j - (j > pos[:, None] + 1).long()).clamp(min=0)
        roots = self.roots.gather(1, src)
        roots = torch.where(j == pos[:, None], lslot[:, None], roots)
        roots = torch.where(j == pos[:, None] + 1, rslot[:, None], roots)
        roots = torch.where(j > self.num_roots[:, None], -1, roots)
        dead_slot = torch.where(active, slot, torch.full_like(slot, self.scratch))
        f = replace(self, dead=write_slots(self.dead, dead_slot, torch.ones_like(active)))
        f.roots = torch.where(active[:, None], roots, self.roots)
        f.num_roots = self.num_roots + active.long()
        f.widest = self.widest + 1
        return f

    # ---------------------------------------------------------------------- bookkeeping
    def compact(self) -> tuple["Forest", torch.Tensor]:
        """Drop dead nodes, renumbering the survivors in their old (bottom-up) order.

        Returns the new forest and `source` (M, S): the old slot each new slot copies
        (-1 for empty), so per-slot tensors such as embeddings can follow with `read_slots`.
        """
        big_l = self.max_len
        m, s = self.start.shape
        dev = self.roots.device
        k = torch.arange(big_l - 1, device=dev)[None, :]
        node_dead = self.dead[:, big_l:big_l + big_l - 1]
        alive = (k < self.num_nodes[:, None]) & ~node_dead
        rank = alive.long().cumsum(1) - 1
        order = torch.sort((~alive).long(), dim=1, stable=True).indices   # alive first, old order
        num_alive = alive.sum(1)
        # old slot -> new slot
        old_to_new = torch.arange(s, device=dev).expand(m, s).clone()
        old_to_new[:, big_l:big_l + big_l - 1] = torch.where(alive, big_l + rank, -1)
        old_to_new[:, s - 1] = -1
        # new slot -> old slot
        source = torch.arange(s, device=dev).expand(m, s).clone()
        source[:, big_l:big_l + big_l - 1] = torch.where(k < num_alive[:, None], big_l + order, -1)
        source[:, s - 1] = -1

        def remap(slots: torch.Tensor) -> torch.Tensor:
            return read_slots(old_to_new, slots)

        f = Forest(
            lengths=self.lengths,
            start=read_slots(self.start, source), end=read_slots(self.end, source),
            label=read_slots(self.label, source),
            left=remap(read_slots(self.left, source)), right=remap(read_slots(self.right, source)),
            dead=torch.zeros_like(self.dead), roots=remap(self.roots),
            num_roots=self.num_roots, num_nodes=num_alive, widest=self.widest)
        return f, source

    def trees(self) -> BinaryTrees:
        """The nodes built so far as BinaryTrees (construction order; call on compact forests)."""
        big_l = self.max_len
        k = torch.arange(big_l - 1, device=self.roots.device)[None, :]
        keep = k < self.num_nodes[:, None]
        nodes = slice(big_l, 2 * big_l - 1)
        start = torch.where(keep, self.start[:, nodes], -1)
        end = torch.where(keep, self.end[:, nodes], -1)
        labels = torch.where(keep, self.label[:, nodes], -1)
        return BinaryTrees(spans=torch.stack([start, end], -1), labels=labels,
                           lengths=self.lengths.clone())
