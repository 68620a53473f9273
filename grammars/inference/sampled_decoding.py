"""Decoding and tree draws from a trained tree sampler (grammars without a dynamic program).

- `best_of_samples(run, ids, lengths, K)`: of K trees sampled per sentence, the one with the
  highest log p_θ(x, z) (`gfnem parse --decode sample`). With no sampler in the run, the K
  trees come from the exact posterior (context-free grammars) or, for an MC-EM run of a
  non-context-free grammar, from K Metropolis–Hastings chains started right-branching.
- `sampler_mbr(run, ids, lengths, K)`: span marginals estimated from K sampled trees (the
  fraction of samples containing each span), then the CKY of `grammars.charts.mbr.mbr_decode`:
  the tree maximising the expected number of correct spans under the sampler.
(Tree draws with log q for `gfnem sample` are `inference.tree_draws`.)
"""
from __future__ import annotations

import torch

from grammars.binary_trees import BinaryTrees
from grammars.charts.mbr import mbr_decode
from grammars.charts.posterior_sampling import sample_posterior
from grammars.models.capabilities import has_dynamic_program, has_sampler
from grammars.training.mcem import frozen_tables, mh_chain, right_branching_trees


def _rows(trees: BinaryTrees, pick: torch.Tensor) -> BinaryTrees:
    return BinaryTrees(trees.spans[pick], trees.labels[pick], trees.lengths[pick],
                       None if trees.preterminals is None else trees.preterminals[pick])


@torch.no_grad()
def draw_trees_for_decoding(run, ids: torch.Tensor, lengths: torch.Tensor, k: int,
                            generator: torch.Generator | None = None
                            ) -> tuple[BinaryTrees, torch.Tensor]:
    """K trees per sentence (rows b·K .. b·K+K−1) and their log p(x, z), drawn with
    `generator` (torch's global one when None)."""
    scorer = run.model
    ids = ids[:, : int(lengths.max())]
    rep_ids, rep_len = ids.repeat_interleave(k, 0), lengths.repeat_interleave(k, 0)
    if has_sampler(run):
        traj = run.sampler.sample(ids, lengths, k, reward=scorer, generator=generator)
        return traj.z, traj.log_reward
    if not has_dynamic_program(run.model):     # MC-EM on the non-context-free grammar
        mc = run.config.get("mcem", {})
        NT = run.model.num_nonterminals
        start = right_branching_trees(rep_len, NT)
        with frozen_tables(run.model):
            trees, log_p, _ = mh_chain(scorer.log_joint, rep_ids, rep_len, start,
                                       int(mc.get("steps", 100)), NT,
                                       float(mc.get("rotation_prob", 0.5)),
                                       generator=generator)
        return trees, log_p
    trees = sample_posterior(run.model.params(ids, lengths), k, generator)
    return trees, scorer.log_joint(rep_ids, rep_len, trees)


@torch.no_grad()
def best_of_samples(run, ids: torch.Tensor, lengths: torch.Tensor, k: int,
                    generator: torch.Generator | None = None) -> BinaryTrees:
    """Per sentence, the highest-log p(x, z) tree among K draws (B rows)."""
    k = max(int(k), 1)
    trees, log_p = draw_trees_for_decoding(run, ids, lengths, k, generator)
    B = lengths.shape[0]
    best = log_p.view(B, k).argmax(1) + torch.arange(B, device=log_p.device) * k
    return _rows(trees, best)


def sample_span_marginals(trees: BinaryTrees, num_inputs: int, k: int) -> torch.Tensor:
    """(B, n, n+1): the fraction of each sentence's K trees that contain span [i, j).

    Width-1 spans inside a sentence are 1 (leaves are always constituents), as
    `grammars.charts.inside.span_marginals` returns them.
    """
    lengths = trees.lengths.view(num_inputs, k)[:, 0]
    n = int(lengths.max())
    spans = trees.spans
    present = trees.labels >= 0
    rows = torch.arange(spans.shape[0], device=spans.device)[:, None].expand_as(present) // k
    counts = torch.zeros(num_inputs, n, n + 1, dtype=torch.float64, device=spans.device)
    counts.index_put_((rows[present], spans[..., 0][present], spans[..., 1][present]),
                      torch.ones(int(present.sum()), dtype=torch.float64, device=spans.device),
                      accumulate=True)
    marg = counts / k
    p = torch.arange(n, device=spans.device)
    marg[:, p, p + 1] = (p[None, :] < lengths[:, None]).to(marg.dtype)
    return marg


@torch.no_grad()
def sampler_mbr(run, ids: torch.Tensor, lengths: torch.Tensor, k: int,
                generator: torch.Generator | None = None) -> BinaryTrees:
    """MBR decoding on span marginals estimated from K sampled trees per sentence."""
    k = max(int(k), 1)
    trees, _ = draw_trees_for_decoding(run, ids, lengths, k, generator)
    return mbr_decode(sample_span_marginals(trees, lengths.shape[0], k), lengths)
