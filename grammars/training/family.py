"""The grammar family as the engine sees it (`gfnem_cli.engine.family`): a grammar p_θ(x, z)
and, for GFlowNet-EM, its tree sampler.

`GrammarFamily` is a `SamplerFamily` with the capabilities `LocalSearch` (back-and-forth
local search on trees, with the grammar's tables frozen), `SleepPhase` (sentences and trees
dreamt from the grammar) and `CountsUnits` (NLL per token, one `</s>` per sentence counted);
`SummedLabelsFamily` adds the `RaoBlackwellizedMStep` of `em.mstep_labels: summed`.
The grammar model itself is the reward the sampler reads (`log_joint`, `partial_log_joint`),
unless a `reward` is given: with `em.shape_prior`, `PriorFamily` / `SummedPriorFamily` hand the
sampler and local search log R = log p_θ(x, z) − E_ψ(shape(z)) / T (`grammars.shape_prior`),
score with it wherever the engine asks for the E-step's target (`log_joint`: rewards left
unset, the importance weights of the M-step), and give the M-step log p_θ alone
(`mstep_log_likelihood`).
"""
from __future__ import annotations

import torch

from gfnem_cli.engine import Exploration, Refined, row_noise
from grammars.data.batching import make_batch
from grammars.evaluation.likelihood import tokens_in
from grammars.gflownet import local_search
from grammars.training.mcem import frozen_tables


