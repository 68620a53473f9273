"""Top-down ancestral sampling of sentences with their trees, (x, z) ~ p_θ, from any grammar.

Used by `gfnem sample --from-model` and by the GFlowNet sleep phase (DESIGN.md §4), which
trains the sampler on trees whose generating sentence is known. A grammar hands over its
log-probability tables (`SamplingTables`); the sampler never needs to know which model it
came from. All sentences of a round expand together: one vectorized step per tree level
(breadth first), never a loop over sentences. A sentence is abandoned as soon as it must
exceed `max_length` (each pending nonterminal yields at least two words) and redrawn, so
the result follows p_θ(x, z | |x| <= max_length). With a training step's row noise
(`train.row_noise`, the sleep phase) every draw of a sentence is keyed by its global row
instead of read from a generator (`_keyed_pieces`), so a dream is the same on any rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gfnem_cli.engine import row_noise
from gfnem_cli.engine.errors import GfnemError
from grammars.binary_trees import BinaryTrees

ROW_CHUNK = 4096          # rows of a table gathered at once when drawing (bounds memory)
COMPOUND_ROUND = 64       # sentences per round for per-sentence grammars (each has own tables)
SHARED_ROUND = 4096       # sentences per round for a shared grammar


@dataclass
class SamplingTables:
    """A grammar's distributions in log space, for G grammars (G = 1 when shared).

    roots     (G, NT)
    rules     (G, C, NT, S*S)   C = 1, or NT + 1 parent contexts (ROOT last) when conditioned
    emissions (G, CE, T, V)     CE = 1, or NT (the nonterminal above the preterminal)
    For a per-sentence grammar (compound PCFG) G equals the `count` asked for and grammar g
    generates sentence g.
    """
    roots: torch.Tensor
    rules: torch.Tensor
    emissions: torch.Tensor
    parent_conditioned: bool


def _on(tables: SamplingTables, device) -> SamplingTables:
    """Sampling runs on `device` (e.g. a CPU generator's for a CUDA model), if one is given."""
    if device is None or tables.roots.device == device:
        return tables
    return SamplingTables(tables.roots.to(device), tables.rules.to(device),
                          tables.emissions.to(device), tables.parent_conditioned)


def _draw(log_table: torch.Tensor, rows: torch.Tensor, generator,
          u: torch.Tensor | None = None) -> torch.Tensor:
    """One categorical draw per entry of `rows` from the rows of a (R, K) log table; with `u`
    (one row-noise uniform per entry) by inverse CDF instead of from the generator."""
    out = []
    for at in range(0, rows.numel(), ROW_CHUNK):
        part = rows[at:at + ROW_CHUNK]
        if u is None:
            probs = log_table[part].float().exp()
            out.append(torch.multinomial(probs, 1, generator=generator).squeeze(1))
        else:
            out.append(row_noise.inverse_cdf(log_table[part], u[at:at + ROW_CHUNK]))
    return torch.cat(out) if out else rows.new_zeros(0)


@torch.no_grad()
def _one_round(tables: SamplingTables, count: int, max_length: int, per_sentence: bool,
               generator, uniforms: torch.Tensor | None = None):
    """Draw `count` trees; return (accepted mask (count,), node arrays of accepted sentences).

    `uniforms` (count, 2·max_length) replaces the generator: sentence m's root reads column 0,
    its c-th expansion (breadth first, left to right) column 1 + c and the emission of its word
    p column max_length + p. A sentence still alive when a level starts has expanded at most
    max_length − 1 − f nodes, f its frontier, so c < max_length − 1: the columns never meet."""
    roots, rules, emissions = tables.roots, tables.rules, tables.emissions
    G, C, NT, SS = rules.shape
    CE, T, V = emissions.shape[1:]
    S = NT + T
    device = roots.device
    cond = tables.parent_conditioned
    sent = torch.arange(count, device=device)
    group = sent if per_sentence else torch.zeros_like(sent)

    # node arrays, one entry per node (internal or preterminal), appended level by level
    n_sent, n_sym, n_parent, n_side, n_level = [], [], [], [], []
    keyed = uniforms is not None
    root_sym = _draw(roots, group, generator, uniforms[:, 0] if keyed else None)
    expanded = torch.zeros(count, dtype=torch.long, device=device) if keyed else None
    n_sent.append(sent); n_sym.append(root_sym); n_parent.append(torch.full_like(sent, -1))
    n_side.append(torch.zeros_like(sent)); n_level.append(torch.zeros_like(sent))
    next_id = count
    f_id, f_sent, f_sym = sent.clone(), sent, root_sym           # frontier: nonterminals to expand
    f_ctx = torch.full_like(sent, NT) if cond else torch.zeros_like(sent)
    leaves = torch.zeros(count, dtype=torch.long, device=device)
    alive = torch.ones(count, dtype=torch.bool, device=device)
    level = 0
    rule_rows = rules.reshape(G * C * NT, SS)
    while f_id.numel() > 0:
        level += 1
        u = None
        if keyed:           # the frontier is sorted by sentence: rank within it, then count
            rank = torch.arange(f_sent.numel(), device=device) - torch.searchsorted(f_sent,
                                                                                    f_sent)
            u = uniforms[f_sent, 1 + expanded[f_sent] + rank]
            expanded += torch.bincount(f_sent, minlength=count)
        pick = _draw(rule_rows, (group[f_sent] * C + f_ctx) * NT + f_sym, generator, u)
        kids = torch.stack([pick // S, pick % S], dim=1).reshape(-1)    # left, right, ...
        k = f_id.numel()
        kid_sent = f_sent.repeat_interleave(2)
        kid_parent = f_id.repeat_interleave(2)
        kid_id = torch.arange(next_id, next_id + 2 * k, device=device)
        next_id += 2 * k
        n_sent.append(kid_sent); n_sym.append(kids); n_parent.append(kid_parent)
        n_side.append(torch.arange(2, device=device).repeat(k))
        n_level.append(torch.full_like(kids, level))
        is_nt = kids < NT
        leaves += torch.bincount(kid_sent[~is_nt], minlength=count)
        pending = torch.bincount(kid_sent[is_nt], minlength=count)
        alive &= leaves + 2 * pending <= max_length
        keep = is_nt & alive[kid_sent]
        f_ctx = (f_sym.repeat_interleave(2) if cond else torch.zeros_like(kids))[keep]
        f_id, f_sent, f_sym = kid_id[keep], kid_sent[keep], kids[keep]

    sent_of, sym = torch.cat(n_sent), torch.cat(n_sym)
    parent, side, lvl = torch.cat(n_parent), torch.cat(n_side), torch.cat(n_level)
    # a dead sentence's nodes stop mid-tree: drop them all (ids are re-indexed below)
    keep = alive[sent_of]
    old_id = torch.arange(sent_of.numel(), device=device)[keep]
    new_id = torch.full((sent_of.numel(),), -1, dtype=torch.long, device=device)
    new_id[old_id] = torch.arange(old_id.numel(), device=device)
    sent_of, sym, side, lvl = sent_of[keep], sym[keep], side[keep], lvl[keep]
    parent = torch.where(parent[keep] >= 0, new_id[parent[keep].clamp(min=0)], parent[keep])

    # yields bottom-up, then start positions top-down (a right child starts after its sibling)
    N = sym.numel()
    size = (sym >= NT).long()
    depth = int(lvl.max()) if N else 0
    for d in range(depth, 0, -1):
        at = (lvl == d).nonzero(as_tuple=True)[0]
        size.index_add_(0, parent[at], size[at])
    left_child = torch.full((N,), -1, dtype=torch.long, device=device)
    lefts = (side == 0) & (parent >= 0)
    left_child[parent[lefts]] = lefts.nonzero(as_tuple=True)[0]
    start = torch.zeros(N, dtype=torch.long, device=device)
    for d in range(1, depth + 1):
        at = (lvl == d).nonzero(as_tuple=True)[0]
        p = parent[at]
        start[at] = start[p] + torch.where(side[at] == 1, size[left_child[p]], 0)

    pre = sym >= NT
    words = torch.zeros(N, dtype=torch.long, device=device)
    if bool(pre.any()):
        ectx = sym[parent.clamp(min=0)] if cond else torch.zeros_like(sym)
        rows = ((group[sent_of] * CE + ectx) * T + (sym - NT))[pre]
        u = uniforms[sent_of[pre], max_length + start[pre]] if keyed else None
        words[pre] = _draw(emissions.reshape(G * CE * T, V), rows, generator, u)
    return alive, dict(sent=sent_of, sym=sym, start=start, size=size, word=words, NT=NT)


@torch.no_grad()
def sample(model, num: int, max_length: int, generator: torch.Generator | None = None,
           max_draws: int | None = None, noise: row_noise.RowNoise | None = None):
    """Draw `num` sentences with their trees from `model` (any of npcfg, cpcfg, ncfg).

    Returns (ids: list of `num` lists of word ids, trees: BinaryTrees with spans/labels of the
    nonterminal nodes, preterminals: (num, L) long tensor, -1 padded). For the compound PCFG
    each sentence gets its own z from the prior N(0, I). Sentences longer than `max_length`
    are rejected and redrawn; after `max_draws` draws (default 1000·num + 10000) without
    enough short ones this raises GfnemError. Reproducible given `generator`; sampling runs,
    and the outputs live, on the generator's device (else on the model's). `noise` (row noise
    over the `num` sentences, one row each) replaces the generator's draws, on its device;
    a per-sentence grammar's latent has no keyed draw, so it is refused there.
    """
    if num <= 0:
        raise ValueError("num must be positive")
    if max_length < 2:
        raise GfnemError(f"max_length {max_length} is too short: a grammar in Chomsky normal "
                         "form generates at least 2 words", hint="use --max-length 2 or more")
    per_sentence = bool(getattr(model, "compound", False))
    limit = max_draws if max_draws is not None else 1000 * num + 10000
    cap = COMPOUND_ROUND if per_sentence else SHARED_ROUND
    if noise is not None:
        if per_sentence:
            raise ValueError("row noise keys a shared grammar's draws; a per-sentence "
                             "grammar's latent comes from the generator")
        return _assemble(_keyed_pieces(model, num, max_length, generator, limit, noise), num)
    where = generator.device if generator is not None else None
    pieces, have, drawn, tables = [], 0, 0, None
    while have < num:
        _check_draws(have, num, drawn, limit, max_length)
        need = num - have
        rate = (have + 1) / (drawn + 1) if drawn else 1.0
        count = min(cap, max(need, math.ceil(1.2 * need / rate)), limit - drawn)
        if tables is None or per_sentence:
            tables = _on(model.sampling_tables(count, generator), where)
        accepted, nodes = _one_round(tables, count, max_length, per_sentence, generator)
        drawn += count
        take = int(accepted.sum())
        if take > need:                                           # drop the surplus, latest first
            last = accepted.nonzero(as_tuple=True)[0][need]
            accepted[last:] = False
            keep = nodes["sent"] < last
            nodes = {k: (v[keep] if torch.is_tensor(v) else v) for k, v in nodes.items()}
            take = need
        if take:      # the accepted sentences fill the next output rows, in order
            pieces.append(((torch.cumsum(accepted.long(), 0) - 1 + have)[nodes["sent"]], nodes))
        have += take
    return _assemble(pieces, num)


def _check_draws(have: int, num: int, drawn: int, limit: int, max_length: int) -> None:
    if drawn >= limit:
        raise GfnemError(f"only {have} of {num} sampled sentences had at most {max_length} "
                         f"words after {drawn} draws", hint="raise the maximum length")


def _keyed_pieces(model, num: int, max_length: int, generator, limit: int,
                  noise: row_noise.RowNoise) -> list:
    """Sentence m's attempt a reads row m of `noise.uniform(a, 2·max_length)` (`_one_round`),
    and m is its first attempt that fits. Every sentence still pending makes the same attempts
    in a round, so which sentences share a round, and how many attempts it makes, change no
    sentence: each is a function of its global row alone."""
    tables = _on(model.sampling_tables(num, generator), noise.device)
    width, device = 2 * max_length, noise.device
    pending = torch.arange(num, device=device)
    pieces, attempt, drawn = [], 0, 0
    while pending.numel():
        P = pending.numel()
        _check_draws(num - P, num, drawn, limit, max_length)
        rate = (num - P + 1) / (drawn + 1) if drawn else 1.0
        tries = max(1, min(math.ceil(1.2 / rate), SHARED_ROUND // P, (limit - drawn) // P))
        u = torch.stack([noise.uniform(attempt + t, width)[pending] for t in range(tries)], 1)
        u = u.reshape(P * tries, width)                      # row p·tries + t: attempt t of p
        ok = torch.zeros(P * tries, dtype=torch.bool, device=device)
        parts = []
        for lo in range(0, P * tries, SHARED_ROUND):
            hi = min(lo + SHARED_ROUND, P * tries)
            ok[lo:hi], nodes = _one_round(tables, hi - lo, max_length, False, None, u[lo:hi])
            parts.append((lo, nodes))
        ok = ok.view(P, tries)
        found = ok.any(1)
        chosen = torch.zeros(P * tries, dtype=torch.bool, device=device)
        chosen[(torch.arange(P, device=device) * tries + ok.long().argmax(1))[found]] = True
        for lo, nodes in parts:
            row = nodes["sent"] + lo
            keep = chosen[row]
            pieces.append((pending[row[keep] // tries],
                           {k: (v[keep] if torch.is_tensor(v) else v) for k, v in nodes.items()}))
        drawn, attempt, pending = drawn + P * tries, attempt + tries, pending[~found]
    return pieces


def _assemble(pieces, num: int):
    """(output row of each node, node arrays) pieces -> `sample`'s outputs."""
    device = pieces[0][1]["sym"].device
    NT = pieces[0][1]["NT"]
    row = torch.cat([r for r, _ in pieces])
    sym, start, size, word = (torch.cat([nodes[k] for _, nodes in pieces])
                              for k in ("sym", "start", "size", "word"))
    # the root spans its whole sentence, so the length is the largest end of any node
    lengths = torch.zeros(num, dtype=torch.long, device=device)
    lengths.scatter_reduce_(0, row, start + size, reduce="amax")
    L = int(lengths.max())
    pre = sym >= NT
    ids = torch.zeros(num, L, dtype=torch.long, device=device)
    preterminals = torch.full((num, L), -1, dtype=torch.long, device=device)
    ids[row[pre], start[pre]] = word[pre]
    preterminals[row[pre], start[pre]] = sym[pre] - NT
    # internal nodes: rank within their sentence gives the column
    inner = (~pre).nonzero(as_tuple=True)[0]
    r = row[inner]
    order = torch.argsort(r, stable=True)
    inner, r = inner[order], r[order]
    first = torch.searchsorted(r, r, right=False)
    col = torch.arange(r.numel(), device=device) - first
    spans = torch.full((num, max(L - 1, 0), 2), -1, dtype=torch.long, device=device)
    labels = torch.full((num, max(L - 1, 0)), -1, dtype=torch.long, device=device)
    spans[r, col, 0] = start[inner]
    spans[r, col, 1] = start[inner] + size[inner]
    labels[r, col] = sym[inner]
    id_lists = [row_ids[:n] for row_ids, n in zip(ids.tolist(), lengths.tolist())]
    return id_lists, BinaryTrees(spans=spans, labels=labels, lengths=lengths), preterminals
