"""What a trained image run does to images (the commands `sample`, `parse`, `evaluate`).

proposals.py  one posterior proposal per method: the grid GFlowNet, a baseline's factorized
              encoder, VQ-VAE's nearest code, exact enumeration; each draws code grids with
              log q − log P_B, so one importance-sampling estimator serves them all
images.py     prior samples, reconstructions from posterior samples, best sampled code
              grids, and the test NLL of a run (M, M = 1, M = 100, the true NLL of shapes)
"""
from vae.inference.images import (best_codes, prior_means, reconstructions, run_nll)
from vae.inference.proposals import proposal_of

__all__ = ["best_codes", "prior_means", "reconstructions", "run_nll", "proposal_of"]
