"""The importance-sampled likelihood bound of DESIGN.md §6, for grammars with no exact marginal.

For a sentence x and M trajectories τ_1..τ_M drawn from a tree sampler's forward policy P_F
(each ending in a tree z_m),

    log p̂(x) = logsumexp_m( log R_m + log P_B(τ_m | z_m) − log P_F(τ_m) ) − log M,
    R_m = p_θ(x, z_m)  (preterminals summed out).

Why it is a bound: w_m = R_m P_B(τ_m | z_m) / P_F(τ_m) is unbiased for p(x), because
E_{τ∼P_F}[w] = Σ_τ R(z(τ)) P_B(τ | z(τ)) = Σ_z R(z) Σ_{τ→z} P_B(τ | z) = Σ_z p(x, z) = p(x)
(P_B(· | z) sums to one over the trajectories ending in z, and P_F must reach every tree that
R gives mass to, which a softmax policy does). By Jensen, E[log p̂(x)] ≤ log p(x): the NLL it
reports is, in expectation, an *upper bound* on the true NLL, tightening as M grows (the gap is
≈ Var(w)/(2 M p(x)²)) and exact at any M when P_F(τ) = R P_B(τ | z) / p(x).

Accumulation is in float64 (per-trajectory log-ratios come from the float32 sampler; the
logsumexp over M, the sums over sentences and tokens are float64). NLL per token counts one
`</s>` per sentence (length + 1 tokens); 1-word sentences (which a CNF grammar cannot derive)
are skipped, as in the exact NLL.

The float64 accumulation and the standard error are the engine's
(`gfnem_cli/engine/importance.py`), shared with the image family. Standard error (delta method,
per sentence): with normalised weights w̃_m = w_m / Σ w and
r = Σ_m w̃_m² (1/r is the effective sample size),
    Var[log p̂(x)] ≈ Var(w) / (M · mean(w)²) = (M·r − 1) / (M − 1),
using the unbiased sample variance of the weights. Sentences are independent, so the standard
error of the total NLL is sqrt(Σ_x Var[log p̂(x)]) and that of the NLL per token is this
divided by the number of tokens. It is the sampling error of p̂ around its own expectation; it
does not include the (downward, in log space) Jensen bias, and it underestimates when the
weights are heavy-tailed (a poor proposal shows as a small effective sample size).

Proposals: a trained `TreeSampler` (the run's), or `UniformTreeProposal` (uniform merge
position and label at each step, uniform P_B), which needs no training and is valid but loose.
"""
from __future__ import annotations

import math

import torch

from gfnem_cli.engine import ImportanceEstimate, distributed, standard_error
from grammars.binary_trees import BinaryTrees
from grammars.models.capabilities import has_sampler
from grammars.evaluation.likelihood import CorpusLikelihood, tokens_in

ROWS_PER_PASS = 2048      # sentences × samples scored in one sampler pass


class SamplerProposal:
    """A `TreeSampler` as an importance proposal: its forward trajectories, log P_F, log P_B."""

    def __init__(self, sampler):
        self.sampler = sampler

    @torch.no_grad()
    def propose(self, ids: torch.Tensor, lengths: torch.Tensor, n: int,
                generator: torch.Generator | None = None):
        traj = self.sampler.sample(ids, lengths, n, generator=generator)
        return traj.z, traj.log_pf, traj.log_pb


class UniformTreeProposal:
    """Bottom-up trees with a uniform merge position and a uniform label at every step.

    log P_F(τ) = Σ_t −log(r_t − 1) − log NT (r_t roots before step t); P_B uniform over the
    splittable roots (internal nodes) of each next state, as the tree GFlowNet's uniform P_B.
    """

    def __init__(self, num_nonterminals: int):
        self.num_nonterminals = num_nonterminals

    @torch.no_grad()
    def propose(self, ids: torch.Tensor, lengths: torch.Tensor, n: int,
                generator: torch.Generator | None = None):
        lengths = lengths.long().repeat_interleave(n, 0)
        R, device = lengths.shape[0], lengths.device
        L = int(lengths.max()) if R else 1
        NT = self.num_nonterminals
        pos = torch.arange(L, device=device).expand(R, L)
        start = torch.where(pos < lengths[:, None], pos, -1)
        end = torch.where(pos < lengths[:, None], pos + 1, -1)
        is_node = torch.zeros(R, L, dtype=torch.bool, device=device)
        count = lengths.clone()
        spans = torch.full((R, max(L - 1, 0), 2), -1, dtype=torch.long, device=device)
        labels = torch.full((R, max(L - 1, 0)), -1, dtype=torch.long, device=device)
        log_pf = torch.zeros(R, dtype=torch.float64, device=device)
        log_pb = torch.zeros(R, dtype=torch.float64, device=device)
        rows = torch.arange(R, device=device)
        for t in range(L - 1):
            active = count > 1
            u = torch.rand(R, 2, device=device, generator=generator)
            choices = (count - 1).clamp(min=1)
            p = (u[:, 0] * choices).long().clamp(max=L - 2)
            label = (u[:, 1] * NT).long().clamp(max=NT - 1)
            s, e = start[rows, p], end[rows, p + 1]
            spans[:, t] = torch.where(active[:, None], torch.stack([s, e], -1), spans[:, t])
            labels[:, t] = torch.where(active, label, labels[:, t])
            # shift roots after p+1 one place left; the merged root sits at p
            src = torch.where(pos <= p[:, None], pos, (pos + 1).clamp(max=L - 1))
            nstart, nend, nnode = start.gather(1, src), end.gather(1, src), is_node.gather(1, src)
            nstart[rows, p], nend[rows, p], nnode[rows, p] = s, e, True
            last = (count - 1)[:, None] == pos
            nstart = torch.where(last, -1, nstart)
            nend = torch.where(last, -1, nend)
            nnode = nnode & ~last
            start = torch.where(active[:, None], nstart, start)
            end = torch.where(active[:, None], nend, end)
            is_node = torch.where(active[:, None], nnode, is_node)
            log_pf -= torch.where(active, choices.double().log() + math.log(NT), 0.0)
            log_pb -= torch.where(active, is_node.sum(1).clamp(min=1).double().log(), 0.0)
            count = count - active.long()
        return BinaryTrees(spans=spans, labels=labels, lengths=lengths), log_pf, log_pb


