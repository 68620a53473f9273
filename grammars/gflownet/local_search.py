"""Back-and-forth local search on parse trees.

Zhang et al. 2022; Kim et al. 2023, "Local search GFlowNets".

One round, for every row at once: from the terminal tree x walk k steps backward with P_B to a
forest s (k = min(k, n-1) per row), rebuild k steps forward with the sampler's forward policy q
(P_F, or its tempered / ε-mixed version) to a new tree x', and accept x' with the
Metropolis–Hastings probability

    α = min(1, [R(x') · P_B(x'→s) · q(s→x)] / [R(x) · P_B(x→s) · q(s→x')])

where P_B(x→s) is the probability of the backward path just walked, q(s→x') that of the new
forward path, P_B(x'→s) that of walking the new path back, and q(s→x) that of rebuilding x by
re-merging the split nodes in reverse order. The path pair is an auxiliary variable whose
reverse move is exactly (walk x'→s backward, rebuild x), so the kernel satisfies detailed
balance for R(x) ∝ p_θ(x | sentence): chains started from the posterior stay there, whatever
the sampler. Subtrees left in s keep their node order; new nodes are appended, so returned
trees stay in a valid bottom-up order.

A round's path is also a training signal (`path_loss`): for any GFlowNet whose flows balance,
F(s) = R(x) P_B(x→s) / P_F(s→x) along every path, so both sides of the path give the same
log F(s), and the residual

    δ = [log R(x) + log P_B(x→s) − log P_F(s→x)] − [log R(x') + log P_B(x'→s) − log P_F(s→x')]

is zero at the optimum (sub-trajectory balance over x → s → x', F(s) eliminated). The last
round is then run with gradients and δ returned: 2k − 1 encoder calls with a graph, where the
teacher-forced rescoring of the refined tree costs n − 1 (the authors' code trains on these
k + k steps, too). δ uses the untempered P_F whatever the proposal's temperature, and does not
depend on acceptance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gfnem_cli.engine import row_noise
from gfnem_cli.engine.trajectories import Trajectories
from grammars.binary_trees import BinaryTrees
from grammars.gflownet.back_walk import walk_back
from grammars.gflownet.forest import read_slots
from grammars.gflownet.sampler import TreeSampler, reverse_steps


K_DRAWS = ("fixed", "uniform")


@dataclass
class LocalSearchResult:
    trees: BinaryTrees                   # (B·N rows) the trees after the last round
    log_reward: torch.Tensor             # (B·N,) their log R, detached
    acceptance_rate: torch.Tensor        # () accepted proposals / proposals made (rows with
                                         # k ≥ 1), on the device: read with the step's figures
    accepted: torch.Tensor               # (B·N,) rounds in which each row moved
    trajectories: Trajectories | None    # teacher-forced rescoring (on_policy=False), if asked
    path_residual: torch.Tensor | None = None   # (B·N,) δ of the last round, with gradients

    @property
    def z(self) -> BinaryTrees:
        """The engine's name for the latents (`gfnem_cli.engine.em.Refined.z`)."""
        return self.trees


def local_search(sampler: TreeSampler, ids: torch.Tensor, lengths: torch.Tensor,
                 trajectories: Trajectories | BinaryTrees, reward, k: int = 2, rounds: int = 1,
                 temperature: float = 1.0, epsilon: float = 0.0, rescore: bool = True,
                 need_flows: bool = False, greedy: bool = False,
                 generator: torch.Generator | None = None, k_draw: str = "fixed",
                 log_reward: torch.Tensor | None = None, path_loss: bool = False
                 ) -> LocalSearchResult:
    """Refine B·N trees with `rounds` rounds of k-step back-and-forth MH moves.

    ids (B, n), lengths (B,); `trajectories` from `sampler.sample` (its z and log_reward are
    used) or BinaryTrees with B·N rows. reward.log_joint(ids, lengths, trees) scores trees.
    `greedy=True` replaces MH by "accept iff R(x') ≥ R(x)" (Kim et al.'s filtering variant;
    it does not preserve the posterior). With `rescore`, the final trees are teacher-forced
    through the sampler, nodes in width order (gradients follow the caller's grad mode) and
    returned as Trajectories with on_policy=False and no behaviour_log_pf.
    `k_draw`: "fixed" walks k steps every round; "uniform" draws one k' ~ U{1, k} per round
    for the whole batch (the authors' code draws k per round). `log_reward`: log R of given
    BinaryTrees, when the caller has it. `path_loss`: the last round runs in the caller's grad
    mode and its residual δ comes back (module docstring).
    """
    if k < 0 or rounds < 0:
        raise ValueError("k and rounds must be non-negative")
    if k_draw not in K_DRAWS:
        raise ValueError(f"k_draw must be one of {K_DRAWS}, got {k_draw!r}")
    if isinstance(trajectories, Trajectories):
        trees, log_r = trajectories.z, trajectories.log_reward
    else:
        trees, log_r = trajectories, log_reward
    ids_rows, len_rows, b, n_per, longest = sampler.expand_rows(ids, lengths, len(trees))
    grad, residual = torch.is_grad_enabled(), None
    with torch.no_grad():
        if log_r is None:
            log_r = reward.log_joint(ids_rows, len_rows, trees)
        log_r = log_r.detach()
        moves = torch.zeros(len_rows.shape[0], dtype=torch.long, device=len_rows.device)
        proposed = torch.zeros((), dtype=torch.long, device=len_rows.device)
        can_move = (len_rows - 1).clamp(min=0)
        noise = row_noise.for_rows(len_rows.shape[0], n_per, len_rows.device)
        for i in range(rounds if k > 0 else 0):
            part = None if noise is None else noise.child(i)
            k_round = _round_k(k, k_draw, generator, part)
            steps = can_move.clamp(max=k_round)
            with torch.set_grad_enabled(grad and path_loss and i == rounds - 1):
                trees, log_r, accept, residual = _round(
                    sampler, ids_rows, len_rows, trees, log_r, reward, steps,
                    min(k_round, longest - 1), temperature, epsilon, greedy, generator, part,
                    longest)
            moves += accept.long()
            proposed += (steps > 0).sum()
    rate = moves.sum().double() / proposed.clamp(min=1)      # no wait: read with the figures
    out = None
    if rescore:
        out = sampler.score(ids, lengths, trees, order="width",
                            reward=reward if need_flows else None, need_flows=need_flows)
        out.log_reward = log_r
        out.behaviour_log_pf = None
        out.on_policy = False
    return LocalSearchResult(trees=trees, log_reward=log_r, acceptance_rate=rate,
                             accepted=moves, trajectories=out,
                             path_residual=residual if path_loss else None)


