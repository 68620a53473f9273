"""MC-EM for grammars: Metropolis–Hastings over labeled binary trees (the baseline of
Hu et al. 2023, §5.2), with persistent chains per training sentence.

The target of every chain is the posterior p_θ(z | x) ∝ p_θ(x, z) of its sentence x, scored by
`model.log_joint` (preterminals summed out), so the same kernel serves the neural PCFG and the
non-context-free grammar. One MH step, for every row of a batch at once (the only Python loop
is over MH steps, never over sentences), proposes from the current tree x one of two moves:

* **rotation** (probability `rotation_prob`): pick an internal node v uniformly among the n−1
  internal nodes and a direction uniformly. A *right* rotation at v = ((a1 a2) b) gives
  (a1 (a2 b)); a *left* rotation at v = (a (b1 b2)) gives ((a b1) b2). v keeps its span and
  label; the one node whose span changes (the rotated child) keeps its label. If the required
  child is a word, the proposal is x itself (a self-loop, counted as a rejection).
* **relabelling** (probability 1 − rotation_prob): pick an internal node uniformly and give it
  one of the other NT − 1 labels uniformly (with NT = 1, the proposal is x itself).

Proposal probabilities, exactly: q(x → x') = rotation_prob · 1/(n−1) · 1/2 for a rotation and
(1 − rotation_prob) · 1/(n−1) · 1/(NT−1) for a relabelling. Both are symmetric: every tree over
n words has n−1 internal nodes; a right rotation at v is undone by the left rotation at the same
node v (whose span is unchanged), and a relabelling by relabelling the node back; two different
(node, direction) choices never lead to the same tree (each rotation replaces a different span).
Hence q(x' → x) = q(x → x') and the acceptance probability is min(1, p_θ(x, z') / p_θ(x, z)).
Each move type satisfies detailed balance, so their mixture does; rotations connect all tree
shapes and relabellings all labelings, and rejections make the chain aperiodic, so p_θ(z | x)
is its unique stationary distribution.

Chains are initialised right-branching with uniformly random labels and kept per training
sentence (keyed by its index in the split) in `ChainStore`, which the method checkpoints so
that `--resume` continues every chain exactly.

Under torchrun each rank advances the chains of its shard of the batch and then all-gathers
the batch's updated chains (`distributed.gather_rows`, global row order), so every rank keeps
the whole store: the ranks' method states stay identical and a checkpoint resumes under any
world size. With `train.row_noise` every draw of a chain (fresh labels, node, move, direction,
new label, acceptance uniform) is keyed by the sentence's row in the global batch
(`row_noise.py`), so K ranks move every chain as one process does.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gfnem_cli.engine import distributed, row_noise
from grammars.binary_trees import BinaryTrees

FRESH_LABELS = 1      # the row-noise tag of a new chain's labels (the MH steps use the call's own)


@contextmanager
def frozen_tables(model):
    """Score trees with the grammar's probability tables computed once, not once per call.

    The grammar models compute every log-probability they score from `model.tables()`
    (roots, rules, emissions); while θ is fixed (an MH chain, local search) those tables are
    the same at every call, and for the non-context-free grammar computing them costs ~8x
    an MH step's scoring. Inside the block, `model.tables` returns the tables computed on entry
    (without gradient); on exit the model's own method is back. A model without `tables` is
    left alone.
    """
    if not hasattr(model, "tables") or "tables" in vars(model):
        yield model
        return
    with torch.no_grad():
        tables = model.tables()
    model.tables = lambda: tables
    try:
        yield model
    finally:
        del model.tables


def right_branching_trees(lengths: torch.Tensor, num_nonterminals: int, max_nodes: int | None = None,
                    generator: torch.Generator | None = None,
                    uniforms: torch.Tensor | None = None) -> BinaryTrees:
    """Right-branching trees (node k spans [k, n)) with labels drawn uniformly at random;
    `uniforms` (B, max_nodes) in [0, 1) replaces the draws (node k's label from column k)."""
    lengths = lengths.long()
    B = lengths.shape[0]
    device = lengths.device
    M = max_nodes if max_nodes is not None else max(int(lengths.max()) - 1, 0) if B else 0
    k = torch.arange(M, device=device).expand(B, M)
    valid = k < (lengths - 1)[:, None]
    spans = torch.stack([k, lengths[:, None].expand(B, M)], -1)
    spans = torch.where(valid[..., None], spans, torch.full_like(spans, -1))
    if uniforms is not None:
        labels = (uniforms.to(device) * num_nonterminals).long().clamp(max=num_nonterminals - 1)
    else:
        labels = torch.randint(num_nonterminals, (B, M), device=device, generator=generator)
    labels = torch.where(valid, labels, torch.full_like(labels, -1))
    return BinaryTrees(spans=spans, labels=labels, lengths=lengths)


@dataclass
class MHStats:
    proposed: int = 0              # MH steps taken by rows with at least one internal node
    accepted: int = 0
    rotations_proposed: int = 0
    rotations_accepted: int = 0
    relabels_proposed: int = 0
    relabels_accepted: int = 0

    def as_dict(self, prefix: str = "mh_") -> dict[str, float]:
        def rate(a, p):
            return a / p if p else 0.0
        return {f"{prefix}acceptance": rate(self.accepted, self.proposed),
                f"{prefix}rotation_acceptance": rate(self.rotations_accepted,
                                                     self.rotations_proposed),
                f"{prefix}relabel_acceptance": rate(self.relabels_accepted,
                                                    self.relabels_proposed)}


def propose(trees: BinaryTrees, num_nonterminals: int, rotation_prob: float,
            generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None):
    """One proposal per row. Returns (proposed trees, is_rotation (B,), changed (B,)).

    Rows are expected to hold their n−1 internal nodes in the first n−1 columns (as
    `right_branching_trees` and this function keep them). `uniforms` (B, 4) in [0, 1) replaces the
    random draws (node, move type, direction, new label), e.g. to enumerate every proposal.
    """
    spans, labels, lengths = trees.spans, trees.labels, trees.lengths
    B, M = labels.shape
    device = labels.device
    nodes = (lengths - 1).clamp(min=0)
    if M == 0:
        none = torch.zeros(B, dtype=torch.bool, device=device)
        return trees, none, none
    u = uniforms if uniforms is not None else torch.rand(B, 4, device=device,
                                                           generator=generator)
    v = (u[:, 0] * nodes).long().clamp(max=M - 1).clamp(min=0)
    is_rot = u[:, 1] < rotation_prob
    go_right = u[:, 2] < 0.5
    start, end = spans[..., 0], spans[..., 1]
    present = labels >= 0
    vs = start.gather(1, v[:, None]).squeeze(1)
    ve = end.gather(1, v[:, None]).squeeze(1)

    def widest(mask):
        """(index of the widest masked node, any) per row; widest = largest end here."""
        score = torch.where(mask, end, torch.full_like(end, -1))
        return score.argmax(1), mask.any(1), score.amax(1)

    # children of v: left a = [vs, kv) if a node, right b = [kv, ve) if a node
    a_idx, a_exists, a_end = widest(present & (start == vs[:, None]) & (end < ve[:, None]))
    kv = torch.where(a_exists, a_end, vs + 1)
    b_mask = present & (start == kv[:, None]) & (end == ve[:, None])
    b_idx, b_exists = b_mask.float().argmax(1), b_mask.any(1)
    # split points of a (a1 = [vs, ka)) and of b (b1 = [kv, kb))
    _, a_split_node, a_left_end = widest(present & (start == vs[:, None]) & (end < kv[:, None]))
    ka = torch.where(a_split_node, a_left_end, vs + 1)
    _, b_split_node, b_left_end = widest(present & (start == kv[:, None]) & (end < ve[:, None]))
    kb = torch.where(b_split_node, b_left_end, kv + 1)

    rotate = is_rot & torch.where(go_right, a_exists, b_exists) & (nodes >= 1)
    target = torch.where(go_right, a_idx, b_idx)
    new_start = torch.where(go_right, ka, vs)
    new_end = torch.where(go_right, ve, kb)
    rows = torch.arange(B, device=device)
    new_spans = spans.clone()
    old_pair = new_spans[rows, target]
    new_pair = torch.stack([new_start, new_end], -1)
    new_spans[rows, target] = torch.where(rotate[:, None], new_pair, old_pair)

    relabel = ~is_rot & (nodes >= 1) & (num_nonterminals > 1)
    new_labels = labels.clone()
    if num_nonterminals > 1:
        shift = 1 + (u[:, 3] * (num_nonterminals - 1)).long().clamp(max=num_nonterminals - 2)
        old = labels[rows, v]
        new_labels[rows, v] = torch.where(relabel, (old + shift) % num_nonterminals, old)
    changed = rotate | relabel
    return (BinaryTrees(spans=new_spans, labels=new_labels, lengths=lengths), is_rot & (nodes >= 1),
            changed)


@torch.no_grad()
def mh_chain(score, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees, steps: int,
             num_nonterminals: int, rotation_prob: float = 0.5,
             log_p: torch.Tensor | None = None, generator: torch.Generator | None = None,
             stats: MHStats | None = None, noise: row_noise.RowNoise | None = None
             ) -> tuple[BinaryTrees, torch.Tensor, MHStats]:
    """Run `steps` MH steps on every row; `score(ids, lengths, trees) -> (B,)` log p(x, z).

    `noise` (a training step's row noise) replaces `generator`: step s of a row reads its
    draws 5s ... 5s+4 (the proposal's four, then the acceptance uniform), whatever the batch.
    Returns (trees, their log p(x, z), acceptance statistics).
    """
    stats = stats if stats is not None else MHStats()
    if log_p is None:
        log_p = score(ids, lengths, trees)
    active = lengths >= 2
    # counts stay on the device during the chain: one host sync at the end, not six per step
    counts = torch.zeros(6, dtype=torch.long, device=log_p.device)
    for step in range(steps):
        drawn = None if noise is None else noise.uniform(step, 5)
        proposal, is_rot, changed = propose(trees, num_nonterminals, rotation_prob, generator,
                                            None if drawn is None else drawn[:, :4])
        new_log_p = score(ids, lengths, proposal)
        u = (torch.rand(log_p.shape, device=log_p.device, generator=generator)
             if drawn is None else drawn[:, 4])
        accept = changed & active & (torch.log(u) < new_log_p - log_p)
        trees = BinaryTrees(
            spans=torch.where(accept[:, None, None], proposal.spans, trees.spans),
            labels=torch.where(accept[:, None], proposal.labels, trees.labels),
            lengths=trees.lengths)
        log_p = torch.where(accept, new_log_p, log_p)
        counts += torch.stack([active.sum(), accept.sum(), (is_rot & active).sum(),
                               (accept & is_rot).sum(), (~is_rot & active).sum(),
                               (accept & ~is_rot).sum()])
    (proposed, accepted, rot_proposed, rot_accepted, rel_proposed,
     rel_accepted) = counts.tolist()
    stats.proposed += proposed
    stats.accepted += accepted
    stats.rotations_proposed += rot_proposed
    stats.rotations_accepted += rot_accepted
    stats.relabels_proposed += rel_proposed
    stats.relabels_accepted += rel_accepted
    return trees, log_p, stats


class ChainStore:
    """The current tree of each training sentence's chain, indexed by the sentence's row.

    One dense CPU table (sentences, nodes, 3) of (start, end, label), -1 padded, grown on
    demand, with a `known` flag per sentence: a batch's chains are gathered and scattered with
    tensor indexing, and the table is what the checkpoint holds.
    """

    def __init__(self, num_nonterminals: int):
        self.num_nonterminals = num_nonterminals
        self.nodes = torch.full((0, 0, 3), -1, dtype=torch.int32)
        self.known = torch.zeros(0, dtype=torch.bool)

    def _grow(self, rows: int, width: int) -> None:
        old_rows, old_width = self.nodes.shape[:2]
        if rows <= old_rows and width <= old_width:
            return
        nodes = torch.full((max(rows, old_rows), max(width, old_width), 3), -1,
                           dtype=torch.int32)
        nodes[:old_rows, :old_width] = self.nodes
        known = torch.zeros(max(rows, old_rows), dtype=torch.bool)
        known[:old_rows] = self.known
        self.nodes, self.known = nodes, known

    def get(self, index: torch.Tensor, lengths: torch.Tensor,
            fresh_uniforms: torch.Tensor | None = None) -> BinaryTrees:
        """The chains of these sentences (new ones start right-branching, their labels drawn
        from `fresh_uniforms` (B, max length − 1) if given) as BinaryTrees."""
        lengths_cpu, rows = lengths.cpu().long(), index.cpu().long()
        B = lengths_cpu.shape[0]
        M = max(int(lengths_cpu.max()) - 1, 0) if B else 0
        fresh = right_branching_trees(lengths_cpu, self.num_nonterminals, M,
                                      uniforms=None if fresh_uniforms is None
                                      else fresh_uniforms.cpu())
        self._grow(int(rows.max()) + 1 if B else 0, M)
        have = self.known[rows]
        stored = self.nodes[rows, :M].long()
        sizes = (stored[..., 0] >= 0).sum(1)
        wrong = have & (sizes != (lengths_cpu - 1).clamp(min=0))
        if bool(wrong.any()):
            row = int(wrong.nonzero()[0, 0])
            raise ValueError(f"chain of sentence {int(rows[row])} has {int(sizes[row])} nodes, "
                             f"expected {int(lengths_cpu[row]) - 1}")
        spans = torch.where(have[:, None, None], stored[..., :2], fresh.spans)
        labels = torch.where(have[:, None], stored[..., 2], fresh.labels)
        return BinaryTrees(spans=spans.to(lengths.device), labels=labels.to(lengths.device),
                           lengths=lengths)

    @staticmethod
    def pack(trees: BinaryTrees) -> torch.Tensor:
        """(B, M, 3) int32 (start, end, label) of each row's nodes, −1 past its n − 1, on the
        trees' device: the form the store keeps and the ranks exchange."""
        M = trees.spans.shape[1]
        real = (torch.arange(M, device=trees.spans.device)[None, :]
                < (trees.lengths.to(trees.spans.device)[:, None] - 1))
        packed = torch.cat([trees.spans, trees.labels[..., None]], 2)
        return packed.masked_fill(~real[..., None], -1).to(torch.int32)

    def put(self, index: torch.Tensor, trees: BinaryTrees) -> None:
        self.put_nodes(index, self.pack(trees))

    def put_nodes(self, index: torch.Tensor, nodes: torch.Tensor) -> None:
        """Store packed chains (`pack`'s form, any width ≥ each row's n − 1) by sentence."""
        rows, nodes = index.cpu().long(), nodes.cpu().to(torch.int32)
        M = nodes.shape[1]
        self._grow(int(rows.max()) + 1 if len(rows) else 0, M)
        self.nodes[rows] = -1
        self.nodes[rows, :M] = nodes
        self.known[rows] = True

    @property
    def trees(self) -> dict[int, torch.Tensor]:
        """The stored chains by sentence index, each (n−1, 3): for inspection."""
        return {int(k): self.nodes[k][self.nodes[k, :, 0] >= 0]
                for k in self.known.nonzero().flatten().tolist()}

    def __len__(self) -> int:
        return int(self.known.sum())

    def state_dict(self) -> dict:
        """Packed: the known sentence indices, their node counts and their nodes in a row."""
        chains = self.trees
        keys = sorted(chains)
        return {"keys": torch.tensor(keys, dtype=torch.long),
                "sizes": torch.tensor([chains[k].shape[0] for k in keys], dtype=torch.long),
                "nodes": (torch.cat([chains[k] for k in keys]) if keys
                          else torch.zeros(0, 3, dtype=torch.int32)),
                "num_nonterminals": self.num_nonterminals}

    def load_state_dict(self, state: dict) -> None:
        self.num_nonterminals = state["num_nonterminals"]
        keys, sizes = state["keys"].long(), state["sizes"].long()
        self.nodes = torch.full((0, 0, 3), -1, dtype=torch.int32)
        self.known = torch.zeros(0, dtype=torch.bool)
        if len(keys):
            self._grow(int(keys.max()) + 1, int(sizes.max()))
            for key, piece in zip(keys.tolist(), torch.split(state["nodes"], sizes.tolist())):
                self.nodes[key, :piece.shape[0]] = piece
            self.known[keys] = True


class MCEMDraws:
    """The MC-EM E-step: advance the persistent chains of a batch, hand their trees over.

    `draw(batch, n)` runs `steps` MH steps (from the stored state) on each sentence's chain and
    returns its current tree; n must be 1 (one chain per sentence). Under torchrun `batch` is
    this rank's shard, and the store is kept whole on every rank (`_keep`).
    """

    def __init__(self, score, num_nonterminals: int, steps: int, rotation_prob: float, device,
                 model=None):
        self.score, self.steps, self.rotation_prob = score, steps, rotation_prob
        self.device, self.model = device, model
        self.store = ChainStore(num_nonterminals)

    def __call__(self, batch, n: int):
        if n != 1:
            raise ValueError("MC-EM keeps one chain per sentence: use em.mstep_samples: 1")
        ids, lengths = batch.ids.to(self.device), batch.lengths.to(self.device)
        noise = row_noise.for_rows(lengths.shape[0], 1, self.device)   # None unless row noise
        fresh = None
        if noise is not None:
            width = max(int(batch.lengths.max()) - 1, 0)
            fresh = noise.child(FRESH_LABELS).uniform(0, width)
        trees = self.store.get(batch.index, lengths, fresh)
        with frozen_tables(self.model):
            trees, log_p, stats = mh_chain(self.score, ids, lengths, trees, self.steps,
                                           self.store.num_nonterminals, self.rotation_prob,
                                           noise=noise)
        self._keep(batch.index, trees)
        out = stats.as_dict()
        out["mh_chain_log_joint"] = float(log_p.mean())
        return trees, out

    def _keep(self, index: torch.Tensor, trees: BinaryTrees) -> None:
        """Store the batch's chains. Under torchrun every rank stores every rank's, gathered
        in global row order with their sentence indices (one all-gather of one int64 tensor:
        index, then the packed nodes), so the store, which is checkpointed and compared across
        ranks at each checkpoint, is the same everywhere; one process stores its own."""
        nodes = ChainStore.pack(trees)
        rows = torch.cat([index.to(nodes.device, torch.int64)[:, None],
                          nodes.flatten(1).long()], 1)
        every = distributed.gather_rows(rows, pad=-1)
        width = (every.shape[1] - 1) // 3
        self.store.put_nodes(every[:, 0], every[:, 1:].reshape(every.shape[0], width, 3))

    def state_dict(self) -> dict:
        return self.store.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.store.load_state_dict(state)
