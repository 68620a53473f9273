"""A known CNF PCFG, held in float64: it samples gold trees, scores them, and gives the
`PCFGParams` of a corpus's sentences, so its NLL is the floor a learner is measured against.

Length cap. `TrueGrammar.sample(n, seed, max_length)` redraws every sentence longer than
max_length, so the corpus is the grammar *conditioned* on length <= max_length:
q(x) = p(x) / P(len <= max_length). `log_prob_length_at_most(max_length)` gives the exact
log P(len <= max_length) (a dynamic program over yield lengths), so the floor on such a corpus
is -log q(x) = -log p(x) + log P(len <= cap). In code:
    true_log_likelihood(g, ids, lengths) - g.log_prob_length_at_most(cap)

Vocabulary. `TrueGrammar.from_json(d, itos)` maps the grammar's words onto a prepared
corpus's vocabulary (`itos[0] == "<unk>"`). A grammar word absent from itos maps to `<unk>`,
whose emission probability under tag t is then the sum of p(w | t) over the missing words:
exactly the probability of the event the corpus records as `<unk>`. Vocabulary entries the
grammar never emits get probability 0 (log-prob -inf).
"""
from __future__ import annotations

import bisect
import math
import random

import torch

from gfnem_cli.engine.errors import GfnemError
from grammars.charts.pcfg_params import PCFGParams
from grammars.charts.reference_cky import cky_log_likelihood
from grammars.data.treebank import WORD_TAGS, parse_bracketed

VERSION = 1
UNK = "<unk>"