def _round_k(k: int, k_draw: str, generator, noise: row_noise.RowNoise | None = None) -> int:
    """This round's k: fixed, or drawn on the host RNG (a generator's own when one is given,
    the round's shared row noise when that is on)."""
    if k_draw == "fixed" or k == 1:
        return k
    if noise is not None:
        return 1 + min(int(noise.shared_uniform(0) * k), k - 1)
    if generator is not None and generator.device.type != "cpu":
        return int(torch.randint(1, k + 1, (1,), generator=generator,
                                 device=generator.device).item())
    return int(torch.randint(1, k + 1, (1,), generator=generator).item())


def _round(sampler: TreeSampler, ids, lengths, trees: BinaryTrees, log_r, reward,
           steps: torch.Tensor, max_steps: int, temperature: float, epsilon: float,
           greedy: bool, generator, noise: row_noise.RowNoise | None = None,
           longest: int | None = None):
    """One batched MH move; returns (trees, log R, accepted mask, the path's residual δ).

    The walk back scores q(s→x) on the encodings P_B needs anyway, and the proposal starts
    from the walk's last encoding: 2k-1 encoder calls a round (x itself, one root, is never
    encoded). x is rebuilt from s by replaying the splits, without the encoder."""
    forest, emb = sampler.state_from_trees(ids, lengths, trees, order="width", embed=True,
                                           longest=longest)
    walk = walk_back(sampler, forest, emb, steps, max_steps, generator, forward=True,
                     temperature=temperature, epsilon=epsilon,
                     noise=None if noise is None else noise.child(0))
    forest, source = walk.forest.compact()
    emb = read_slots(emb, source)
    new = sampler._run(forest, emb, temperature=temperature, epsilon=epsilon,
                       generator=generator, enc=walk.enc,
                       noise=None if noise is None else noise.child(1))
    x_old = sampler._replay(forest, emb, reverse_steps(walk.splits, steps), embed=False)[0].trees()
    x_new = new.forest.trees()
    log_r_new = reward.log_joint(ids, lengths, x_new).detach()
    log_pb_new = new.log_pb.sum(1)
    residual = (log_r + walk.log_pb - walk.log_pf) - (log_r_new + log_pb_new - new.log_pf.sum(1))
    log_pb_new, walk_log_pb = log_pb_new.detach(), walk.log_pb.detach()
    if greedy:
        accept = log_r_new >= log_r
    else:
        log_alpha = (log_r_new - log_r + log_pb_new + walk.log_q.detach()
                     - new.behaviour_log_pf.sum(1).detach() - walk_log_pb)
        u = (noise.uniform(2) if noise is not None else
             torch.rand(log_alpha.shape, device=log_alpha.device, generator=generator))
        accept = torch.log(u) < log_alpha
    accept = accept & (steps > 0)
    pick = accept[:, None]
    merged = BinaryTrees(spans=torch.where(pick[..., None], x_new.spans, x_old.spans),
                         labels=torch.where(pick, x_new.labels, x_old.labels),
                         lengths=x_old.lengths)
    return merged, torch.where(accept, log_r_new, log_r), accept, residual