@torch.no_grad()
def importance_log_likelihood(score, proposal, ids: torch.Tensor, lengths: torch.Tensor,
                              num_samples: int, generator: torch.Generator | None = None,
                              rows_per_pass: int = ROWS_PER_PASS):
    """Per sentence: (log p̂(x) (B,) float64, Var[log p̂(x)] (B,) float64, ESS (B,)).

    `score(ids, lengths, trees) -> (rows,)` is log p_θ(x, z); `proposal.propose(ids, lengths,
    n, generator) -> (trees, log_pf, log_pb)` with each sentence's n rows contiguous. The M
    samples are drawn in passes of about `rows_per_pass` rows; running float64 logsumexps of
    w and w² make the result independent of the pass size.
    """
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1")
    B = ids.shape[0]
    per_pass = max(1, min(num_samples, rows_per_pass // max(B, 1)))
    estimate = ImportanceEstimate(B, ids.device)
    done = 0
    while done < num_samples:
        n = min(per_pass, num_samples - done)
        trees, log_pf, log_pb = proposal.propose(ids, lengths, n, generator)
        rep_ids, rep_len = ids.repeat_interleave(n, 0), lengths.repeat_interleave(n, 0)
        log_r = score(rep_ids, rep_len, trees)
        estimate.add((log_r.double() + log_pb.double() - log_pf.double()).view(B, n))
        done += n
    return estimate.result()


def run_proposal(run):
    """The run's trained sampler, or the uniform tree proposal when it has none (MC-EM)."""
    if has_sampler(run):
        return SamplerProposal(run.sampler)
    return UniformTreeProposal(run.model.num_nonterminals)


def importance_sampled_batches(run, batches, num_samples: int, seed: int = 0,
                               proposal=None, score=None, shard: bool = False):
    """Per batch, its sentences of two or more words: (rows of the batch's input list,
    log p̂(x) (B,) float64, Var[log p̂(x)] (B,), lengths), the same whether summed
    (`importance_sampled_likelihood`) or written per sentence (`gfnem score`).

    Without `shard` (validation while training, on rank 0 alone) one generator seeded by
    `seed` runs through the batches in order. With it (`gfnem evaluate`, `gfnem score`) batch b
    draws from a generator seeded with (seed, b), so under torchrun each rank estimates a
    contiguous block of batches (`distributed.map_batches`) and every rank gets them all in
    order: the one-process figures exactly."""
    device = torch.device(getattr(run, "device", "cpu"))
    proposal = proposal if proposal is not None else run_proposal(run)
    score = score if score is not None else run.model.log_joint

    def estimate(batch, generator):
        keep = batch.lengths >= 2
        if not bool(keep.any()):
            return None
        ids, lengths = batch.ids[keep].to(device), batch.lengths[keep].to(device)
        ids = ids[:, : int(lengths.max())]
        with torch.no_grad():
            log_p, var, _ = importance_log_likelihood(score, proposal, ids, lengths,
                                                      num_samples, generator)
        return batch.index[keep.cpu()].tolist(), log_p.cpu(), var.cpu(), lengths.cpu()

    if shard:
        parts = distributed.map_batches(batches, estimate, seed, device=device)
    else:
        generator = torch.Generator(device=device).manual_seed(int(seed))
        parts = (estimate(batch, generator) for batch in batches)
    yield from (part for part in parts if part is not None)


@torch.no_grad()
def importance_sampled_likelihood(run, batches, num_samples: int, seed: int = 0,
                                  proposal=None, score=None, shard: bool = False
                                  ) -> CorpusLikelihood:
    """The corpus NLL bound of `run` (a `TrainedRun` or anything with .model, .device and
    optionally .sampler) over `batches` (SentenceBatch list), M = `num_samples` per sentence.

    Returns CorpusLikelihood(is_bound=True, std_error = standard error of the NLL per token).
    Deterministic given `seed` (its own generators; the global RNG is not touched); `shard`
    as in `importance_sampled_batches`.
    """
    total, var_total, tokens, count = 0.0, 0.0, 0, 0
    for rows, log_p, var, lengths in importance_sampled_batches(run, batches, num_samples,
                                                                seed, proposal, score, shard):
        total -= float(log_p.sum())
        var_total += float(var.sum())
        tokens += tokens_in(lengths)
        count += len(rows)
    std_error = standard_error(var_total, tokens)
    return CorpusLikelihood(total, tokens, count, True, std_error)
