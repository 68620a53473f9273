"""What a trained run does to sentences.

    sampled_decoding.py  decoding from sampled trees (best of K, sampler MBR)
    parsing.py           parse sentences: Viterbi, MBR or the best of sampled trees
    tree_draws.py        trees drawn for given sentences, with log q(z | x) and log p(x, z)
    run_scores.py        a run scored on sentences: its parses, its likelihood summed over a
                         split (evaluate) or per sentence (score)
"""
