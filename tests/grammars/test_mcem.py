"""MC-EM's Metropolis–Hastings kernel over labeled binary trees (grammars/training/mcem.py).

Everything is checked against enumeration on a 4-word sentence with 2 nonterminals (5 shapes
x 2^3 labelings = 40 trees): the exact transition matrix of the kernel (every proposal
enumerated) satisfies detailed balance with the exact posterior, and many chains run by the
real sampler reach that posterior (L1 < 0.1), for the neural PCFG and the non-context-free
grammar alike. With row noise a chain's moves depend on its row of the global batch alone,
so the chains move the same however the batch is sharded over ranks.
"""
from __future__ import annotations

import pytest
import torch

from grammars.binary_trees import BinaryTrees
from grammars.training.mcem import ChainStore, MCEMDraws, mh_chain, propose, right_branching_trees
from grammars.models import build_grammar
from grammars.models.forest_score import forest_structure
from tree_enumeration import all_trees

NT, N_WORDS = 2, 4


class Batch:
    def __init__(self, ids, lengths, index):
        self.ids, self.lengths, self.index = ids, lengths, index


def tree_code(spans: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """A unique integer per labeled tree: the bit set of its (start, end, label) nodes."""
    code = (spans[..., 0] * (n + 1) + spans[..., 1]) * NT + labels
    return (torch.ones_like(code) << code).sum(-1)


def enumerated(kind: str, seed: int = 1):
    model = build_grammar(kind, 6, seed=seed, nonterminals=NT, preterminals=2, symbol_dim=8)
    score = model.log_joint
    trees = all_trees(0, N_WORDS, NT)
    T = len(trees)
    spans = torch.tensor([[[s, e] for s, e, _ in t] for t in trees])
    labels = torch.tensor([[a for _, _, a in t] for t in trees])
    lengths = torch.full((T,), N_WORDS)
    ids = torch.tensor([[1, 2, 3, 4]]).expand(T, -1)
    with torch.no_grad():
        log_p = score(ids, lengths, BinaryTrees(spans, labels, lengths)).double()
    codes = tree_code(spans, labels, N_WORDS)
    return score, BinaryTrees(spans, labels, lengths), ids, log_p, codes


def test_proposals_stay_valid_trees_and_change_one_node_at_most():
    torch.manual_seed(0)
    lengths = torch.tensor([2, 3, 5, 8, 8, 1])
    trees = right_branching_trees(lengths, 3)
    for _ in range(200):
        new, _, changed = propose(trees, 3, 0.5)
        forest_structure(new)  # raises on anything that is not a valid binary tree
        diff = ((new.spans != trees.spans).any(-1) | (new.labels != trees.labels)).sum(1)
        assert bool((diff <= 1).all()) and torch.equal(diff > 0, changed)
        assert torch.equal((new.labels >= 0).sum(1), (lengths - 1).clamp(min=0))
        trees = new
    assert not bool(changed[0] & (new.spans[0] != trees.spans[0]).any())  # 2 words: no rotation


@pytest.mark.parametrize("kind", ["npcfg", "ncfg"])
def test_exact_kernel_satisfies_detailed_balance_with_the_posterior(kind):
    """Enumerate every (node, move, direction / new label) proposal: build P exactly."""
    score, trees, ids, log_p, codes = enumerated(kind)
    T, rot = log_p.shape[0], 0.5
    post = torch.softmax(log_p, 0)
    where = {int(c): i for i, c in enumerate(codes)}
    P = torch.zeros(T, T, dtype=torch.float64)
    nodes = N_WORDS - 1
    choices = []
    for v in range(nodes):
        node_u = (v + 0.5) / nodes
        for right in (True, False):
            choices.append(([node_u, 0.0, 0.25 if right else 0.75, 0.5], rot / nodes / 2))
        for shift in range(NT - 1):
            choices.append(([node_u, 0.99, 0.5, (shift + 0.5) / (NT - 1)],
                            (1 - rot) / nodes / (NT - 1)))
    for uniforms, q in choices:
        new, _, changed = propose(trees, NT, rot, uniforms=torch.tensor([uniforms]).expand(T, 4))
        with torch.no_grad():
            new_log_p = score(ids, trees.lengths, new).double()
        target = torch.tensor([where[int(c)] for c in tree_code(new.spans, new.labels, N_WORDS)])
        accept = torch.where(changed, (new_log_p - log_p).exp().clamp(max=1.0), 0.0)
        P[torch.arange(T), target] += q * accept
        P[torch.arange(T), torch.arange(T)] += q * (1 - accept)
    assert torch.allclose(P.sum(1), torch.ones(T, dtype=torch.float64))
    flow = post[:, None] * P
    assert torch.allclose(flow, flow.t(), atol=1e-12)            # detailed balance
    assert torch.allclose(post @ P, post, atol=1e-12)            # stationarity
    reach = torch.linalg.matrix_power((P > 0).double() + torch.eye(T, dtype=torch.float64), T)
    assert bool((reach > 0).all())                               # irreducible


@pytest.mark.parametrize("kind", ["npcfg", "ncfg"])
def test_chains_reach_the_exact_posterior(kind):
    score, _, _, log_p, codes = enumerated(kind)
    post = torch.softmax(log_p, 0)
    torch.manual_seed(0)
    chains = 1000
    lengths = torch.full((chains,), N_WORDS)
    ids = torch.tensor([[1, 2, 3, 4]]).expand(chains, -1)
    trees, current, stats = mh_chain(score, ids, lengths, right_branching_trees(lengths, NT), 150, NT)
    counts = torch.zeros(len(codes), dtype=torch.float64)
    lookup = {int(c): i for i, c in enumerate(codes)}
    for _ in range(25):
        trees, current, stats = mh_chain(score, ids, lengths, trees, 4, NT, log_p=current,
                                         stats=stats)
        for c in tree_code(trees.spans, trees.labels, N_WORDS).tolist():
            counts[lookup[c]] += 1
    empirical = counts / counts.sum()
    assert float((empirical - post).abs().sum()) < 0.1
    rates = stats.as_dict()
    assert 0.05 < rates["mh_acceptance"] < 1.0
    # the chains' log p is the score of their trees
    with torch.no_grad():
        assert torch.allclose(score(ids, lengths, trees), current)


def test_chain_store_round_trip_and_exact_continuation():
    model = build_grammar("ncfg", 6, seed=0, nonterminals=3, preterminals=2, symbol_dim=8)
    score = model.log_joint

    batch = Batch(torch.randint(6, (3, 6)), torch.tensor([6, 3, 2]), torch.tensor([7, 2, 40]))
    a = MCEMDraws(score, 3, steps=5, rotation_prob=0.5, device="cpu")
    torch.manual_seed(1)
    a(batch, 1)
    saved = a.state_dict()
    rng = torch.get_rng_state()
    first, _ = a(batch, 1)
    b = MCEMDraws(score, 3, steps=5, rotation_prob=0.5, device="cpu")
    b.load_state_dict(saved)
    torch.set_rng_state(rng)
    second, _ = b(batch, 1)
    assert torch.equal(first.spans, second.spans) and torch.equal(first.labels, second.labels)
    store = ChainStore(3)
    store.load_state_dict(saved)
    assert len(store) == 3 and sorted(store.trees) == [2, 7, 40]
    with pytest.raises(ValueError):
        a(batch, 2)


@pytest.mark.parametrize("kind", ["npcfg", "ncfg"])
def test_frozen_tables_score_identically_and_restore_the_model(kind):
    from grammars.training.mcem import frozen_tables

    model = build_grammar(kind, 6, seed=0, nonterminals=3, preterminals=2, symbol_dim=8)
    lengths = torch.tensor([5, 3, 2])
    ids = torch.randint(6, (3, 5))
    trees = right_branching_trees(lengths, 3)
    with torch.no_grad():
        before = model.log_joint(ids, lengths, trees)
        with frozen_tables(model):
            assert "tables" in vars(model)
            inside = model.log_joint(ids, lengths, trees)
        after = model.log_joint(ids, lengths, trees)
    assert "tables" not in vars(model)
    assert torch.equal(before, inside) and torch.equal(before, after)
    assert model.log_joint(ids, lengths, trees).requires_grad


def test_row_noise_moves_every_chain_alike_however_the_batch_is_sharded():
    """Under `train.row_noise` a chain's fresh labels and MH draws are keyed by its row of
    the global batch: the whole batch in one call and its two shards (as two ranks run them,
    each told its first row) leave the same store, whatever torch's generator holds."""
    from gfnem_cli.engine import row_noise

    model = build_grammar("npcfg", 6, seed=0, nonterminals=3, preterminals=2, symbol_dim=8)
    lengths = torch.tensor([6, 3, 2, 5, 4])
    ids = torch.randint(1, 6, (5, 6), generator=torch.Generator().manual_seed(0))
    batch = Batch(ids, lengths, torch.tensor([7, 2, 40, 11, 5]))
    whole, sharded = (MCEMDraws(model.log_joint, 3, steps=8, rotation_prob=0.5, device="cpu",
                                model=model) for _ in range(2))
    row_noise.configure(True, 3)
    try:
        for step in range(2):
            torch.manual_seed(step)
            with row_noise.training_step(step, 0):
                _, stats = whole(batch, 1)
            assert stats["mh_acceptance"] > 0                # the chains do move
            torch.manual_seed(100 + step)              # another stream: must not matter
            for rows in ([0, 1], [2, 3, 4]):
                width = int(lengths[rows].max())
                shard = Batch(ids[rows, :width], lengths[rows], batch.index[rows])
                with row_noise.training_step(step, rows[0]):
                    sharded(shard, 1)
    finally:
        row_noise.configure(False, 0)
    a, b = whole.state_dict(), sharded.state_dict()
    assert len(whole.store) == 5
    assert all(torch.equal(a[k], b[k]) for k in ("keys", "sizes", "nodes"))
