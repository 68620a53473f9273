"""The image family's evaluation and its place in the EM loop, checked on enumerable grids.

- the importance-sampled NLL is exact (for every M) when the proposal is the exact posterior,
  a bound above the exact NLL in expectation, and tighter with more samples;
- PNG mosaics decode back to their pixels;
- GFlowNet-EM runs through the engine's EMLoop with `ImageFamily` (E-step, gated M-step,
  sleep phase) and only the right parameters move.
"""
from __future__ import annotations

import math
import struct
import zlib

import pytest
import torch

from vae.code_grids import CodeGrids, enumerate_grids
from vae.data.batching import ImageBatch
from vae.evaluation.images import png_bytes, save_grid, tile
from vae.evaluation.likelihood import importance_sampled_nll
from vae.gflownet import GridSampler
from vae.models import Decoder, DiscreteVAE, UniformPrior
from vae.training.family import ImageFamily


def tiny_vae(seed: int = 5) -> DiscreteVAE:
    torch.manual_seed(seed)
    vae = DiscreteVAE(Decoder(3, (2, 2), (8, 8), embedding_dim=2, channels=8),
                      UniformPrior(3, (2, 2)))
    with torch.no_grad():
        for p in vae.decoder.upsample.parameters():
            p.mul_(4.0)
    return vae


class ExactPosteriorSampler:
    """A proposal equal to p(z | x): every importance weight is p(x), whatever z is drawn."""

    def __init__(self, vae):
        self.vae = vae

    def eval(self):
        return self

    def sample(self, images, n, generator=None, **_):
        log_post = self.vae.exact_log_posterior(images)                 # (B, G)
        pick = torch.multinomial(log_post.exp(), n, replacement=True, generator=generator)
        grids = enumerate_grids((2, 2), 3).codes[pick.flatten()]
        log_q = log_post.gather(1, pick).flatten()

        class T:  # the two fields the estimator reads, as the sampler's Trajectories has them
            z, log_pf, log_pb = CodeGrids(grids, 3), log_q, torch.zeros_like(log_q)
        return T


def test_importance_sampled_nll_is_exact_with_the_exact_posterior():
    vae = tiny_vae()
    x, _ = vae.sample(6, torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = -vae.exact_log_marginal(x)
    batches = [ImageBatch(x[:4], torch.arange(4)), ImageBatch(x[4:], torch.arange(4, 6))]
    estimates = importance_sampled_nll(vae, ExactPosteriorSampler(vae), batches, samples=50,
                                       also=(1, 10))
    assert sorted(estimates) == [1, 10, 50]
    for estimate in estimates.values():
        assert estimate.num_images == 6
        # log p(x, z) is float32 in the decoder: agreement to its rounding, not float64's
        assert estimate.nll_nats == pytest.approx(float(exact.mean()), abs=1e-4)
        assert estimate.nll_stderr == pytest.approx(float(exact.std() / math.sqrt(6)), abs=1e-4)
        assert estimate.bits_per_dim == pytest.approx(estimate.nll_nats / (64 * math.log(2)))


def test_importance_sampled_nll_bounds_the_exact_nll_and_tightens_with_m():
    vae = tiny_vae()
    x, _ = vae.sample(8, torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = float(-vae.exact_log_marginal(x).mean())
    torch.manual_seed(0)
    sampler = GridSampler(3, (2, 2), "any", channels=8, blocks=1)   # untrained: a poor q
    estimates = importance_sampled_nll(vae, sampler, [ImageBatch(x, torch.arange(8))],
                                       samples=2000, also=(1, 100), seed=3)
    elbo, m100, m2000 = (estimates[m].nll_nats for m in (1, 100, 2000))
    assert elbo > m100 > m2000 >= exact - 0.05          # Jensen: a bound, tighter with M
    assert m2000 - exact < 0.25 * (elbo - exact)        # and close to exact at M = 2000


def test_png_mosaic_decodes_to_its_pixels():
    images = torch.rand(5, 6, 7)
    mosaic = tile(images, columns=3, padding=1)
    assert mosaic.shape == (2 * 7 + 1, 3 * 8 + 1)
    assert torch.equal(mosaic[1:7, 1:8], images[0]) and torch.equal(mosaic[8:14, 1:8], images[3])
    data = png_bytes(mosaic)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (height, width) == tuple(mosaic.shape)
    offset, body = 8, b""
    while offset < len(data):                      # walk the chunks, checking every CRC
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        chunk = data[offset + 8:offset + 8 + length]
        crc = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])[0]
        assert crc == zlib.crc32(kind + chunk) & 0xFFFFFFFF
        body += chunk if kind == b"IDAT" else b""
        offset += 12 + length
    rows = torch.frombuffer(bytearray(zlib.decompress(body)), dtype=torch.uint8)
    rows = rows.view(height, width + 1)
    assert (rows[:, 0] == 0).all()
    assert torch.equal(rows[:, 1:], (mosaic * 255).round().to(torch.uint8))


def test_save_grid_is_read_by_matplotlib(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    images = (torch.rand(4, 5, 5) > 0.5).float()
    path = save_grid(images, tmp_path / "grid.png", columns=2, padding=1)
    back = torch.from_numpy(image.imread(str(path)))
    assert torch.allclose(back, tile(images, 2, 1), atol=1 / 255)


def test_gflownet_em_runs_through_the_engine_loop():
    from gfnem_cli.engine import EMLoop, EMOptions, Exploration, GFlowNetEStep
    from gfnem_cli.engine.objectives import build_objective

    vae = tiny_vae()
    x, _ = vae.sample(4, torch.Generator().manual_seed(2))
    sampler = GridSampler(3, (2, 2), "raster", channels=8, blocks=1)
    family = ImageFamily(vae, sampler, torch.device("cpu"))
    estep = GFlowNetEStep(family, build_objective("tb"),
                          torch.optim.Adam(sampler.parameters(), lr=1e-3), sampler.parameters(),
                          samples_per_input=2, exploration=Exploration(), sleep_weight=1.0,
                          sleep_count=3)
    loop = EMLoop(family, estep, torch.optim.Adam(vae.parameters(), lr=1e-3), vae.parameters(),
                  EMOptions(), lambda: {}, {"model": vae, "sampler": sampler})
    before_model = [p.detach().clone() for p in vae.parameters()]
    before_sampler = [p.detach().clone() for p in sampler.parameters()]
    batch = ImageBatch(x, torch.arange(4))
    metrics = loop.train_step(batch)
    assert math.isfinite(metrics["e_loss"]) and math.isfinite(metrics["sleep_nll"])
    assert math.isfinite(metrics["mstep_nll_per_image"])     # the family names its unit
    assert loop.model_updates == 1                         # τ = ∞: an M-step every step
    assert any(not torch.equal(a, b) for a, b in zip(before_model, vae.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_sampler, sampler.parameters()))
    z = family.sample(batch, 3, Exploration(), False).z
    assert family.log_joint(batch, z, 3).shape == (12,)
    dreams, grids = family.dream(5)
    assert dreams.shape == (5, 8, 8) and family.log_pf_of(dreams, grids).shape == (5,)
