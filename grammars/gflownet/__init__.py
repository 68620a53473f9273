"""The tree-building GFlowNet of GFlowNet-EM for grammars (DESIGN.md §5).

forest.py       the state: a batch of partial forests as tensors, merges, splits, masks
encoder.py      recursive subtree embeddings and the Transformer over current roots
policy.py       heads (merge position, label, P_B, log-flow, log Z)
sampler.py      TreeSampler: batched rollouts -> engine Trajectories, teacher forcing
back_walk.py    the backward walk with P_B that scores P_F of the way back on the same encodings
local_search.py back-and-forth Metropolis–Hastings refinement of sampled trees
"""
from grammars.gflownet.forest import Forest
from grammars.gflownet.local_search import LocalSearchResult, local_search
from grammars.gflownet.sampler import TreeSampler

__all__ = ["Forest", "TreeSampler", "local_search", "LocalSearchResult"]
