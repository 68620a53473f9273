"""The VAE baselines (VQ-VAE, straight-through Gumbel-softmax, REINFORCE-LOO, exact EM) on
tiny problems: training moves the right way, resume is exact, estimators agree with
enumeration on a 2×2 grid, the EMA codebook matches a hand computation, and a non-finite
loss changes nothing."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.trainer import NonFiniteLoss
from vae.code_grids import enumerate_grids
from vae.data.batching import ImageBatch
from vae.data.shapes import ShapesModel
from vae.models import AutoregressivePrior, Decoder, DiscreteVAE, UniformPrior
from vae.training.baselines import (BASELINES, EMACodebook, ExactEMMethod, FactorizedEncoder,
                                    GumbelSoftmaxMethod, ReinforceLOOMethod, VQVAEMethod)
from gfnem_cli.engine import checked_step
from vae.training.baselines.common import decode_embeddings, prior_log_prob_relaxed
from vae.training.baselines.encoder import log_q

GRID, K = (2, 2), 4
METHODS = sorted(BASELINES)


def shapes(count: int, seed: int = 0) -> torch.Tensor:
    """8×8 images from a 2×2, K = 4 shapes model (4-pixel stroke patches, 5% noise)."""
    model = ShapesModel(GRID, K, patch=4, flip=0.05)
    return model.sample(count, torch.Generator().manual_seed(seed))[0]


def make_vae(k: int = K, prior: str = "uniform", embedding_dim: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    p = UniformPrior(k, GRID) if prior == "uniform" else AutoregressivePrior(k, GRID, 8, 2)
    return DiscreteVAE(Decoder(k, GRID, (8, 8), embedding_dim=embedding_dim, channels=16), p)


def make_method(name: str, prior: str = "uniform", seed: int = 0, valid=None, lr=3e-3, **kw):
    vae = make_vae(prior=prior, seed=seed)
    valid = [ImageBatch(shapes(32, 1), torch.arange(32))] if valid is None else valid
    if name == "exact_em":
        return ExactEMMethod(vae, valid, lr=lr, seed=seed, **kw)
    outputs = vae.decoder.dictionary.embedding_dim if name == "vqvae" else K
    torch.manual_seed(seed + 100)
    encoder = FactorizedEncoder(outputs, GRID, channels=16)
    return BASELINES[name](vae, encoder, valid, lr=lr, seed=seed, **kw)


def batches(count: int, size: int = 32) -> list[ImageBatch]:
    images = shapes(count * size, 2)
    return [ImageBatch(images[i * size:(i + 1) * size], torch.arange(size)) for i in range(count)]


# ------------------------------------------------------------------ training and resume
@pytest.mark.parametrize("name", METHODS)
def test_each_baseline_trains_with_finite_decreasing_loss(name):
    method = make_method(name)
    before = method.validate()
    train = batches(8)
    losses = [method.train_step(train[i % 8])["nll_nats"] for i in range(48)]
    after = method.validate()
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-8:]) < sum(losses[:8]), losses
    assert after["val_nll_nats"] < before["val_nll_nats"] - 1.0, (before, after)
    assert after["val_nll_is_bound"] is (name != "exact_em")
    assert after["val_bits_per_dim"] == pytest.approx(after["val_nll_nats"] / (64 * math.log(2)))


@pytest.mark.parametrize("name", ["gumbel", "reinforce", "vqvae"])
def test_autoregressive_prior_steps_and_learns(name):
    method = make_method(name, prior="autoregressive")
    prior_before = copy.deepcopy(method.vae.prior.state_dict())
    for batch in batches(3):
        assert math.isfinite(method.train_step(batch)["loss"])
    moved = [not torch.equal(a, method.vae.prior.state_dict()[k]) for k, a in prior_before.items()]
    assert any(moved)


def all_state(method) -> list[torch.Tensor]:
    out = []
    for module in method.modules.values():
        out += [t.detach().clone() for t in module.state_dict().values()]
    for state in method.optimizer.state_dict()["state"].values():
        out += [v.clone() for v in state.values() if torch.is_tensor(v)]
    return out


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_resumes_exactly(name):
    train, k = batches(6, 16), 3
    straight = make_method(name)
    for batch in train:
        straight.train_step(batch)
    first = make_method(name)
    for batch in train[:k]:
        first.train_step(batch)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make_method(name, seed=7)            # other initial weights and generator
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    for batch in train[k:]:
        resumed.train_step(batch)
    assert resumed.steps == straight.steps == 6
    for a, b in zip(all_state(straight), all_state(resumed), strict=True):
        assert torch.equal(a, b)
    assert resumed.validate() == straight.validate()


def test_wrong_state_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="cannot load"):
        make_method("gumbel").load_state_dict(make_method("reinforce").state_dict())
    with pytest.raises(GfnemError, match="samples >= 2"):
        make_method("reinforce", samples=1)
    big = DiscreteVAE(Decoder(4, (4, 4), (28, 28), channels=8), UniformPrior(4, (4, 4)))
    with pytest.raises(GfnemError, match="4,294,967,296") as error:
        ExactEMMethod(big, [])
    assert error.value.hint and "2x2" in error.value.hint
    with pytest.raises(GfnemError, match="encoder gives 4"):
        VQVAEMethod(make_vae(), FactorizedEncoder(K, GRID, 8), [])


# ------------------------------------------------------------------ against enumeration
def sharp_tiny_problem():
    """2×2, K = 3, a decoder sharpened so the posterior is neither flat nor one-hot."""
    torch.manual_seed(5)
    vae = DiscreteVAE(Decoder(3, GRID, (8, 8), embedding_dim=2, channels=8), UniformPrior(3, GRID))
    with torch.no_grad():
        for p in vae.decoder.upsample.parameters():
            p.mul_(6.0)
    x, _ = vae.sample(1, torch.Generator().manual_seed(0))
    encoder = FactorizedEncoder(3, GRID, 8)
    with torch.no_grad():
        for p in encoder.head.parameters():
            p.mul_(3.0)
    return vae, encoder, x


def exact_elbo(vae, encoder, x) -> torch.Tensor:
    """Σ_z q(z | x) [log p(x, z) − log q(z | x)] over all 81 grids (differentiable)."""
    log_probs = torch.log_softmax(encoder(x), -1)
    grids = enumerate_grids(GRID, 3).codes.view(81, 4)
    lq = log_q(log_probs.expand(81, -1, -1), grids).double()
    return (lq.exp() * (vae.exact_log_joint_table(x)[0] - lq)).sum()


def cosine(a, b) -> float:
    a = torch.cat([t.flatten() for t in a]).double()
    b = torch.cat([t.flatten() for t in b]).double()
    return float(a @ b / (a.norm() * b.norm()))


def test_reinforce_loo_gradient_is_unbiased_against_the_exact_elbo_gradient():
    vae, encoder, x = sharp_tiny_problem()
    method = ReinforceLOOMethod(vae, encoder, [], samples=4, seed=1)
    decoder, enc = list(vae.decoder.parameters()), list(encoder.parameters())
    exact = torch.autograd.grad(exact_elbo(vae, encoder, x), decoder + enc)
    loss, _ = method.loss(x.expand(3000, -1, -1))          # 3000 × 4 draws of the estimator
    estimate = [-g for g in torch.autograd.grad(loss, decoder + enc)]
    n = len(decoder)
    assert cosine(estimate[:n], exact[:n]) > 0.99           # pathwise, decoder
    assert cosine(estimate[n:], exact[n:]) > 0.99           # score function + LOO, encoder
    norm = lambda gs: float(torch.cat([g.flatten() for g in gs]).norm())   # noqa: E731
    assert norm(estimate[n:]) == pytest.approx(norm(exact[n:]), rel=0.1)


def test_gumbel_elbo_at_low_temperature_matches_the_enumerated_elbo():
    vae, encoder, x = sharp_tiny_problem()
    method = GumbelSoftmaxMethod(vae, encoder, [], seed=2, tau_min=0.05)
    with torch.no_grad():
        exact = float(exact_elbo(vae, encoder, x))
        draws = method.relaxed_elbo(x.expand(20000, -1, -1), tau=0.05).double()
    stderr = float(draws.std()) / math.sqrt(draws.numel())
    assert abs(float(draws.mean()) - exact) < 4 * stderr + 1e-3, (float(draws.mean()), exact)
    with torch.no_grad():
        assert exact < float(vae.exact_log_marginal(x)[0])
    # the forward pass is a hard sample, so the estimate is unbiased at any τ; τ anneals
    assert method.temperature(0) == 1.0 and method.temperature(10 ** 9) == 0.05


def test_exact_em_nll_is_the_enumerated_nll_and_decreases():
    valid = [ImageBatch(shapes(8, 3), torch.arange(8))]
    method = make_method("exact_em", valid=valid)
    grids = enumerate_grids(GRID, K).codes
    with torch.no_grad():       # brute force: the model's pointwise log p(x, z) on every grid
        joint = method.vae.log_joint_grouped(valid[0].images, grids.repeat(8, 1, 1), len(grids))
        truth = float(-torch.logsumexp(joint.double().view(8, -1), 1).mean())
    before = method.validate()
    assert before["val_nll_nats"] == pytest.approx(truth, abs=1e-3)
    assert before["val_nll_is_bound"] is False
    for _ in range(10):
        method.train_step(valid[0])
    assert method.validate()["val_nll_nats"] < truth - 1.0


# ------------------------------------------------------------------ VQ-VAE's codebook
def hand_ema(steps, k, decay, eps):
    """The EMA of van den Oord et al. (appendix A.1), zero-debiased, Laplace-smoothed: loops."""
    n = [0.0] * k
    m = [[0.0, 0.0] for _ in range(k)]
    for t, (vectors, codes) in enumerate(steps, 1):
        for j in range(k):
            count = sum(1 for c in codes if c == j)
            total = [sum(v[d] for v, c in zip(vectors, codes) if c == j) for d in range(2)]
            n[j] = decay * n[j] + (1 - decay) * count
            m[j] = [decay * m[j][d] + (1 - decay) * total[d] for d in range(2)]
        debias = 1 - decay ** t
        nn_ = [v / debias for v in n]
        whole = sum(nn_)
        smoothed = [(v + eps) / (whole + k * eps) * whole for v in nn_]
        book = [[m[j][d] / debias / smoothed[j] for d in range(2)] for j in range(k)]
    return book


def test_ema_codebook_matches_a_hand_computed_update():
    steps = [([[1.0, 2.0], [3.0, 0.0], [-1.0, 1.0]], [0, 0, 2]),
             ([[0.5, 0.5], [2.0, -2.0]], [1, 0])]
    ema = EMACodebook(3, 2, decay=0.6, epsilon=0.1)
    for vectors, codes in steps:
        book = ema.update(torch.tensor(vectors), torch.tensor(codes))
    assert torch.allclose(book, torch.tensor(hand_ema(steps, 3, 0.6, 0.1)), atol=1e-6)
    # one update, default settings: debiasing makes it the smoothed mean of assigned vectors
    one = EMACodebook(3, 2).update(torch.tensor(steps[0][0]), torch.tensor(steps[0][1]))
    smooth = lambda c: (c + 1e-5) / (3 + 3e-5) * 3               # noqa: E731
    assert torch.allclose(one[0], torch.tensor([4.0, 2.0]) / smooth(2))
    assert torch.allclose(one[1], torch.zeros(2))            # an unused code's mean is 0
    assert torch.allclose(one[2], torch.tensor([-1.0, 1.0]) / smooth(1))


def test_vqvae_step_puts_the_ema_update_into_the_decoder_dictionary():
    method = make_method("vqvae")
    batch = batches(1, 16)[0]
    with torch.no_grad():
        z_e, codes = method.encode(batch.images)
    method.train_step(batch)
    z_e, codes = z_e.reshape(-1).tolist(), codes.reshape(-1).tolist()
    book = [[sum(v for v, c in zip(z_e, codes) if c == j)] for j in range(K)]
    counts = [codes.count(j) for j in range(K)]
    n = len(codes)
    expected = [[book[j][0] / ((counts[j] + 1e-5) / (n + K * 1e-5) * n)] for j in range(K)]
    assert torch.allclose(method.vae.decoder.dictionary.weight, torch.tensor(expected), atol=1e-5)
    assert all(p is not method.vae.decoder.dictionary.weight
               for group in method.optimizer.param_groups for p in group["params"])


# ------------------------------------------------------------------ pieces and failures
def test_decoding_embeddings_and_relaxed_prior_agree_with_the_models():
    vae = make_vae(k=3, prior="autoregressive", embedding_dim=2)
    codes = enumerate_grids(GRID, 3).codes
    with torch.no_grad():
        assert torch.allclose(decode_embeddings(vae.decoder, vae.decoder.dictionary(codes)),
                              vae.decoder(codes))
        one_hot = torch.nn.functional.one_hot(codes, 3).float()
        assert torch.allclose(prior_log_prob_relaxed(vae.prior, one_hot),
                              vae.prior.log_prob(codes), atol=1e-5)
        uniform = UniformPrior(3, GRID)
        assert torch.allclose(prior_log_prob_relaxed(uniform, one_hot), uniform.log_prob(codes))


@pytest.mark.parametrize("name", METHODS)
def test_non_finite_loss_changes_nothing(name):
    method = make_method(name)
    train = batches(3, 16)
    method.train_step(train[0])
    method.train_step(train[1])                       # the optimizer has state
    before, steps = all_state(method), method.steps
    honest = method.loss
    method.loss = lambda images: (lambda out: (out[0] * float("nan"), out[1]))(honest(images))
    with pytest.raises(NonFiniteLoss):
        method.train_step(train[2])
    assert method.steps == steps
    assert all(p.grad is None for p in method._all_parameters())
    for a, b in zip(before, all_state(method), strict=True):
        assert torch.equal(a, b)
    del method.loss
    assert math.isfinite(method.train_step(train[2])["loss"])


def test_checked_step_refuses_a_non_finite_gradient_of_a_finite_loss():
    weight = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    with pytest.raises(NonFiniteLoss):
        checked_step(weight.sqrt().sum(), optimizer, [weight], max_norm=1.0)   # d√w/dw at 0
    assert weight.grad is None and torch.equal(weight.detach(), torch.tensor([0.0, 1.0]))
    assert not optimizer.state
    norm = checked_step((weight ** 2).sum(), optimizer, [weight], max_norm=1.0)
    assert norm == pytest.approx(2.0)
    assert weight.detach()[1] < 1.0
