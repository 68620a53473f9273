"""Training the image family (DESIGN.md §4, §7).

family.py      the DiscreteVAE and its grid GFlowNet as the engine's SamplerFamily
em_methods.py  a resolved recipe -> the trainer Method: EMLoop for gfnem, or a baseline
baselines/     VQ-VAE, straight-through Gumbel-softmax, REINFORCE-LOO and exact EM, each a
               trainer Method sharing the decoder
"""
