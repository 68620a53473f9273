"""Discrete VAEs over binary images, trained by GFlowNet-EM (DESIGN.md §7; Hu et al. 2023).

code_grids.py  the latent z: batches of h×w code grids (−1 = empty cell), enumeration
data/          MNIST (threshold, static), the shapes set from a known model, disk format,
               load_image_set, batching
models/        decoder, priors (uniform, autoregressive), DiscreteVAE: log p(x, z)
gflownet/      the grid GFlowNet: state, image trunk + policy, raster / any-order sampler

Not built yet (the rest of issue 12): training/ (family, EM methods, baselines),
inference/, evaluation/, recipe.py, run.py.
"""
