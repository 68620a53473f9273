"""Dynamic programs over binary trees of a CNF PCFG (DESIGN.md §5).

    pcfg_params.py         PCFGParams: the log-probabilities every chart reads, and the
                           helpers they are read through (lengths, masked emissions, shared rules)
    semirings.py           batched log, max-plus and sampling contractions
    inside.py              the inside algorithm (log semiring, GEMM-shaped) and span marginals
    scaled_chart.py        its forward recursion over the scaled chart, one step per width
    outside.py             its backward: the outside pass, by hand
    allocator.py           glibc thresholds that keep freed chart memory mapped between passes
    topdown.py             reading trees off a chart top-down, shared by the decoders
    viterbi.py             the best labeled tree (max-plus)
    mbr.py                 the tree maximizing expected correct spans (CKY over marginals)
    posterior_sampling.py  exact posterior trees (sampling semiring)
    tree_score.py          log p(tree, words) with preterminals summed out
    reference_cky.py       a plain log-space CKY, independent of inside.py
    inside_torch_struct.py the same interface computed by torch-struct's SentCFG
    backends.py            `inside: ours | torch-struct`: the only file that knows both
"""
