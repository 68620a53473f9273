"""Training a grammar: the family the engine's EM loop trains, and the methods of a recipe.

    family.py          GrammarFamily (a SamplerFamily with local search, sleep phase, NLL per
                       token) and SummedLabelsFamily (the labels-summed M-step);
                       PriorFamily / SummedPriorFamily: the same reading em.shape_prior's
                       tilted reward (grammars.shape_prior)
    mcem.py            Metropolis–Hastings over labeled trees, persistent chains (MC-EM)
    exact_marginal.py  exact marginal likelihood (N-PCFG) or the ELBO (C-PCFG)
    em_methods.py      recipe -> the engine's EMLoop for gfnem, exact-sampling and mcem
                       (method shape-ebm, the prior's trainer, is grammars.shape_prior's)
    validation_f1.py   bracketing F1 of the validation split while training, one example tree
"""
