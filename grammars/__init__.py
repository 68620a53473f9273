"""The grammar family: unsupervised constituency grammar induction (DESIGN.md §5, §6).

    binary_trees.py  the latent z: a batch of labeled binary trees as tensors
    recipe.py        every key a grammar recipe may set, with its default and range
    run.py           the run module: train a recipe into a run directory, load a trained run
    data/            treebanks, vocabulary, corpora on disk, splits, batches, the synthetic
                     corpus and its true grammar, what a trained run reads to parse
    charts/          PCFG parameters, semirings and the dynamic programs over them (inside,
                     Viterbi, MBR, top-down reading, posterior sampling, tree scores, a
                     reference CKY); backends.py picks ours or torch-struct's
    models/          N-PCFG, C-PCFG, NCFG, their shared forest scoring, what each can do
    gflownet/        the tree GFlowNet: forest state, encoder, policy, sampler, local search
    training/        the family the engine trains, EM methods, exact marginal training, MC-EM
    inference/       what a trained run does to sentences: parsing, tree draws, sampled
                     decoding, its likelihood and parses scored
    evaluation/      metrics free of any run: F1, baselines, likelihoods, the IS bound

Arrows point down this list: data and charts at the ground, the run module on top. The
family imports the engine (`gfnem_cli.engine`), never the command line.
"""
