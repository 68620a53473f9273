"""The discrete-VAE baselines GFlowNet-EM is compared with (DESIGN.md §7; Hu et al. 2023,
§5.2), each a trainer `Method` over `ImageBatch`es on the shared `DiscreteVAE`.

encoder.py       FactorizedEncoder: q(z | x) = Π_cells Cat (or VQ-VAE's per-cell vectors),
                 Gumbel-max sampling, log q, exact entropy
common.py        BaselineMethod (device, step count, private generator, state, validation),
                 decoding embeddings, the prior on straight-through one-hots, the MC ELBO
vqvae.py         VQVAEMethod, EMACodebook: nearest code, straight-through, commitment, EMA
gumbel.py        GumbelSoftmaxMethod: straight-through Gumbel-softmax, annealed temperature
reinforce.py     ReinforceLOOMethod: score function with a leave-one-out baseline over N samples
exact_em.py      ExactEMMethod: log p(x) summed over every grid, for grids that enumerate

Every `validate()` returns val_nll_nats, val_bits_per_dim and val_nll_is_bound (True except
for exact EM: the ELBO, or VQ-VAE's −log p(x, z*)).
"""
from vae.training.baselines.encoder import FactorizedEncoder
from vae.training.baselines.exact_em import ExactEMMethod
from vae.training.baselines.gumbel import GumbelSoftmaxMethod
from vae.training.baselines.reinforce import ReinforceLOOMethod
from vae.training.baselines.vqvae import EMACodebook, VQVAEMethod

BASELINES = {"vqvae": VQVAEMethod, "gumbel": GumbelSoftmaxMethod,
             "reinforce": ReinforceLOOMethod, "exact_em": ExactEMMethod}

__all__ = ["BASELINES", "FactorizedEncoder", "VQVAEMethod", "EMACodebook",
           "GumbelSoftmaxMethod", "ReinforceLOOMethod", "ExactEMMethod"]
