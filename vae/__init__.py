"""Discrete VAEs over binary images, trained by GFlowNet-EM (DESIGN.md §7; Hu et al. 2023).

code_grids.py  the latent z: batches of h×w code grids (−1 = empty cell), enumeration
data/          MNIST (threshold, static), the shapes set from a known model, disk format,
               load_image_set, batching
models/        decoder, priors (uniform, autoregressive), DiscreteVAE: log p(x, z)
gflownet/      the grid GFlowNet: state, image trunk + policy, raster / any-order sampler
training/      ImageFamily (the engine's SamplerFamily), em_methods (recipe -> Method),
               baselines (VQ-VAE, Gumbel-softmax, REINFORCE-LOO, exact EM)
inference/     a trained run on images: proposals, prior samples, reconstructions, codes, NLL
evaluation/    importance-sampled NLL, PNG mosaics
recipe.py      the recipe schema (family vae)     run.py  train_run / load_run
"""
