"""Grammar training by EM with sampled trees: GFlowNet-EM, exact-sampling EM and MC-EM.

`build_em_method(config, model, valid_batches, device, inside)` turns a resolved recipe into a
trainer `Method` (the engine's `EMLoop`), all three sharing one loop and one M-step
(−mean log p_θ(x, z) on sampled trees, or with `em.mstep_labels: summed` −mean log p_θ(x, s) on
their bracketings s, labels summed out; Adam with `train.lr`, `train.betas`, `train.grad_clip`):

- `gfnem`           the E-step trains a tree GFlowNet (`grammars.gflownet.TreeSampler`) with
                    the recipe's objective; the M-step is gated by the adaptive threshold on
                    the E-loss (Hu et al. 2023). Works for the neural PCFG and the
                    non-context-free grammar.
- `exact-sampling`  trees drawn from the exact posterior by the inside algorithm (context-free
                    grammars only); M-step every step. With `train.row_noise` each sample's
                    draws are keyed by its global row, so K ranks draw what one process does.
- `mcem`            trees from persistent Metropolis–Hastings chains per training sentence
                    (`grammars.training.mcem`); M-step every step. Both grammar kinds. Under
                    torchrun each rank moves its shard's chains and all ranks keep them all.

Validation: the exact NLL per token (inside algorithm) when the grammar is context-free, else
the importance-sampled bound (`grammars.evaluation.importance_bound`) with `em.valid_samples` samples per
sentence from the run's sampler. Either way under `val_nll_per_token` (which selects best.pt),
with `val_nll_is_bound` saying which. MC-EM on the non-context-free grammar has no sampler: its
bound uses a uniform tree proposal, which loosens as the grammar sharpens, so it is logged as
`val_nll_uniform_proposal_bound` and selects nothing (such runs keep last.pt only, unless
`train.select_metric` chooses an F1). With gold trees, validation also gives bracketing F1
(`validation_f1.py`, passed in as `valid_f1`).

With `em.shape_prior` (gfnem only) the sampler's reward is log p_θ(x, z) − E_ψ(shape(z)) / T, E_ψ
a tree-shape prior trained by `method: shape-ebm` (`grammars.shape_prior`, Hu et al. §5.2); the
M-step still maximizes log p_θ, and the prior is saved in the run's checkpoints. `shape-ebm`
is listed in METHODS with the EM methods (the recipe's choices besides `marginal`), but
`grammars.run` builds it (`shape_prior.training`): it trains no grammar.

The compound PCFG is refused here: its per-sentence latent would need its own E-step.
"""
from __future__ import annotations

import torch

from gfnem_cli.engine import (DIVERGENCES, EMLoop, GfnemError, GFlowNetEStep, PosteriorEStep,
                              em_options_from_config, exploration_from_config,
                              model_optimizer_from_config, objective_from_config, row_noise)
from grammars.charts.posterior_sampling import sample_posterior
from grammars.evaluation.importance_bound import (SamplerProposal, UniformTreeProposal,
                                                  importance_sampled_likelihood)
from grammars.evaluation.likelihood import corpus_likelihood
from grammars.gflownet import TreeSampler
from grammars.models.capabilities import has_dynamic_program
from grammars.shape_prior.reward import (ShapePriorEMLoop, ShapePriorReward, load_shape_prior,
                                         schedule_from_config)
from grammars.shape_prior.training import METHOD as SHAPE_EBM
from grammars.training.family import (MSTEP_LABELS, WITH_PRIOR, GrammarFamily,
                                      SummedLabelsFamily, inputs)
from grammars.training.mcem import MCEMDraws

EM_METHODS = ("gfnem", "exact-sampling", "mcem")
METHODS = EM_METHODS + (SHAPE_EBM,)


def build_sampler(config: dict, vocab_size: int, num_nonterminals: int):
    s = config["sampler"]
    return TreeSampler(vocab_size, num_nonterminals, d_model=s["d_model"],
                       num_layers=s["num_layers"], num_heads=s["num_heads"],
                       dim_feedforward=s["dim_feedforward"] or None, dropout=0.0,
                       learn_backward=s["learn_backward"])


def load_sampler(config: dict, vocab_size: int, method_state: dict, device):
    """The trained sampler of a gfnem run (None for runs without one), in eval mode."""
    if config.get("method") != "gfnem" or "sampler" not in method_state:
        return None
    sampler = build_sampler(config, vocab_size, config["model"]["nonterminals"])
    sampler.load_state_dict(method_state["sampler"])
    return sampler.to(device).eval()


def sampler_optimizer(sampler, config: dict) -> torch.optim.Adam:
    """Adam with two groups: the policy (encoder, P_F, P_B) and the flow / log Z heads."""
    s = config["sampler"]
    flows, policy = [], []
    for name, p in sampler.named_parameters():
        (flows if name.startswith(("heads.flow_", "heads.log_z_")) else policy).append(p)
    return torch.optim.Adam([{"params": policy, "lr": s["lr_policy"]},
                             {"params": flows, "lr": s["lr_flows"]}], betas=tuple(s["betas"]))


def _exact_draw(model, device):
    """Exact posterior draws; with `train.row_noise` keyed by each sample's global row."""
    def draw(batch, n: int):
        ids, lengths = inputs(batch, device)
        noise = row_noise.for_rows(ids.shape[0] * n, n, device)
        return sample_posterior(model.params(ids, lengths), n, noise=noise), {}
    return draw


