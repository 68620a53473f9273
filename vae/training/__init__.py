"""Training the image family (DESIGN.md §4, §7).

family.py      the DiscreteVAE and its grid GFlowNet as the engine's SamplerFamily
baselines/     VQ-VAE, straight-through Gumbel-softmax, REINFORCE-LOO and exact EM, each a
               trainer Method sharing the decoder
"""