class TrueGrammar:
    """A known CNF PCFG: samples gold trees, scores them, and builds PCFGParams for a corpus.

    Probabilities are kept in float64; `params` casts to the requested dtype.
    """

    def __init__(self, nonterminals: list[str], preterminals: list[str], roots: torch.Tensor,
                 rules: torch.Tensor, words: list[str], emissions: torch.Tensor,
                 itos: list[str] | None = None, name: str = "", version: int = VERSION):
        self.nonterminals = list(nonterminals)
        self.preterminals = list(preterminals)
        self.root_probs = roots            # (NT,)
        self.rule_probs = rules            # (NT, S, S)
        self.words = list(words)           # the grammar's own vocabulary
        self.emission_probs = emissions    # (T, W) over self.words
        self.name = name
        self.version = version
        self.symbols = self.nonterminals + self.preterminals
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self.itos = list(itos) if itos is not None else [UNK] + self.words
        self._table_cache: dict = {}
        self._sampler = None

    # --- construction --------------------------------------------------------------------

    @classmethod
    def from_json(cls, d: dict, itos: list[str] | None = None) -> "TrueGrammar":
        """Validates a `true_grammar_json()`-style dict (clear GfnemError on bad input) and
        maps it onto `itos` (default: `<unk>` followed by the grammar's own words)."""
        if not isinstance(d, dict):
            raise GfnemError("true grammar: expected a JSON object")
        if d.get("version") != VERSION:
            raise GfnemError(f"true grammar: unsupported version {d.get('version')!r}",
                             hint=f"this gfnem reads version {VERSION}")
        for key in ("nonterminals", "preterminals", "roots", "rules", "emissions"):
            if key not in d:
                raise GfnemError(f"true grammar: missing field {key!r}")
        nts, pts = list(d["nonterminals"]), list(d["preterminals"])
        symbols = nts + pts
        if not nts or not pts:
            raise GfnemError("true grammar: needs at least one nonterminal and one preterminal")
        if len(set(symbols)) != len(symbols) or not all(isinstance(s, str) for s in symbols):
            raise GfnemError("true grammar: symbol names must be distinct strings, "
                             "nonterminals and preterminals disjoint")
        bad = [t for t in pts if t not in WORD_TAGS]
        if bad:
            raise GfnemError(f"true grammar: preterminal {bad[0]!r} is not a PTB word tag")
        index = {s: i for i, s in enumerate(symbols)}
        nt_index = {s: i for i, s in enumerate(nts)}
        pt_index = {s: i for i, s in enumerate(pts)}
        n_nt, n_s = len(nts), len(symbols)

        def prob(p, what):
            if not isinstance(p, (int, float)) or not (0.0 <= float(p) <= 1.0):
                raise GfnemError(f"true grammar: {what}: probability {p!r} not in [0, 1]")
            return float(p)

        roots = torch.zeros(n_nt, dtype=torch.float64)
        for name, p in dict(d["roots"]).items():
            if name not in nt_index:
                raise GfnemError(f"true grammar: root {name!r} is not a nonterminal")
            roots[nt_index[name]] += prob(p, f"root {name}")
        rules = torch.zeros(n_nt, n_s, n_s, dtype=torch.float64)
        for row in d["rules"]:
            if len(row) != 4 or row[0] not in nt_index or row[1] not in index or row[2] not in index:
                raise GfnemError(f"true grammar: bad rule {row!r}",
                                 hint="expected [nonterminal, child, child, prob]")
            rules[nt_index[row[0]], index[row[1]], index[row[2]]] += prob(row[3], f"rule {row}")
        words: list[str] = []
        word_index: dict[str, int] = {}
        entries = []
        for row in d["emissions"]:
            if len(row) != 3 or row[0] not in pt_index or not isinstance(row[1], str):
                raise GfnemError(f"true grammar: bad emission {row!r}",
                                 hint="expected [preterminal, word, prob]")
            w = row[1]
            if not w or w == UNK or any(ch.isspace() or ch in "()" for ch in w):
                raise GfnemError(f"true grammar: word {w!r} must be non-empty, without spaces "
                                 "or brackets, and not <unk>")
            if w not in word_index:
                word_index[w] = len(words)
                words.append(w)
            entries.append((pt_index[row[0]], word_index[w], prob(row[2], f"emission {row}")))
        emissions = torch.zeros(len(pts), len(words), dtype=torch.float64)
        for t, w, p in entries:
            emissions[t, w] += p

        def check(total, what):
            if abs(total - 1.0) > 1e-6:
                raise GfnemError(f"true grammar: {what} sum to {total:.6g}, not 1")

        check(roots.sum().item(), "root probabilities")
        for a in range(n_nt):
            check(rules[a].sum().item(), f"the rules of {nts[a]}")
        for t in range(len(pts)):
            check(emissions[t].sum().item(), f"the emissions of {pts[t]}")
        roots = roots / roots.sum()
        rules = rules / rules.sum(dim=(1, 2), keepdim=True)
        emissions = emissions / emissions.sum(dim=1, keepdim=True)
        return cls(nts, pts, roots, rules, words, emissions, itos=itos,
                   name=str(d.get("name", "")), version=VERSION)

    def to_json(self) -> dict:
        nt, s = len(self.nonterminals), len(self.symbols)
        rules = [[self.nonterminals[a], self.symbols[b], self.symbols[c],
                  self.rule_probs[a, b, c].item()]
                 for a in range(nt) for b in range(s) for c in range(s)
                 if self.rule_probs[a, b, c] > 0]
        return {
            "version": self.version, "name": self.name,
            "nonterminals": list(self.nonterminals), "preterminals": list(self.preterminals),
            "roots": {self.nonterminals[a]: p for a, p in enumerate(self.root_probs.tolist())
                      if p > 0},
            "rules": rules,
            "emissions": [[self.preterminals[t], w, self.emission_probs[t, i].item()]
                          for t in range(len(self.preterminals))
                          for i, w in enumerate(self.words) if self.emission_probs[t, i] > 0],
        }

    # --- sizes ---------------------------------------------------------------------------

    @property
    def num_nonterminals(self) -> int:
        return len(self.nonterminals)

    @property
    def num_preterminals(self) -> int:
        return len(self.preterminals)

    # --- PCFGParams for a corpus ---------------------------------------------------------

    def emission_table(self, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> torch.Tensor:
        """(T, V) log p(itos[v] | t), computed once per vocabulary; missing words fold into <unk>."""
        key = (dtype, str(device))
        if key not in self._table_cache:
            vocab = {}
            for v, w in enumerate(self.itos):
                vocab.setdefault(w, v)
            probs = torch.zeros(len(self.preterminals), len(self.itos), dtype=torch.float64)
            missing = [i for i, w in enumerate(self.words) if w not in vocab]
            present = [i for i, w in enumerate(self.words) if w in vocab]
            if present:
                cols = torch.tensor([vocab[self.words[i]] for i in present])
                probs[:, cols] = self.emission_probs[:, present]
            if missing:
                if UNK not in vocab:
                    raise GfnemError(f"true grammar: word {self.words[missing[0]]!r} is not in "
                                     "the vocabulary, which has no <unk> entry")
                probs[:, vocab[UNK]] += self.emission_probs[:, missing].sum(dim=1)
            self._table_cache[key] = probs.log().to(dtype=dtype, device=device)
        return self._table_cache[key]

    def encode(self, words: list[str]) -> list[int]:
        """Word strings to vocabulary ids (unknown words to <unk>)."""
        vocab = {}
        for v, w in enumerate(self.itos):
            vocab.setdefault(w, v)
        unk = vocab.get(UNK, 0)
        return [vocab.get(w, unk) for w in words]

    def params(self, ids: torch.Tensor, lengths: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> PCFGParams:
        """Log-probabilities for a batch (B, n) of vocabulary ids.

        Absent rules are -inf (exact zeros): a consumer that max-shifts a row may need to
        guard all-(-inf) rows. `rules` is expanded over B without copying.
        """
        device = ids.device
        table = self.emission_table(dtype, device)                    # (T, V)
        terms = table.t()[ids.clamp(min=0)]                           # (B, n, T)
        b = ids.shape[0]
        roots = self.root_probs.log().to(dtype=dtype, device=device).expand(b, -1)
        rules = self.rule_probs.log().to(dtype=dtype, device=device)
        rules = rules.unsqueeze(0).expand(b, -1, -1, -1)
        return PCFGParams(roots=roots, rules=rules, terms=terms,
                          lengths=lengths.to(device=device, dtype=torch.long))

    # --- lengths -------------------------------------------------------------------------

    def length_distribution(self, max_length: int) -> torch.Tensor:
        """(max_length + 1,) exact P(len = n) for n = 0..max_length (float64).

        Dynamic program over yield lengths: P_A(n) = sum_{A->BC} p * sum_k P_B(k) P_C(n-k).
        """
        nt, s = self.num_nonterminals, len(self.symbols)
        p = torch.zeros(max_length + 1, s, dtype=torch.float64)
        if max_length >= 1:
            p[1, nt:] = 1.0
        for n in range(2, max_length + 1):
            outer = torch.einsum("ks,kt->st", p[1:n], p[1:n].flip(0))
            p[n, :nt] = torch.einsum("ast,st->a", self.rule_probs, outer)
        return p[:, :nt] @ self.root_probs

    def log_prob_length_at_most(self, max_length: int) -> float:
        """Exact log P(len <= max_length): the log-normalizer of the capped corpus."""
        total = self.length_distribution(max_length).sum().item()
        return math.log(total) if total > 0 else -math.inf

    # --- sampling and scoring trees ------------------------------------------------------

    def _sampling_tables(self):
        """Cumulative tables for fast categorical draws with `random.Random` (deterministic)."""
        if self._sampler is None:
            nt, s = self.num_nonterminals, len(self.symbols)

            def cumulative(pairs):
                pairs = [(x, p) for x, p in pairs if p > 0]
                cum, acc = [], 0.0
                for _, p in pairs:
                    acc += p
                    cum.append(acc)
                return [x for x, _ in pairs], [c / acc for c in cum], [math.log(p) for _, p in pairs]

            roots = cumulative(list(enumerate(self.root_probs.tolist())))
            rules = []
            for a in range(nt):
                flat = self.rule_probs[a].reshape(-1).tolist()
                rules.append(cumulative([(divmod(i, s), p) for i, p in enumerate(flat)]))
            emits = [cumulative(list(zip(self.words, row)))
                     for row in self.emission_probs.tolist()]
            # shortest yield of each symbol: an exact lower bound for early rejection
            min_yield = [math.inf] * nt + [1] * (s - nt)
            for _ in range(s):
                for a in range(nt):
                    for (b, c) in rules[a][0]:
                        min_yield[a] = min(min_yield[a], min_yield[b] + min_yield[c])
            self._sampler = roots, rules, emits, min_yield
        return self._sampler

    @staticmethod
    def _draw(rng: random.Random, table):
        items, cum, logps = table
        k = min(bisect.bisect_right(cum, rng.random()), len(items) - 1)
        return items[k], logps[k]

    def _sample_one(self, rng: random.Random, max_length: int):
        """One top-down draw, written directly as a bracketed string in pre-order.

        Returns (tree, log p(tree), length), or None as soon as the yield must exceed
        max_length (the pending symbols' shortest yields already pass the cap).
        """
        roots, rules, emits, min_yield = self._sampling_tables()
        nt = self.num_nonterminals
        root, logp = self._draw(rng, roots)
        stack, parts, words, pending = [root], [], 0, min_yield[root]
        while stack:
            sym = stack.pop()
            if sym < 0:
                parts.append(")")
            elif sym >= nt:
                word, lp = self._draw(rng, emits[sym - nt])
                parts.append(f"({self.symbols[sym]} {word})")
                logp += lp
                words += 1
                pending -= 1
            else:
                (b, c), lp = self._draw(rng, rules[sym])
                logp += lp
                parts.append("(" + self.symbols[sym])
                stack.extend((-1, c, b))
                pending += min_yield[b] + min_yield[c] - min_yield[sym]
                if words + pending > max_length:
                    return None
        return " ".join(parts).replace(" )", ")"), logp, words

    def sample(self, num_sentences: int, seed: int, max_length: int,
               with_log_probs: bool = False) -> list:
        """i.i.d. trees from the grammar conditioned on length <= max_length (rejection).

        With with_log_probs, returns (tree, log p(tree)) pairs (unconditioned log-prob).
        """
        if num_sentences < 0:
            raise GfnemError(f"synthetic corpus: number of sentences must be >= 0, got {num_sentences}")
        _, _, _, min_yield = self._sampling_tables()
        shortest = min(min_yield[a] for a in range(self.num_nonterminals)
                       if self.root_probs[a] > 0)
        if max_length < shortest:
            raise GfnemError(f"synthetic corpus: max length {max_length} is below the shortest "
                             f"sentence the grammar makes ({shortest} words)")
        if max_length <= 60 and self.log_prob_length_at_most(max_length) < math.log(1e-6):
            raise GfnemError(f"synthetic corpus: sentences of <= {max_length} words are too rare "
                             "to draw by rejection", hint="raise the length cap")
        rng = random.Random(seed)
        out = []
        while len(out) < num_sentences:
            draw = self._sample_one(rng, max_length)
            if draw is not None:
                out.append((draw[0], draw[1]) if with_log_probs else draw[0])
        return out

    def tree_log_prob(self, tree: str) -> float:
        """log p(tree) of one bracketed tree; -inf if it uses a rule or word the grammar lacks.
        The tree is read by the treebank's reader (`data.treebank.parse_bracketed`)."""
        trees, _ = parse_bracketed(tree)
        if len(trees) != 1:
            raise GfnemError(f"bracketed tree: expected one tree, found {len(trees)}")
        nt = self.num_nonterminals
        word_index = {w: i for i, w in enumerate(self.words)}
        root = trees[0].tree
        a = self._index.get(root.label)
        if a is None or a >= nt or self.root_probs[a] <= 0:
            return -math.inf
        total = math.log(self.root_probs[a].item())
        stack = [root]
        while stack:
            node = stack.pop()
            a = self._index.get(node.label)
            if a is None:
                return -math.inf
            if a >= nt:
                if node.word is None or node.word not in word_index:
                    return -math.inf
                p = self.emission_probs[a - nt, word_index[node.word]].item()
            else:
                if node.word is not None or len(node.children) != 2:
                    return -math.inf
                b, c = (self._index.get(child.label) for child in node.children)
                if b is None or c is None:
                    return -math.inf
                p = self.rule_probs[a, b, c].item()
                stack.extend(node.children)
            if p <= 0:
                return -math.inf
            total += math.log(p)
        return total


def true_log_likelihood(grammar: TrueGrammar, ids: torch.Tensor,
                        lengths: torch.Tensor) -> torch.Tensor:
    """(B,) exact log p(x) under the true grammar, in float64 (unconditioned on the cap)."""
    return cky_log_likelihood(grammar.params(ids, lengths, dtype=torch.float64))
