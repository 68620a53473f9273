"""Metrics free of any run (DESIGN.md §6).

    f1.py                unlabeled bracketing F1, sentence and corpus level
    baselines.py         right / left branching, random and oracle trees (as span lists)
    likelihood.py        NLL per token and perplexity; the true grammar's NLL
    importance_bound.py  the importance-sampled NLL bound, with tree proposals
"""
