"""Grammar data: from treebank files to batches.

    treebank.py       the bracketed-tree reader (PTB files, --pred files, every tree string),
                      PTB cleaning, WORD_TAGS, decoding of text files
    vocabulary.py     word normalization and the token vocabulary
    corpus_splits.py  WSJ sections or declared ratios, each decision recorded
    corpus.py         trees or raw text -> a prepared corpus (PreparedCorpus)
    corpus_disk.py    a prepared corpus on disk: written whole, read back checked (Corpus)
    batching.py       sentences -> padded batches; the deterministic training schedule
    true_grammar.py   a known CNF PCFG (TrueGrammar): sample, score, PCFGParams, length law
    synthetic.py      the embedded English-like grammar and its sampled treebank
    inputs.py         what a trained run reads to parse: raw text or a corpus split
"""
