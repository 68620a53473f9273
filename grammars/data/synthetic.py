"""The embedded default corpus: sentences drawn from a known, hand-written English-like PCFG.

Why a known grammar: a learner's NLL can then be compared with the true grammar's NLL (the
floor any learner can reach), and its parses with gold trees that really generated the data.

The grammar is in Chomsky normal form with nonterminals and preterminals disjoint, the same
model class as a neural PCFG (binary rules A -> B C over nonterminal-or-preterminal children,
a root distribution over nonterminals, emissions preterminal -> word), so its likelihood is
computable by the inside algorithm and reachable in principle. It has no unary rules, so every
sentence has >= 2 words. Preterminals are PTB word tags and nonterminals PTB-like phrase
labels (plus binarization symbols such as NP-BAR), so the bracketed trees pass the PTB
preprocessing (keep leaves under the 36 word tags, lowercase, digit runs -> N) unchanged.
Recursion (PPs inside NPs inside PPs, relative clauses, complement clauses, coordination) has
moderate probabilities: the branching process is subcritical, the expected length finite.

The grammar itself, its sampling and scoring, is `data.true_grammar.TrueGrammar`.
"""
from __future__ import annotations

from functools import lru_cache

from grammars.data.true_grammar import VERSION, TrueGrammar

# ----------------------------------------------------------------------------------------
# The hand-written grammar. Single-word phrases are collapsed into their parents (CNF has no
# unary rules): a pronoun subject is S -> PRP VP, an intransitive clause S -> NP VBD, and so on.
# Past tense (VBD) and modal + base form (MD VB) keep English free of agreement errors without
# splitting NP into singular/plural symbols.

_ROOTS = {"S": 0.92, "NP": 0.04, "VP-BASE": 0.04}    # VP-BASE at the root: imperatives

_RULES: dict[str, list[tuple[str, str, float]]] = {
    "S": [                       # a clause
        ("NP", "VP", 0.50), ("PRP", "VP", 0.14), ("NNP", "VP", 0.08), ("NNS", "VP", 0.04),
        ("NP", "VBD", 0.04), ("PRP", "VBD", 0.02), ("NNP", "VBD", 0.02), ("NNS", "VBD", 0.01),
        ("PP", "S", 0.05),       # fronted PP: "in the park the dog slept"
        ("RB", "S", 0.04),       # fronted adverb: "yesterday he slept"
        ("S", "S-CC", 0.06),     # clause coordination
    ],
    "S-CC": [("CC", "S", 1.0)],
    "NP": [                      # a noun phrase of >= 2 words
        ("DT", "NN", 0.28), ("DT", "NNS", 0.08), ("DT", "NP-BAR", 0.12), ("PRP$", "NN", 0.06),
        ("PRP$", "NNS", 0.04), ("PRP$", "NP-BAR", 0.02), ("CD", "NNS", 0.03),
        ("JJ", "NNS", 0.03), ("NNP", "NNP", 0.02),
        ("NP", "PP", 0.20),      # PP attachment to a noun
        ("NP", "SBAR-REL", 0.08),  # relative clause
        ("NP", "NP-CC", 0.04),   # noun phrase coordination
    ],
    "NP-BAR": [("JJ", "NN", 0.60), ("JJ", "NNS", 0.20), ("JJ", "NP-BAR", 0.10),
               ("ADJP", "NN", 0.10)],
    "NP-CC": [("CC", "NP", 0.65), ("CC", "NNP", 0.20), ("CC", "NNS", 0.15)],
    "ADJP": [("RB", "JJ", 1.0)],
    "PP": [("IN", "NP", 0.78), ("IN", "NNP", 0.12), ("IN", "NNS", 0.10)],
    "SBAR": [("WRB", "S", 1.0)],  # adverbial / complement clause: "when the dog slept"
    "SBAR-REL": [("WDT", "VP", 0.45), ("WP", "VP", 0.20),      # subject gap
                 ("WDT", "S-REL", 0.25), ("WP", "S-REL", 0.10)],  # object gap
    "S-REL": [("NP", "VBD", 0.55), ("PRP", "VBD", 0.30), ("NNP", "VBD", 0.15)],
    "VP": [                      # a finite verb phrase of >= 2 words
        ("VBD", "NP", 0.34), ("VBD", "NNP", 0.05), ("VBD", "NNS", 0.05),
        ("VBD", "PP", 0.09), ("VBD", "RB", 0.03), ("VBD", "SBAR", 0.04),
        ("VBD", "S-INF", 0.05), ("VBD", "ADJP", 0.02), ("VBD", "JJ", 0.03),
        ("MD", "VP-BASE", 0.08), ("MD", "VB", 0.02),
        ("VP", "PP", 0.10),      # PP attachment to a verb
        ("RB", "VP", 0.03), ("VP", "SBAR", 0.03),
        ("VP", "VP-CC", 0.04),   # verb phrase coordination
    ],
    "VP-CC": [("CC", "VP", 0.70), ("CC", "VBD", 0.30)],
    "VP-BASE": [                 # a base-form verb phrase (after a modal or `to`)
        ("VB", "NP", 0.50), ("VB", "NNP", 0.08), ("VB", "NNS", 0.08),
        ("VB", "PP", 0.10), ("VB", "RB", 0.04), ("VB", "S-INF", 0.05),
        ("VP-BASE", "PP", 0.10), ("RB", "VP-BASE", 0.05),
    ],
    "S-INF": [("TO", "VP-BASE", 0.70), ("TO", "VB", 0.30)],
}

