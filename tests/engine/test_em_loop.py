"""The engine's EM loop (gfnem_cli/engine/em.py, estep.py) on an enumerable toy family.

Toy: inputs x ∈ {0..X−1}, latents z ∈ {0..K−1}; the model is a free joint table
log p_θ(x, z) = log_softmax(θ)[x, z]; the sampler is a table of logits P_F(z | x) with a
log Z_φ(x) head, one-step trajectories (P_B = 1). Everything (posteriors, log p(x), its
gradient) is exact, so the loop's gating, its invariants (E-step never moves θ, no step
before every loss is checked), its importance-weighted M-step and exact resume can all be
tested against the truth. The engine never imports a family; neither does this file.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gfnem_cli.engine import (Draw, EMLoop, EMOptions, Exploration, GFlowNetEStep,
                              PosteriorEStep, Refined)
from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.objectives import build_objective
from gfnem_cli.engine.schedules import MovingAverage, ThresholdSchedule
from gfnem_cli.engine.trainer import NonFiniteLoss
from gfnem_cli.engine.trajectories import Trajectories

X, K = 3, 5


class Model(nn.Module):
    def __init__(self, scale: float = 0.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.theta = nn.Parameter(scale * torch.randn(X * K, generator=g, dtype=torch.float64))

    def table(self) -> torch.Tensor:
        return torch.log_softmax(self.theta, 0).view(X, K)


class Sampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(X, K, dtype=torch.float64))
        self.log_z = nn.Parameter(torch.zeros(X, dtype=torch.float64))


class ToyFamily:
    def __init__(self, model: Model, sampler: Sampler, nan_reward: bool = False,
                 leak: bool = False):
        self.model, self.sampler = model, sampler
        self.nan_reward, self.leak = nan_reward, leak
        self.refined = 0

    def batch_size(self, batch) -> int:
        return batch.shape[0]

    def num_tokens(self, batch) -> int:
        return batch.shape[0]

    def log_joint(self, batch, z, n):
        out = self.model.table()[batch.repeat_interleave(n), z]
        return out * math.nan if self.nan_reward else out

    def sample(self, batch, n, exploration: Exploration, need_flows):
        x = batch.repeat_interleave(n)
        logits = self.sampler.logits[x]
        log_pi = torch.log_softmax(logits, 1)
        q = torch.softmax(logits.detach() / exploration.temperature, 1)
        q = (1 - exploration.epsilon) * q + exploration.epsilon / K
        z = torch.multinomial(q, 1).squeeze(1)
        log_pf = log_pi.gather(1, z[:, None]).squeeze(1)
        if self.leak:  # a badly written family whose sampler graph reaches θ
            log_pf = log_pf + 0 * self.model.theta.sum()
        return Trajectories(log_pf=log_pf, log_pb=torch.zeros_like(log_pf), log_reward=None,
                            num_inputs=batch.shape[0], num_per_input=n,
                            behaviour_log_pf=q.log().gather(1, z[:, None]).squeeze(1),
                            log_z=self.sampler.log_z[batch], z=z,
                            on_policy=exploration.temperature == 1 and exploration.epsilon == 0)

    def refine(self, batch, traj, exploration, rounds, for_loss, need_flows):
        self.refined += 1
        path = for_loss and exploration.local_search_loss == "path"
        out = Trajectories(**{**traj.__dict__, "on_policy": False}) if for_loss else None
        # a path residual of 0.5 whose gradient is that of log P_F
        residual = traj.log_pf - traj.log_pf.detach() + 0.5 if path else None
        return Refined(traj.z, traj.log_reward, 1.0, None if path else out, residual)

    def dream(self, count):
        flat = torch.multinomial(self.model.table().detach().exp().view(-1), count, True)
        return flat // K, flat % K

    def log_pf_of(self, x, z):
        return torch.log_softmax(self.sampler.logits[x], 1).gather(1, z[:, None]).squeeze(1)


def make_loop(*, tau=(math.inf, math.inf), objective="tb", family_kw=None, estep_kw=None,
              options_kw=None, model_scale=0.0, sampler_lr=0.05, grammar_opt=None):
    model, sampler = Model(model_scale), Sampler()
    family = ToyFamily(model, sampler, **(family_kw or {}))
    estep = GFlowNetEStep(family, build_objective(objective),
                          torch.optim.Adam(sampler.parameters(), lr=sampler_lr),
                          sampler.parameters(), **{"samples_per_input": 4, **(estep_kw or {})})
    opt = grammar_opt(model) if grammar_opt else torch.optim.Adam(model.parameters(), lr=0.05)
    options = EMOptions(threshold=ThresholdSchedule(tau[0], tau[1], 10), **(options_kw or {}))
    loop = EMLoop(family, estep, opt, model.parameters(), options,
                  lambda: {"val_nll_per_token": 0.0}, {"model": model, "sampler": sampler})
    return loop, model, sampler, family


DATA = torch.tensor([0, 0, 1, 2, 2, 2])
BEST = sum(c / 6 * math.log(c / 6) for c in (2, 1, 3))   # max of mean log p(x) over θ


def exact_log_px(model: Model, x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(model.table(), 1)[x].detach()


# ============================================================================ schedules
def test_threshold_decays_linearly_then_holds():
    tau = ThresholdSchedule(6.0, 3.0, 10000)
    assert tau(0) == 6.0 and tau(5000) == pytest.approx(4.5) and tau(10000) == 3.0
    assert tau(50000) == 3.0
    assert ThresholdSchedule(7.0, 3.5, 0)(0) == 3.5
    assert ThresholdSchedule(math.inf, math.inf, 10)(3) == math.inf
    ema = MovingAverage(0.9)
    assert ema.peek(10.0) == 10.0 and ema.value is None
    ema.update(10.0)
    assert ema.update(0.0) == pytest.approx(9.0)


def test_mstep_runs_only_while_the_ema_is_below_tau():
    torch.manual_seed(0)
    loop, model, sampler, _ = make_loop(tau=(1.0, 0.5))
    ema, g = None, 0
    for _ in range(40):
        before = model.theta.detach().clone()
        m = loop.train_step(DATA)
        # the gate is the average of the earlier batches (this batch's own loss at step 1)
        gate = m["e_loss"] if ema is None else ema
        ema = m["e_loss"] if ema is None else 0.9 * ema + 0.1 * m["e_loss"]
        tau = 1.0 + (0.5 - 1.0) * min(g / 10, 1.0)
        assert m["e_loss_ema"] == pytest.approx(ema) and m["tau"] == pytest.approx(tau)
        assert m["e_loss_gate"] == pytest.approx(gate)
        assert m["mstep"] == float(gate < tau)
        moved = not torch.equal(before, model.theta.detach())
        assert moved == (gate < tau)
        g += int(gate < tau)
        assert m["model_updates"] == g
    assert 0 < g < 40          # both regimes were visited


def test_estep_never_moves_theta_even_if_the_family_leaks_gradient():
    torch.manual_seed(0)
    loop, model, sampler, _ = make_loop(tau=(-math.inf, -math.inf), family_kw={"leak": True},
                                        estep_kw={"sleep_weight": 1.0})
    theta, logits = model.theta.detach().clone(), sampler.logits.detach().clone()
    for _ in range(5):
        m = loop.train_step(DATA)
        assert m["mstep"] == 0.0 and "sleep_nll" in m
    assert torch.equal(theta, model.theta.detach())
    assert not torch.equal(logits, sampler.logits.detach())


@pytest.mark.parametrize("where", ["estep", "mstep"])
def test_nonfinite_loss_stops_before_any_optimizer_step(where):
    torch.manual_seed(0)
    loop, model, sampler, family = make_loop()
    loop.train_step(DATA)
    state = {k: v.detach().clone() for k, v in [("theta", model.theta), ("phi", sampler.logits)]}
    opt_states = (repr(loop.model_optimizer.state_dict()),
                  repr(loop.estep.optimizer.state_dict()))
    ema, g = loop.ema.value, loop.model_updates
    if where == "estep":
        family.nan_reward = True
    else:  # only the M-step's scores are NaN
        real = family.log_joint
        family.log_joint = lambda batch, z, n: real(batch, z, n) * (
            math.nan if torch.is_grad_enabled() else 1.0)
    with pytest.raises(NonFiniteLoss):
        loop.train_step(DATA)
    assert torch.equal(state["theta"], model.theta.detach())
    assert torch.equal(state["phi"], sampler.logits.detach())
    assert opt_states == (repr(loop.model_optimizer.state_dict()),
                          repr(loop.estep.optimizer.state_dict()))
    assert loop.ema.value == ema and loop.model_updates == g
    assert all(p.grad is None for p in list(model.parameters()) + list(sampler.parameters()))


def test_importance_weighted_mstep_estimates_the_exact_gradient():
    """SGD with lr 1 makes Δθ = −∇ loss: compare it with ∇ mean_x log p(x) (exact)."""
    x = torch.tensor([0, 1, 2])

    def delta(importance_weighted: bool) -> torch.Tensor:
        torch.manual_seed(1)
        loop, model, _, _ = make_loop(
            model_scale=1.5, sampler_lr=0.0,
            options_kw={"mstep_samples": 20000, "importance_weighted": importance_weighted,
                        "model_grad_clip": 0.0},
            grammar_opt=lambda m: torch.optim.SGD(m.parameters(), lr=1.0))
        before = model.theta.detach().clone()
        exact_model = Model(1.5)
        log_px = torch.logsumexp(exact_model.table(), 1)[x]
        exact = torch.autograd.grad(log_px.mean(), exact_model.theta)[0]
        loop.train_step(x)
        return model.theta.detach() - before, exact

    def compare(a, b):
        cos = float(torch.nn.functional.cosine_similarity(a, b, 0))
        return cos, float((a - b).norm() / b.norm())

    weighted, exact = delta(True)
    cos, rel = compare(weighted, exact)
    assert cos > 0.99 and rel < 0.05, (cos, rel)
    plain, _ = delta(False)      # samples from the (uniform) sampler, unweighted: biased
    cos_plain, rel_plain = compare(plain, exact)
    assert rel_plain > 0.2, (cos_plain, rel_plain)


UNEQUAL = torch.tensor([0, 1, 1, 1, 1])     # a coarsening s(z) of the latent, unequal parts
GROUPS = UNEQUAL.clone()                     # the one RaoBlackwellFamily reads


class RaoBlackwellFamily(ToyFamily):
    """M-step on log p(x, s(z)) = log Σ_{z' : s(z') = s(z)} p(x, z'), the rest summed out."""

    def mstep_log_likelihood(self, batch, z, n):
        table = self.model.table()
        grouped = torch.stack([torch.logsumexp(table[:, GROUPS == g], 1) for g in (0, 1)], 1)
        return grouped[batch.repeat_interleave(n), GROUPS[z]]


def rao_blackwell_delta(importance_weighted: bool, samples: int, groups=UNEQUAL):
    torch.manual_seed(1)
    GROUPS.copy_(groups)
    model, sampler = Model(1.5), Sampler()
    estep = GFlowNetEStep(RaoBlackwellFamily(model, sampler), build_objective("tb"),
                          torch.optim.SGD(sampler.parameters(), lr=0.0), sampler.parameters())
    options = EMOptions(mstep_samples=samples, importance_weighted=importance_weighted,
                        model_grad_clip=0.0)
    loop = EMLoop(estep.family, estep, torch.optim.SGD(model.parameters(), lr=1.0),
                  model.parameters(), options, lambda: {}, {"model": model})
    x = torch.tensor([0, 1, 2])
    before = model.theta.detach().clone()
    exact_model = Model(1.5)
    exact = torch.autograd.grad(torch.logsumexp(exact_model.table(), 1)[x].mean(),
                                exact_model.theta)[0]
    loop.train_step(x)
    return model.theta.detach() - before, exact


def test_rao_blackwellized_mstep_maximizes_the_familys_statistic():
    """One part holding every z: log p(x, s) = log p(x), so any single draw gives the exact
    gradient; with unequal parts the importance weights must come from log p(x, z), not from
    the statistic (which would weight each part by its size): the estimate is then unbiased."""
    delta, exact = rao_blackwell_delta(False, 1, groups=torch.zeros(K, dtype=torch.long))
    assert torch.allclose(delta, exact, atol=1e-12)
    try:
        delta, exact = rao_blackwell_delta(True, 20000)
        rel = float((delta - exact).norm() / exact.norm())
        assert rel < 0.05, rel
        plain, _ = rao_blackwell_delta(False, 20000)   # uniform draws, unweighted: biased
        assert float((plain - exact).norm() / exact.norm()) > 0.2
    finally:
        GROUPS.copy_(UNEQUAL)


def test_gfnem_fits_the_data_and_the_sampler_tracks_the_posterior():
    torch.manual_seed(0)
    loop, model, sampler, _ = make_loop(tau=(2.0, 0.5), estep_kw={"samples_per_input": 8},
                                        model_scale=0.5)
    start = float(exact_log_px(model, DATA).mean())
    assert start < BEST - 0.08
    for _ in range(400):
        metrics = loop.train_step(DATA)
    end = float(exact_log_px(model, DATA).mean())
    assert end > BEST - 0.01 and loop.model_updates > 50
    posterior = torch.softmax(model.table().detach(), 1)
    q = torch.softmax(sampler.logits.detach(), 1)
    l1 = float((posterior - q).abs().sum(1).max())
    assert l1 < 0.1, l1
    assert metrics["obj_log_z"] == pytest.approx(
        float(exact_log_px(model, DATA).mean()), abs=0.1)


def test_exact_resume_continues_identically():
    def run(loop, steps):
        return [loop.train_step(DATA) for _ in range(steps)]

    torch.manual_seed(3)
    a, model_a, sampler_a, _ = make_loop(tau=(1.5, 0.5), estep_kw={"sleep_weight": 0.5})
    run(a, 6)
    saved, rng = copy.deepcopy(a.state_dict()), torch.get_rng_state()
    tail_a = run(a, 6)
    b, model_b, sampler_b, _ = make_loop(tau=(1.5, 0.5), estep_kw={"sleep_weight": 0.5})
    b.load_state_dict(saved)
    torch.set_rng_state(rng)
    tail_b = run(b, 6)
    assert tail_a == tail_b
    assert torch.equal(model_a.theta, model_b.theta)
    assert torch.equal(sampler_a.logits, sampler_b.logits)
    assert a.model_updates == b.model_updates and a.ema.value == b.ema.value


def test_local_search_hooks_and_their_guards():
    torch.manual_seed(0)
    loop, _, _, family = make_loop(
        estep_kw={"exploration": Exploration(temperature=1.5, local_search_rounds=1),
                  "mstep_local_search_rounds": 3})
    m = loop.train_step(DATA)
    assert family.refined == 2 and "e_loss_local_search" in m and "mstep_ls_acceptance" in m
    loop.options.importance_weighted = True
    with pytest.raises(ValueError, match="importance-weighted"):
        loop.train_step(DATA)


def test_the_path_loss_of_local_search_is_the_mean_squared_residual():
    torch.manual_seed(0)
    loop, _, sampler, _ = make_loop(estep_kw={"exploration": Exploration(
        local_search_rounds=1, local_search_loss="path")})
    before = sampler.logits.detach().clone()
    m = loop.train_step(DATA)
    assert m["e_loss_local_search"] == pytest.approx(0.25)
    assert not torch.equal(before, sampler.logits.detach())
    with pytest.raises(ValueError, match="local_search_loss"):
        make_loop(estep_kw={"exploration": Exploration(local_search_loss="nope")})


def test_on_policy_objectives_refuse_exploration():
    torch.manual_seed(0)
    loop, _, _, _ = make_loop(objective="reverse_kl",
                              estep_kw={"exploration": Exploration(temperature=2.0)})
    with pytest.raises(GfnemError, match="on-policy"):
        loop.train_step(DATA)
    loop, _, _, _ = make_loop(objective="reverse_kl")
    assert math.isfinite(loop.train_step(DATA)["e_loss"])


def test_baseline_estep_runs_the_mstep_every_step_on_exact_posterior_draws():
    torch.manual_seed(0)
    model = Model(0.5)
    family = ToyFamily(model, Sampler())

    def exact_draws(batch, n):
        post = torch.softmax(model.table().detach(), 1)[batch.repeat_interleave(n)]
        return torch.multinomial(post, 1).squeeze(1), {"drawn": float(n)}

    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    loop = EMLoop(family, PosteriorEStep(exact_draws), opt, model.parameters(),
                  EMOptions(mstep_samples=2), lambda: {}, {"model": model})
    assert float(exact_log_px(model, DATA).mean()) < BEST - 0.08
    for step in range(1, 101):
        m = loop.train_step(DATA)
        assert m["mstep"] == 1.0 and m["model_updates"] == step and "e_loss" not in m
    assert m["loss"] == m["mstep_loss"] and m["drawn"] == 2.0
    assert float(exact_log_px(model, DATA).mean()) > BEST - 0.01
    with pytest.raises(ValueError):
        PosteriorEStep(exact_draws).draw(DATA, 1, True)
    assert isinstance(PosteriorEStep(exact_draws).draw(DATA, 1, False), Draw)


def test_alternating_phases_move_theta_then_phi_in_blocks():
    """alternate_every = 3: steps 0-2 move θ only (fresh draws, no E-loss), 3-5 φ only (and the
    sleep phase), then θ again; the gate is never consulted."""
    torch.manual_seed(0)
    loop, model, sampler, _ = make_loop(tau=(-math.inf, -math.inf),
                                        estep_kw={"sleep_weight": 0.5},
                                        options_kw={"alternate_every": 3})
    for step in range(9):
        theta, logits = model.theta.detach().clone(), sampler.logits.detach().clone()
        m = loop.train_step(DATA)
        in_m = step // 3 % 2 == 0
        assert m["mstep"] == float(in_m) and m["estep"] == float(not in_m)
        assert (not torch.equal(theta, model.theta.detach())) == in_m
        assert (not torch.equal(logits, sampler.logits.detach())) == (not in_m)
        assert ("e_loss" in m) == (not in_m) and ("sleep_nll" in m) == (not in_m)
    assert loop.model_updates == 6
    with pytest.raises(ValueError, match="reuse"):
        make_loop(estep_kw={"mstep_reuse_samples": True}, options_kw={"alternate_every": 3})


def test_an_em_step_waits_for_the_device_once_for_the_checks_and_figures(monkeypatch):
    """Every tensor -> host conversion (float, int, bool, item, tolist) in an EM step with an
    M-step and local search, after the first: `settle`'s one transfer, no more (the gate
    reads the moving average the host has). (Adam reads its step counters, which torch keeps
    on the host, inside `optimizer.step`.)"""
    torch.manual_seed(0)
    loop, *_ = make_loop(estep_kw={"exploration": Exploration(local_search_rounds=1)})
    loop.train_step(DATA)
    waits, stepping = [], []
    for optimizer in (loop.estep.optimizer, loop.model_optimizer):
        def step(*args, _real=optimizer.step, **kwargs):
            stepping.append(True)
            try:
                return _real(*args, **kwargs)
            finally:
                stepping.pop()
        monkeypatch.setattr(optimizer, "step", step)
    for name in ("__float__", "__int__", "__bool__", "item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            if not stepping:
                waits.append(_name)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    metrics = loop.train_step(DATA)
    monkeypatch.undo()
    assert metrics["mstep"] == 1.0 and "e_loss_local_search" in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    assert waits == ["tolist"], waits
