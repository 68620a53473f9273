"""Code grids, decoder, priors and the discrete VAE, checked against enumeration."""
from __future__ import annotations

import math

import pytest
import torch

from vae.code_grids import CodeGrids, enumerate_grids, grid_index
from vae.models import AutoregressivePrior, Decoder, DiscreteVAE, UniformPrior
from vae.models.decoder import upsampling_sizes


def tiny_vae(prior="uniform", seed=0, image=(8, 8)) -> DiscreteVAE:
    torch.manual_seed(seed)
    grid, k = (2, 2), 3
    p = UniformPrior(k, grid) if prior == "uniform" else AutoregressivePrior(k, grid, 8, 2)
    return DiscreteVAE(Decoder(k, grid, image, embedding_dim=2, channels=8), p)


def test_enumeration_and_index_round_trip():
    grids = enumerate_grids((2, 2), 3)
    assert len(grids) == 81 and grids.codes.shape == (81, 2, 2)
    assert torch.equal(grid_index(grids), torch.arange(81))
    assert torch.unique(grids.flat(), dim=0).shape[0] == 81
    assert grids.codes[5].flatten().tolist() == [0, 0, 1, 2]        # 5 = 012 in base 3
    with pytest.raises(ValueError, match="too many"):
        enumerate_grids((4, 4), 10)
    empty = CodeGrids.empty(2, (2, 2), 3)
    assert not empty.filled().any() and not empty.is_complete().any()
    with pytest.raises(ValueError):
        CodeGrids(torch.full((1, 2, 2), 3), 3).check()


def test_decoder_paper_size_and_upsampling_chain():
    assert upsampling_sizes(4, 28) == [4, 7, 14, 28]
    assert upsampling_sizes(2, 8) == [2, 4, 8]
    with pytest.raises(ValueError, match="cannot be upsampled"):
        upsampling_sizes(3, 28)
    decoder = Decoder(4)          # the paper's: 4x4 grid, D = 1, 128 channels, 28x28
    assert decoder.dictionary.weight.shape == (4, 1)
    sizes = [m.out_channels for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert sizes == [128, 128, 1]
    codes = torch.randint(4, (3, 4, 4))
    assert decoder(codes).shape == (3, 28, 28)
    x = torch.randint(2, (3, 28, 28))
    manual = (x * torch.nn.functional.logsigmoid(decoder(codes))
              + (1 - x) * torch.nn.functional.logsigmoid(-decoder(codes))).flatten(1).sum(1)
    assert torch.allclose(decoder.log_likelihood(x, codes), manual, atol=1e-3)


@pytest.mark.parametrize("kind", ["uniform", "autoregressive"])
def test_priors_normalize_over_every_grid(kind):
    vae = tiny_vae(kind)
    grids = enumerate_grids((2, 2), 3).codes
    total = vae.prior.log_prob(grids).detach().double().exp().sum()
    assert abs(float(total) - 1.0) < 1e-5
    if kind == "uniform":
        assert torch.allclose(vae.prior.log_prob(grids), torch.full((81,), -4 * math.log(3)))


def test_autoregressive_prior_is_causal_in_raster_order():
    prior = AutoregressivePrior(3, (3, 3), 8, 3)
    torch.manual_seed(1)
    for p in prior.parameters():
        torch.nn.init.normal_(p)
    base = torch.randint(3, (1, 3, 3))
    logits = prior.logits(base)[0].flatten(0, 1)
    for cell in range(9):
        changed = base.clone().flatten()
        changed[cell] = (changed[cell] + 1) % 3
        other = prior.logits(changed.view(1, 3, 3))[0].flatten(0, 1)
        same = torch.isclose(logits, other, atol=1e-6).all(1)
        assert same[:cell + 1].all()            # cells up to the changed one do not see it
        if cell < 8:
            assert not same[cell + 1:].all()    # some later cell does


def test_exact_tables_match_pointwise_scores():
    vae = tiny_vae("autoregressive")
    images, z = vae.sample(5, torch.Generator().manual_seed(0))
    assert images.shape == (5, 8, 8) and images.dtype == torch.uint8 and z.codes.shape == (5, 2, 2)
    table = vae.exact_log_joint_table(images)
    grids = enumerate_grids((2, 2), 3).codes
    with torch.no_grad():
        direct = vae.log_joint_grouped(images, grids.repeat(5, 1, 1), 81).view(5, 81)
    assert torch.allclose(table, direct.double(), atol=1e-3)
    post = vae.exact_log_posterior(images)
    assert torch.allclose(post.exp().sum(1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(vae.exact_log_marginal(images), torch.logsumexp(direct.double(), 1),
                          atol=1e-3)