# Words per tag, most frequent first; probabilities follow Zipf's law within each tag.
_LEXICON = {
    "DT": "the a every some this that no each another",
    "NN": "dog cat man woman child teacher doctor farmer king queen bird horse house garden "
          "park river city village table book letter car road tree window door box ball cake "
          "apple song story picture hat boat bridge school market forest mountain",
    "NNS": "dogs cats men women children teachers doctors farmers birds horses houses gardens "
           "trees books letters cars apples songs stories pictures students friends flowers "
           "stones ships",
    "NNP": "john mary alice bob paris london peter susan tom anna david emma james lucy rome",
    "JJ": "big small old young red green happy sad tall short quiet loud bright dark clever "
          "strange beautiful angry tired new cold warm heavy gentle brave",
    "VBD": "saw liked found took chased ate made heard knew loved wanted visited followed "
           "watched painted opened built sold bought carried slept ran laughed arrived smiled "
           "walked said thought seemed became",
    "VB": "see like find take chase eat make hear know love visit follow watch open build sell "
          "buy carry sleep run",
    "MD": "will can would could should might must",
    "RB": "quickly slowly often never always yesterday today very really quietly soon again",
    "IN": "in on with near under behind from at by for about into over",
    "TO": "to",
    "PRP": "he she it they we you i",         # subjects only: objects are NPs
    "WRB": "when where why how",
    "PRP$": "his her their my our your",
    "CC": "and but or",
    "WDT": "that which",
    "WP": "who whom",
    "CD": "two three four five six ten",
}


def _zipf(words: list[str]) -> list[tuple[str, float]]:
    weights = [1.0 / (k + 1) for k in range(len(words))]
    total = sum(weights)
    return [(w, x / total) for w, x in zip(words, weights)]


def true_grammar_json() -> dict:
    """The default grammar as plain JSON data, to be stored next to the corpus it generated.

    Fields: version, name, nonterminals, preterminals (ordered: these orders are the symbol
    indices of PCFGParams), roots {name: prob}, rules [[lhs, left, right, prob]],
    emissions [[preterminal, word, prob]].
    """
    nonterminals = list(_RULES)
    for name in _ROOTS:
        assert name in _RULES
    return {
        "version": VERSION,
        "name": "gfnem-english-v1",
        "nonterminals": nonterminals,
        "preterminals": list(_LEXICON),
        "roots": dict(_ROOTS),
        "rules": [[lhs, b, c, p] for lhs in nonterminals for b, c, p in _RULES[lhs]],
        "emissions": [[tag, w, p] for tag, words in _LEXICON.items()
                      for w, p in _zipf(words.split())],
    }


@lru_cache(maxsize=1)
def default_grammar() -> TrueGrammar:
    return TrueGrammar.from_json(true_grammar_json())


def sample_treebank(num_sentences: int, seed: int, max_length: int) -> list[str]:
    """PTB-style bracketed gold trees from the default grammar, deterministic for a seed.

    Sentences longer than max_length are redrawn: the corpus follows the grammar conditioned
    on length <= max_length (see `TrueGrammar.log_prob_length_at_most`).
    """
    return default_grammar().sample(num_sentences, seed, max_length)
