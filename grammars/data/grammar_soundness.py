"""Whether a well-formed CNF PCFG really defines a distribution over finite sentences.

Why: a grammar file can have every field right and every sum equal to one and still be
unusable as a "true grammar": a symbol may have no finite derivation (sampling never ends),
a declared symbol may never be used (the grammar is not the size it claims, usually a typo),
or the recursion may be so strong that derivations go on forever with positive probability.
The checks, on the rules of positive probability only, in this order:

1. terminating: a preterminal terminates; a nonterminal does when one of its rules has two
   terminating children (least fixpoint). A reachable non-terminating symbol makes sampling
   loop; an unreachable one is still refused, because it is dead grammar.
2. reachable: from the roots through the rules. An unreachable nonterminal or preterminal
   cannot change the corpus, but it counts in the grammar's size (what the recipes' 20/30
   symbols are measured against) and nearly always means a misspelt or forgotten rule.
3. consistent (tight, Booth & Thompson 1973): with M[a, b] the expected number of children
   b of nonterminal a, derivations end with probability 1 and the expected sentence length
   is finite iff the spectral radius of M is < 1. At radius >= 1 the probabilities of the
   finite trees sum to less than one (supercritical) or their mean length is infinite
   (critical): no proper "true" distribution to measure a learner's NLL against, and a
   maximum-likelihood PCFG is always tight (Chi & Geman 1998), so a learner cannot match it.

Each failure is a `GrammarProblem` naming the JSON path of the offending declaration; the
file reader (`grammar_file`) turns it into a one-line error with the file and line.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

RADIUS_LIMIT = 1.0 - 1e-9        # at or above: not consistent (numerical slack for radius 1)


class GrammarProblem(Exception):
    """What is wrong, the JSON path it is about, and what to do."""

    def __init__(self, where: tuple, message: str, hint: str):
        self.where = where
        self.message = message
        self.hint = hint
        super().__init__(message)


@dataclass
class Soundness:
    """The figures a sound grammar is summarized by."""

    spectral_radius: float
    expected_length: float       # mean words per sentence, no length cap


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_soundness(nonterminals: list[str], preterminals: list[str], roots: dict[str, float],
                    rules: list[tuple[str, str, str, float]]) -> Soundness:
    """Terminating, reachable, consistent; raises GrammarProblem for the first that fails.
    `rules` are (lhs, left, right, p) over declared symbols; entries with p = 0 are ignored."""
    live = [(a, b, c, p) for a, b, c, p in rules if p > 0]
    nt_pos = {s: i for i, s in enumerate(nonterminals)}
    pt_pos = {s: i for i, s in enumerate(preterminals)}
    declared = {**{s: ("nonterminals", i) for s, i in nt_pos.items()},
                **{s: ("preterminals", i) for s, i in pt_pos.items()}}

    terminating = set(preterminals)
    changed = True
    while changed:
        changed = False
        for a, b, c, _ in live:
            if a not in terminating and b in terminating and c in terminating:
                terminating.add(a)
                changed = True
    stuck = [s for s in nonterminals if s not in terminating]
    if stuck:
        raise GrammarProblem(
            declared[stuck[0]],
            f"non-terminating: {_few(stuck)} {'has' if len(stuck) == 1 else 'have'} no finite "
            "derivation, every rule of positive probability having a non-terminating child, "
            "so sampling would never end",
            "give each such nonterminal a rule whose two children both terminate, e.g. two "
            "preterminals")

    reached = {s for s, p in roots.items() if p > 0}
    frontier = list(reached)
    children: dict[str, list[str]] = {}
    for a, b, c, _ in live:
        children.setdefault(a, []).extend((b, c))
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in reached:
                reached.add(child)
                frontier.append(child)
    unused = [s for s in nonterminals + preterminals if s not in reached]
    if unused:
        raise GrammarProblem(
            declared[unused[0]],
            f"unreachable: {_few(unused)} cannot be reached from the roots through rules of "
            "positive probability, so the grammar is not the size it declares",
            "use each in a rule or as a root, or remove it from the declarations")

    n = len(nonterminals)
    expected = torch.zeros(n, n, dtype=torch.float64)   # expected children per nonterminal
    leaves = torch.zeros(n, dtype=torch.float64)        # expected preterminal children
    for a, b, c, p in live:
        for child in (b, c):
            if child in nt_pos:
                expected[nt_pos[a], nt_pos[child]] += p
            else:
                leaves[nt_pos[a]] += p
    radius = float(torch.linalg.eigvals(expected).abs().max()) if n else 0.0
    if radius >= RADIUS_LIMIT:
        raise GrammarProblem(
            ("rules",),
            f"not consistent: the expected-children matrix has spectral radius {radius:.6g} "
            ">= 1, so derivations do not end with probability 1 or their expected length is "
            "infinite",
            "lower the probabilities of the recursive rules, those with nonterminal "
            "children, until the radius is below 1")
    start = torch.zeros(n, dtype=torch.float64)
    for s, p in roots.items():
        start[nt_pos[s]] += p
    lengths = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - expected, leaves)
    return Soundness(radius, float(start @ lengths))
