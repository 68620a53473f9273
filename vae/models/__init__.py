"""The discrete VAE's generative model p_θ(x, z) over binary images and code grids.

decoder.py  the paper's Bernoulli decoder: code dictionary, 1×1 conv, residual blocks,
            transposed convs up to the image
prior.py    UniformPrior, AutoregressivePrior (masked convolutions in raster order)
dvae.py     DiscreteVAE: log p(x, z), sampling, exact enumeration for tiny grids
"""
from vae.models.decoder import Decoder
from vae.models.dvae import DiscreteVAE
from vae.models.prior import AutoregressivePrior, UniformPrior, build_prior

__all__ = ["Decoder", "DiscreteVAE", "UniformPrior", "AutoregressivePrior", "build_prior"]
