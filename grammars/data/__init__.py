"""Grammar data: from treebank files to batches.

    treebank.py       the bracketed-tree reader (PTB files, --pred files, every tree string),
                      PTB cleaning, WORD_TAGS, decoding of text files
    predicted_trees.py  a --pred file aligned with a split (the corpus's tag filter applied
                      to trees that still carry punctuation, traces and PTB tags)
    gold_trees.py     gold trees filtered as their words were, one per line, for EVALB
    tag_filter.py     which leaves are words: --keep-tags presets (ptb, all-but-punct), lists,
                      files; the leaf counts and the warning when most leaves are dropped
    tokenize.py       Penn-Treebank-style tokenization of raw sentences; punctuation tokens
    raw_text.py       raw text files, line by line: tokenized, punctuation dropped or kept
    vocabulary.py     word normalization and the token vocabulary
    corpus_splits.py  WSJ sections or declared ratios, each decision recorded
    corpus.py         trees or raw text -> a prepared corpus (PreparedCorpus)
    corpus_disk.py    a prepared corpus on disk: written whole, read back checked (Corpus)
    batching.py       sentences -> padded batches; the deterministic training schedule
    true_grammar.py   a known CNF PCFG (TrueGrammar): sample, score, PCFGParams, length law
    synthetic.py      the embedded English-like grammar and its sampled treebank
    grammar_file.py   a grammar of one's own (prepare synthetic --grammar): read, every
                      defect a one-line error with file, line and JSON path
    grammar_soundness.py  terminating, reachable, consistent (spectral radius < 1)
    json_positions.py the line of each value of a JSON text, duplicate keys
    inputs.py         what a trained run reads to parse: raw text, a treebank file (told by
                      its content) or a corpus split; the <unk> rate under the run's vocabulary
"""
