"""The grid GFlowNet of GFlowNet-EM for discrete VAEs (DESIGN.md §7): it samples code grids
z ~ q_φ(z | x) ≈ p_θ(z | x) without the conditional independence other discrete VAE encoders
impose.

grid.py     the state: a batch of partly filled grids, legal-action masks, fills
policy.py   image trunk (once per image), policy over the partial grid (logits per (cell,
            code), log-flow, log Z_φ(x))
sampler.py  GridSampler: raster or any-order batched rollouts -> engine Trajectories,
            teacher forcing (random order = a draw from the uniform P_B)
"""
from vae.gflownet.grid import GridState
from vae.gflownet.sampler import ORDERS, GridSampler

__all__ = ["GridState", "GridSampler", "ORDERS"]