def inputs(batch, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch on the device, trimmed to its longest sentence; the length is read from the
    host copy, so no step waits on the device for it."""
    width = int(batch.lengths_on_host.max())
    return batch.ids[:, :width].to(device), batch.lengths.to(device)


class GrammarFamily:
    """Grammar + (optional) tree sampler, as the engine's `SamplerFamily` sees them."""

    nll_unit = "token"            # `CountsUnits`: one `</s>` per sentence counted (DESIGN §6)

    def __init__(self, model, sampler, device, dream_max_length: int = 20,
                 local_search_k: str = "fixed", local_search_continue: bool = False,
                 reward=None):
        self.model, self.sampler, self.device = model, sampler, device
        self.reward = reward if reward is not None else model   # what the sampler reads
        self.dream_max_length = dream_max_length
        self.local_search_k, self.local_search_continue = local_search_k, local_search_continue
        self._chain = None     # (E-step trajectories, their refined trees, log R) of this step

    def batch_size(self, batch) -> int:
        return len(batch)

    def num_units(self, batch) -> int:
        return tokens_in(batch.lengths_on_host)

    def log_joint(self, batch, z, n: int) -> torch.Tensor:
        ids, lengths = inputs(batch, self.device)
        return self.model.log_joint(ids.repeat_interleave(n, 0), lengths.repeat_interleave(n, 0),
                                    z)

    def sample(self, batch, n: int, exploration: Exploration, need_flows: bool):
        ids, _ = inputs(batch, self.device)     # the sampler reads the host lengths: no wait
        return self.sampler.sample(ids, batch.lengths_on_host, n,
                                   temperature=exploration.temperature,
                                   epsilon=exploration.epsilon, reward=self.reward,
                                   need_flows=need_flows)

    def refine(self, batch, traj, exploration: Exploration, rounds: int, for_loss: bool,
               need_flows: bool) -> Refined:
        """With `local_search_continue`, M-step rounds on the E-step's own trajectories
        (em.mstep_reuse_samples) start where the E-step's round left its chain."""
        ids, _ = inputs(batch, self.device)
        lengths = batch.lengths_on_host           # the sampler reads them there: no wait
        start, log_r = traj, None
        chain, self._chain = self._chain, None
        if not for_loss and chain is not None and chain[0] is traj:
            start, log_r = chain[1], chain[2]
        path = for_loss and exploration.local_search_loss == "path"
        rescore = for_loss and not path
        with frozen_tables(self.model):      # θ is fixed during the E-step: score cheaply
            result = local_search(self.sampler, ids, lengths, start, self.reward,
                                  k=exploration.local_search_steps, rounds=rounds,
                                  temperature=exploration.temperature,
                                  epsilon=exploration.epsilon, rescore=rescore,
                                  need_flows=need_flows, k_draw=self.local_search_k,
                                  log_reward=log_r, path_loss=path)
        if for_loss and self.local_search_continue:
            self._chain = (traj, result.trees, result.log_reward)
        return Refined(result.trees, result.log_reward, result.acceptance_rate,
                       result.trajectories, result.path_residual)

    @torch.no_grad()
    def dream(self, count: int):
        """(x, z) ~ p_θ with |x| ≤ dream_max_length, for the sleep phase. Drawn on the host
        (the process's CPU generator, checkpointed with the run, or the step's row noise):
        top-down generation with rejection of long sentences is ragged, host-driven work, so
        on a GPU the only wait is the copy of the grammar's tables."""
        noise = row_noise.for_rows(count, 1, "cpu")     # dream i: the step's row i
        id_lists, trees, _ = self.model.sample(count, self.dream_max_length,
                                               generator=torch.default_generator, noise=noise)
        host_lengths = trees.lengths
        ids = make_batch(id_lists, list(range(count))).ids.to(self.device)  # one transfer
        trees.spans, trees.labels = trees.spans.to(self.device), trees.labels.to(self.device)
        trees.lengths = host_lengths.to(self.device)
        return (ids, host_lengths), trees      # host lengths: the sampler reads them there

    def log_pf_of(self, x, z) -> torch.Tensor:
        ids, lengths = x
        # one pass: the walk back with P_B scores P_F on the same encodings, with gradients
        return self.sampler.log_prob_of(ids, lengths, z, order="sample_backward")[0]


class SummedLabelsFamily(GrammarFamily):
    """`em.mstep_labels: summed`: the M-step maximizes log p_θ(x, s) for the bracketing s of
    each sampled tree, its labels summed out, instead of log p_θ(x, z). The same expected
    gradient under the posterior (∇ log p_θ(x)), less variance: Rao-Blackwellization."""

    def mstep_log_likelihood(self, batch, z, n: int) -> torch.Tensor:
        """(B·n,) log p_θ(x, bracketing of z) (`grammars.models.bracketing_score`)."""
        ids, lengths = inputs(batch, self.device)
        return self.model.log_joint_bracketing(ids.repeat_interleave(n, 0),
                                               lengths.repeat_interleave(n, 0), z)


def _reward_log_joint(family: GrammarFamily, batch, z, n: int) -> torch.Tensor:
    ids, lengths = inputs(batch, family.device)
    return family.reward.log_joint(ids.repeat_interleave(n, 0),
                                   lengths.repeat_interleave(n, 0), z)


class PriorFamily(GrammarFamily):
    """`em.shape_prior` with `em.mstep_labels: sampled`: `log_joint` is the E-step's target
    log R (the shape prior's tilt included); the M-step maximizes log p_θ(x, z)."""

    def log_joint(self, batch, z, n: int) -> torch.Tensor:
        return _reward_log_joint(self, batch, z, n)

    def mstep_log_likelihood(self, batch, z, n: int) -> torch.Tensor:
        return GrammarFamily.log_joint(self, batch, z, n)


class SummedPriorFamily(SummedLabelsFamily):
    """`em.shape_prior` with `em.mstep_labels: summed`: `log_joint` is log R; the M-step
    maximizes log p_θ(x, s), the labels summed out (inherited)."""

    def log_joint(self, batch, z, n: int) -> torch.Tensor:
        return _reward_log_joint(self, batch, z, n)


MSTEP_LABELS = {"sampled": GrammarFamily, "summed": SummedLabelsFamily}
WITH_PRIOR = {"sampled": PriorFamily, "summed": SummedPriorFamily}
