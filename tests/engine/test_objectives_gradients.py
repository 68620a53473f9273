"""Every gradient estimator against the exact gradient of its divergence, by enumeration.

Target (tests/toy_targets.py): the multiset DAG, several trajectories per object, uniform
P_B, 2 inputs; P*(τ | x) = P_B(τ | x) R(x, z) / Z(x). The sampler sits at a partly trained
point (exact policy + N(0, 0.5²) logit noise, L1 ≈ 0.46). Exact gradients come from autograd
through the enumerated divergence (mean over the 2 inputs, like the loss); the expected
estimator from one call on `batches` copies of the inputs, which equals the average of the
gradients of `batches` separate batches because the loss is a mean over inputs.

Compared quantities (what each estimator is unbiased or consistent for):
  reverse_kl  ∇ KL(P_F ‖ P*)                         (LOO: unbiased)
  tb, vargrad ∇_policy of the loss / 2 = ∇ KL(P_F ‖ P*) (on-policy, any log Z; VarGrad with
              the 1/(N−1) variance is 2× the LOO reverse-KL estimator)
  tsallis     per batch, estimate × exp(−(1−α) c_x) = Z^{1−α} ∇ T_α(P_F ‖ P*)  (unbiased once the
              random positive per-input factor exp((1−α) c_x) is divided out)
  forward_kl  ∇ KL(P* ‖ P_F), renyi ∇ D_α(P_F ‖ P*): self-normalised, consistent with O(1/N)
              bias, so tested at N = 128 (figures at N = 8 are printed).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gfnem_cli.engine.objectives import build_objective
from toy_targets import MultisetTarget, single_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def target():
    return MultisetTarget()


def exact_gradient(target, sampler, divergence):
    value = target.exact_divergence(sampler, divergence)
    return torch.autograd.grad(value, sampler.logits)[0]


def expected_gradient(target, sampler, objective, num_per_input, batches, seed=0,
                      undo_tsallis_shift=False, on_policy_flag=None, **sampling):
    inputs = torch.arange(target.num_inputs).repeat(batches)
    traj = target.sample(sampler, num_per_input, inputs=inputs,
                         generator=torch.Generator().manual_seed(seed), **sampling)
    if on_policy_flag is not None:
        traj.on_policy = on_policy_flag
    per_input = objective.per_input(traj)
    if undo_tsallis_shift:
        ell = traj.grouped(traj.log_pf - traj.log_pb - traj.log_reward).detach()
        per_input = per_input * torch.exp(-(1 - objective.alpha) * ell.mean(dim=1))
    return torch.autograd.grad(per_input.mean(), sampler.logits)[0]


def compare(estimate, exact):
    cos = F.cosine_similarity(estimate.flatten(), exact.flatten(), dim=0).item()
    rel = ((estimate - exact).norm() / exact.norm()).item()
    return cos, rel


CASES = {
    # name: (divergence compared to, N, batches, gradient scale, undo Tsallis shift)
    "reverse_kl": ("reverse_kl", 8, 4000, 1.0, False),
    "tsallis": ("tsallis_scaled", 8, 4000, 1.0, True),
    "tb": ("reverse_kl", 8, 4000, 0.5, False),
    "vargrad": ("reverse_kl", 8, 4000, 0.5, False),
    "forward_kl": ("forward_kl", 128, 500, 1.0, False),
    "renyi": ("renyi", 128, 500, 1.0, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_expected_gradient_matches_exact(target, name):
    divergence, num, batches, scale, undo = CASES[name]
    sampler = target.perturbed_sampler()
    exact = exact_gradient(target, sampler, divergence)
    estimate = scale * expected_gradient(target, sampler, build_objective(name), num, batches,
                                         undo_tsallis_shift=undo)
    cos, rel = compare(estimate, exact)
    print(f"\n[gradient] {name:<10} vs grad {divergence:<14} N={num:<3} batches={batches}: "
          f"cosine {cos:.4f}, relative error {rel:.3f}")
    assert cos > 0.99 and rel < 0.05


@pytest.mark.parametrize("name", ["forward_kl", "renyi"])
def test_self_normalised_bias_shrinks_with_n(target, name):
    """Consistency: the O(1/N) self-normalisation bias is visible at N = 8 and smaller at N = 128."""
    sampler = target.perturbed_sampler()
    exact = exact_gradient(target, sampler, name)
    errors = {}
    for num, batches in ((8, 4000), (128, 500)):
        cos, rel = compare(expected_gradient(target, sampler, build_objective(name), num, batches),
                           exact)
        errors[num] = rel
        print(f"\n[gradient] {name:<10} N={num:<3}: cosine {cos:.4f}, relative error {rel:.3f}")
    assert errors[128] < errors[8] / 2


def test_tsallis_raw_estimate_is_a_positive_rescaling(target):
    """Without undoing c_x, the estimate still points along ∇T_α (DESIGN §3)."""
    sampler = target.perturbed_sampler()
    exact = exact_gradient(target, sampler, "tsallis")
    estimate = expected_gradient(target, sampler, build_objective("tsallis"), 8, 4000)
    cos, rel = compare(estimate, exact)
    print(f"\n[gradient] tsallis raw (c_x kept) vs grad T_alpha: cosine {cos:.4f}, "
          f"norm ratio {(estimate.norm() / exact.norm()).item():.3f}")
    assert cos > 0.99


def test_inverted_forward_kl_weights_fail(target):
    """Negative control: the weight printed in the arXiv Lemma 2 (softmax(+ℓ)) is wrong, and this
    comparison detects it — so the tests above can fail."""
    sampler = target.perturbed_sampler()
    exact = exact_gradient(target, sampler, "forward_kl")
    inputs = torch.arange(target.num_inputs).repeat(500)
    traj = target.sample(sampler, 128, inputs=inputs, generator=torch.Generator().manual_seed(0))
    ell = traj.grouped(traj.log_pf - traj.log_pb - traj.log_reward).detach()
    inverted = torch.softmax(ell, dim=1)
    surrogate = -((inverted - 1 / 128) * traj.grouped(traj.log_pf)).sum(dim=1).mean()
    cos, rel = compare(torch.autograd.grad(surrogate, sampler.logits)[0], exact)
    print(f"\n[gradient] forward_kl with inverted weights: cosine {cos:.4f}, relative error {rel:.3f}")
    assert cos < 0.9


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl"])
def test_importance_weighting_recovers_on_policy_gradient(target, name):
    """Off-policy samples (ε = 0.3 uniform mixing, temperature 1.5): with importance weighting
    the expected gradient is again ∇ of the divergence of P_F; without it, it is not."""
    sampler = target.perturbed_sampler()
    exact = exact_gradient(target, sampler, name)
    num, batches = (16, 2000) if name == "reverse_kl" else (128, 500)
    sampling = dict(epsilon=0.3, temperature=1.5)
    weighted = expected_gradient(target, sampler, build_objective(name, importance_weighting=True),
                                 num, batches, **sampling)
    naive = expected_gradient(target, sampler, build_objective(name), num, batches,
                              on_policy_flag=True, **sampling)      # bypasses the guard
    cos_w, rel_w = compare(weighted, exact)
    cos_n, rel_n = compare(naive, exact)
    print(f"\n[off-policy] {name}: importance-weighted cosine {cos_w:.4f} rel {rel_w:.3f}; "
          f"unweighted cosine {cos_n:.4f} rel {rel_n:.3f}")
    assert cos_w > 0.99 and rel_w < 0.1
    assert rel_n > 2 * rel_w


def covariance_trace(gradients: torch.Tensor) -> float:
    centred = gradients - gradients.mean(dim=0, keepdim=True)
    return float(centred.pow(2).sum() / (gradients.shape[0] - 1))


def test_control_variates_reduce_variance(target):
    """Trace of the covariance of one batch's gradient (2 inputs × N = 8), 300 batches, same
    samples for every control variate. LOO must beat plain REINFORCE / plain SNIS."""
    sampler = target.perturbed_sampler()
    generator = torch.Generator().manual_seed(0)
    names = ["reverse_kl", "forward_kl", "renyi", "tsallis"]
    variants = ["none", "loo", "batch"]
    objectives = {(n, v): build_objective(n, control_variate=v) for n in names for v in variants}
    grads = {key: [] for key in objectives}
    for _ in range(300):
        traj = target.sample(sampler, 8, generator=generator)
        for key, objective in objectives.items():
            loss = objective(traj)
            grads[key].append(torch.autograd.grad(loss, sampler.logits, retain_graph=True)[0].flatten())
    print("\n[variance] trace of gradient covariance per batch (2 inputs x N=8, 300 batches)")
    print("| objective | none | LOO | batch a-hat | LOO / none | mean of 300, cos / rel. err.: LOO | batch |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        traces = {v: covariance_trace(torch.stack(grads[(name, v)])) for v in variants}
        divergence = "tsallis" if name == "tsallis" else name
        exact = exact_gradient(target, sampler, divergence).flatten()
        means = {v: compare(torch.stack(grads[(name, v)]).mean(0), exact) for v in ("loo", "batch")}
        print(f"| {name} | {traces['none']:.4g} | {traces['loo']:.4g} | {traces['batch']:.4g} | "
              f"{traces['loo'] / traces['none']:.3f} | {means['loo'][0]:.3f} / {means['loo'][1]:.3f} | "
              f"{means['batch'][0]:.3f} / {means['batch'][1]:.3f} |")
        assert traces["loo"] < traces["none"], name


def test_batch_coefficient_is_the_least_squares_scalar():
    """â minimises ‖G − a S‖² (da Silva et al. 2024, Eq. 6); parameters found from the graph
    agree with an explicit list."""
    from gfnem_cli.engine.objectives.control_variates import batch_coefficient
    torch.manual_seed(0)
    theta = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    other = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    features = torch.randn(6, 5, dtype=torch.float64)
    log_pf = torch.log_softmax(features @ theta + features @ other.sin(), dim=0)
    coefficients = torch.randn(6, dtype=torch.float64)
    raw, control = (coefficients * log_pf).sum(), log_pf.sum() * 0.3 + (log_pf * features[:, 0]).sum()
    a_hat = batch_coefficient(raw, control)
    assert a_hat == pytest.approx(batch_coefficient(raw, control, [theta, other]).item())
    g = torch.cat([x.flatten() for x in torch.autograd.grad(raw, [theta, other], retain_graph=True)])
    s = torch.cat([x.flatten() for x in torch.autograd.grad(control, [theta, other], retain_graph=True)])
    residual = lambda a: (g - a * s).pow(2).sum().item()  # noqa: E731
    assert residual(a_hat.item()) <= min(residual(a_hat.item() + d) for d in (-1e-3, 1e-3))
    assert a_hat.item() == pytest.approx((g @ s / (s @ s)).item())
