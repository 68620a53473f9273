"""The tree-shape prior of Hu et al. (ICML 2023) §5.2 ("CFG + EBM"): an energy-based model
E_ψ(s) over unlabelled binary tree shapes, trained on gold shapes (weak supervision) by
persistent contrastive divergence, and added to the GFlowNet-EM reward as −E_ψ(shape(z)) / T.

    shapes.py    shapes as BinaryTrees (labels 0): right-binarized gold trees (ShapeTable),
                 uniform random and right-branching shapes
    energy.py    ShapeEnergy: the recursive network, batched one span width at a time
    chains.py    Metropolis–Hastings on shapes with rotation moves (MC-EM's proposal, reused)
    training.py  method shape-ebm: PCD on gold shapes, validated by energy gaps
    reward.py    the temperature schedule, the tilted reward, load_shape_prior(run), and the
                 EM loop that logs T and the sampled trees' energy

Arrows: training.family and training.em_methods (gfnem with em.shape_prior) and grammars.run
(method shape-ebm) import this package; it imports grammars.binary_trees, grammars.models
(forest_score, layers) and grammars.training.mcem (the rotation proposal).
"""