def _validator(model, sampler, valid_batches, inside, device, samples: int, seed: int,
               valid_f1=None):
    def validate() -> dict:
        if not valid_batches:
            return {}
        if has_dynamic_program(model):
            result = corpus_likelihood(model, valid_batches, inside, device)
        else:
            proposal = (SamplerProposal(sampler) if sampler is not None
                        else UniformTreeProposal(model.num_nonterminals))
            holder = type("Run", (), {"model": model, "device": device})()
            result = importance_sampled_likelihood(holder, valid_batches, samples, seed,
                                                   proposal=proposal, score=model.log_joint)
        out = {"val_nll_per_token": result.nll_per_token, "val_ppl": result.perplexity,
               "val_nll_is_bound": bool(result.is_bound)}
        if result.std_error is not None:
            out["val_nll_std_error"] = result.std_error
        if sampler is None and not has_dynamic_program(model):
            # MC-EM on a non-context-free grammar: the uniform proposal's bound loosens as the
            # grammar sharpens, so it must not select checkpoints (no best.pt; last.pt is used)
            out["val_nll_uniform_proposal_bound"] = out.pop("val_nll_per_token")
            out["val_ppl_uniform_proposal_bound"] = out.pop("val_ppl")
        if valid_f1 is not None:
            out.update(valid_f1(model, sampler))
        return out
    return validate


def build_em_method(config: dict, model, valid_batches, device, inside,
                    valid_f1=None) -> EMLoop:
    method = config["method"]
    kind = getattr(model, "kind", config["model"]["kind"])
    if method not in EM_METHODS:
        raise GfnemError(f"unknown method '{method}'",
                         hint="use marginal, " + ", ".join(METHODS))
    if kind == "cpcfg":
        raise GfnemError(f"method '{method}' does not support the compound PCFG (its sentence "
                         "latent needs its own E-step)", hint="use method: marginal, or "
                         "model.kind: npcfg / ncfg")
    if method == "exact-sampling" and kind == "ncfg":
        raise GfnemError("method 'exact-sampling' needs a context-free grammar; the "
                         "non-context-free grammar has no inside algorithm",
                         hint="use method: gfnem or method: mcem")
    train, em, s = config["train"], config["em"], config["sampler"]
    if em["mstep_labels"] not in MSTEP_LABELS:
        raise GfnemError(f"unknown em.mstep_labels '{em['mstep_labels']}'",
                         hint="use sampled (log p(x, z) of the sampled tree) or summed "
                              "(its labels summed out)")
    family_class = MSTEP_LABELS[em["mstep_labels"]]
    dream_len = em["sleep_max_length"] or config["data"]["max_train_length"] or 20
    model_opt = model_optimizer_from_config(config, model.parameters())
    options = em_options_from_config(config)
    sampler = reward = None
    if method == "gfnem":
        if em["shape_prior"]:
            reward = ShapePriorReward(model, load_shape_prior(em["shape_prior"], device),
                                      schedule_from_config(config))
            family_class = WITH_PRIOR[em["mstep_labels"]]
        sampler = build_sampler(config, model.vocab_size, model.num_nonterminals).to(device)
        family = family_class(model, sampler, device, dream_len, s["local_search_k"],
                              s["local_search_continue"], reward)
        objective, need_flows = objective_from_config(config, s["learn_backward"])
        if em["importance_weighted"] and em["mstep_local_search_rounds"] > 0:
            raise GfnemError("em.importance_weighted needs the proposal density of the M-step "
                             "trees, which local search does not keep",
                             hint="set em.mstep_local_search_rounds: 0")
        exploration = exploration_from_config(s)
        estep = GFlowNetEStep(
            family, objective, sampler_optimizer(sampler, config), sampler.parameters(),
            samples_per_input=s["samples_per_input"], exploration=exploration,
            grad_clip=s["grad_clip"], need_flows=need_flows, sleep_weight=em["sleep_weight"],
            sleep_period=em["sleep_period"], sleep_count=em["sleep_batch_size"],
            mstep_temperature=em["mstep_temperature"],
            mstep_local_search_rounds=em["mstep_local_search_rounds"],
            mstep_reuse_samples=em["mstep_reuse_samples"])
        modules = {"model": model, "sampler": sampler}
        if reward is not None:
            modules["shape_prior"] = reward.prior
    else:
        family = family_class(model, None, device, dream_len)
        if em["importance_weighted"]:
            raise GfnemError(f"em.importance_weighted applies to method gfnem only (method "
                             f"'{method}' has no proposal density)",
                             hint="set em.importance_weighted: false")
        if method == "exact-sampling":
            estep = PosteriorEStep(_exact_draw(model, device))
        else:
            mc = config["mcem"]
            if em["mstep_samples"] != 1:
                raise GfnemError("method 'mcem' keeps one chain per sentence",
                                 hint="set em.mstep_samples: 1")
            draws = MCEMDraws(model.log_joint, model.num_nonterminals, mc["steps"],
                              mc["rotation_prob"], device, model)
            estep = PosteriorEStep(draws, state=draws)
        modules = {"model": model}
    validate = _validator(model, sampler, valid_batches, inside, device,
                          em["valid_samples"], train["seed"], valid_f1)
    if reward is not None:
        return ShapePriorEMLoop(family, estep, model_opt, model.parameters(), options, validate,
                                modules, reward=reward)
    return EMLoop(family, estep, model_opt, model.parameters(), options, validate, modules)


__all__ = ["build_em_method", "GrammarFamily", "SummedLabelsFamily", "build_sampler",
           "load_sampler", "sampler_optimizer", "METHODS", "DIVERGENCES", "MSTEP_LABELS"]
