"""Reading a user's grammar file for `gfnem prepare synthetic --grammar FILE.json`.

Why: researchers want to study identifiability on grammars of their own, and a grammar
with a silent defect (a misspelt symbol, rules summing to 0.97) would make every figure
measured against it wrong. So the file is checked whole before anything is written, and each
defect is one `GfnemError`: `FILE:LINE: JSON-PATH (the rule): what is wrong (what to do)`.

The format is the one `gfnem prepare synthetic` stores as `grammar.json` (documented with an
example in examples/grammars/README.md): a CNF PCFG with disjoint nonterminals and
preterminals, `roots` {nonterminal: p}, `rules` [[lhs, left, right, p]], `emissions`
[[preterminal, word, p]]; `version` (1), `name` and `description` are optional.

Errors (nothing written, exit 2):
  * the file missing, not UTF-8, or not valid JSON (line and column), or nested too deeply;
    a key given twice in one object (JSON would keep the last silently);
  * a missing required field, or a field of the wrong type (lists, object, strings, numbers);
    a `version` other than 1;
  * symbol names that are empty, contain spaces or brackets (they are tree labels), are
    declared twice or as both kinds, or a preterminal that is not one of the 36 PTB word
    tags (the corpus keeps only the leaves under those tags, DESIGN §6);
  * an unknown symbol anywhere: a root, a rule's left- or right-hand side, an emission's
    preterminal; a rule for a preterminal, an emission from a nonterminal; a word that is
    empty, contains spaces or brackets, or is `<unk>`; a rule or emission listed twice;
  * a probability that is not a finite number, negative, or above 1;
  * the roots, a nonterminal's rules or a preterminal's emissions not summing to 1 within
    1e-6 (the sum is given), or a symbol with none at all;
  * non-terminating or unreachable symbols, and an inconsistent grammar (spectral radius of
    the expected-children matrix >= 1): `grammar_soundness` says why each is refused.
Warnings (the corpus is drawn), for what changes neither the corpus nor the true NLL: fields
the format does not know (ignored, not stored), and entries of probability 0 (kept, never
used). Sums within the tolerance are renormalized silently, as `TrueGrammar` does.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from gfnem_cli.engine.errors import GfnemError
from grammars.data.grammar_soundness import GrammarProblem, Soundness, check_soundness
from grammars.data.json_positions import DuplicateKey, json_path, value_lines
from grammars.data.treebank import WORD_TAGS
from grammars.data.true_grammar import UNK, VERSION, TrueGrammar

TOLERANCE = 1e-6
REQUIRED = ("nonterminals", "preterminals", "roots", "rules", "emissions")
OPTIONAL = ("version", "name", "description")
FORMAT_DOC = "examples/grammars/README.md"
_NAME = re.compile(r"[^\s()]+")


@dataclass
class GrammarFile:
    """A grammar file that passed every check: what to store, what to warn about."""

    path: Path
    grammar: dict                # the canonical form, stored as the corpus's grammar.json
    warnings: list[str]
    sha256: str
    soundness: Soundness

    def true_grammar(self) -> TrueGrammar:
        return TrueGrammar.from_json(self.grammar)

    def describe(self, max_length: int | None = None) -> str:
        g = self.grammar
        words = len({w for _, w, _ in g["emissions"]})
        text = (f"grammar {g['name']!r} ({self.path}): {len(g['nonterminals'])} nonterminals, "
                f"{len(g['preterminals'])} preterminals, {len(g['rules'])} rules, {words} "
                f"words; expected length {self.soundness.expected_length:.2f} words "
                f"(spectral radius {self.soundness.spectral_radius:.3f})")
        if max_length is not None and max_length <= 200:
            share = math.exp(self.true_grammar().log_prob_length_at_most(max_length))
            text += f"; P(length <= {max_length}) = {share:.4f}"
        return text


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _rule_text(row) -> str:
    return f"{row[0]} -> {row[1]} {row[2]}"


class _Checker:
    """Builds each error with the file, the line of the JSON value and its path."""

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path = path
        self.lines = lines

    def fail(self, where: tuple, message: str, hint: str | None = None) -> GfnemError:
        line = None
        for cut in range(len(where), -1, -1):      # the value, else its nearest parent
            if where[:cut] in self.lines:
                line = self.lines[where[:cut]]
                break
        return GfnemError(f"{json_path(where)}: {message}", self.path, line, hint=hint)

    def symbols(self, data: dict, field: str) -> list[str]:
        value = data[field]
        if not isinstance(value, list) or not value:
            raise self.fail((field,), f"must be a non-empty list of symbol names, found "
                            f"{'an empty list' if value == [] else _kind(value)}")
        seen: dict[str, int] = {}
        for i, name in enumerate(value):
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise self.fail((field, i), f"symbol {name!r} must be a non-empty string "
                                "without spaces or brackets (it labels tree nodes)")
            if name in seen:
                raise self.fail((field, i), f"{name!r} is declared twice (also "
                                f"{field}[{seen[name]}])", hint="declare each symbol once")
            seen[name] = i
        return list(value)

    def prob(self, value, where: tuple, what: str) -> float:
        shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:20] + "..."
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(where, f"{what}: the probability must be a number, found "
                            f"{_kind(value)}")
        if isinstance(value, float) and not math.isfinite(value):   # ints may be huge
            raise self.fail(where, f"{what}: probability {value} is not finite")
        if value < 0:
            raise self.fail(where, f"{what}: negative probability {shown}",
                            hint="probabilities lie in [0, 1]")
        if value > 1:
            raise self.fail(where, f"{what}: probability {shown} is above 1",
                            hint="probabilities lie in [0, 1]")
        return float(value)

    def row(self, value, where: tuple, shape: str, strings: int):
        if (not isinstance(value, list) or len(value) != strings + 1
                or not all(isinstance(x, str) for x in value[:strings])):
            raise self.fail(where, f"expected {shape}, found {json.dumps(value)[:60]}")
        return value

    def check_sum(self, total: float, where: tuple, what: str, count: int) -> None:
        if abs(total - 1.0) > TOLERANCE:
            raise self.fail(where, f"{what} sum to {total:.10g}, not 1 within "
                            f"{TOLERANCE:g}", hint=f"make the {count} probabilities add up "
                            "to 1")


def _load(path: Path):
    """The parsed document and the line of each value; reading and syntax errors raised."""
    if path.is_dir():
        raise GfnemError("is a directory, not a grammar file", path,
                         hint=f"give a .json grammar file; the format is in {FORMAT_DOC}")
    if not path.is_file():
        raise GfnemError("no such file", path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GfnemError(f"not UTF-8 text (byte {exc.start})", path,
                         raw[:exc.start].count(b"\n") + 1, hint="save the file as UTF-8") from None
    try:
        data = json.loads(text)
        lines = value_lines(text)
    except json.JSONDecodeError as exc:
        raise GfnemError(f"not valid JSON: {exc.msg} at column {exc.colno}", path, exc.lineno,
                         hint=f"fix the syntax; the format is in {FORMAT_DOC}") from None
    except DuplicateKey as exc:
        raise GfnemError(f"{json_path(exc.path)}: key given twice (JSON keeps only the last)",
                         path, exc.line, hint="give each key once") from None
    except RecursionError:
        raise GfnemError("not a grammar: the JSON is nested too deeply", path) from None
    except ValueError as exc:                    # e.g. an integer of over 4,300 digits
        raise GfnemError(f"not valid JSON: {str(exc).splitlines()[0][:120]}", path) from None
    return raw, data, lines


def read_grammar_file(path) -> GrammarFile:
    """Every check of the module docstring, in file order; the first failure is raised."""
    path = Path(path)
    raw, data, lines = _load(path)
    c = _Checker(path, lines)
    if not isinstance(data, dict):
        raise c.fail((), f"expected a JSON object with the fields {', '.join(REQUIRED)}, "
                     f"found {_kind(data)}", hint=f"the format is in {FORMAT_DOC}")
    warnings = []
    unknown = [k for k in data if k not in REQUIRED + OPTIONAL]
    if unknown:
        warnings.append(f"{path}: unknown field{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(k) for k in unknown)} ignored, not stored (the "
                        f"format has {', '.join(REQUIRED + OPTIONAL)})")
    version = data.get("version", VERSION)
    if isinstance(version, bool) or version != VERSION:
        raise c.fail(("version",), f"unsupported version {version!r}",
                     hint=f"this gfnem reads version {VERSION}; give 1 or leave it out")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise c.fail((key,), f"must be a string, found {_kind(data[key])}")
    for key in REQUIRED:
        if key not in data:
            raise c.fail((), f"missing field {key!r}", hint=f"the format needs "
                         f"{', '.join(REQUIRED)}; see {FORMAT_DOC}")

    nts, pts = c.symbols(data, "nonterminals"), c.symbols(data, "preterminals")
    nt_set, pt_set = set(nts), set(pts)
    for i, name in enumerate(pts):
        if name in nt_set:
            raise c.fail(("preterminals", i), f"{name!r} is declared both as a nonterminal and "
                         "as a preterminal", hint="the two kinds are disjoint; rename one")
        if name not in WORD_TAGS:
            raise c.fail(("preterminals", i), f"preterminal {name!r} is not one of the 36 PTB "
                         "word tags, the only leaves a prepared corpus keeps",
                         hint="rename it to one of " + " ".join(sorted(WORD_TAGS)) + "; any "
                         "tag may stand for any word class")
    zeros: list[tuple] = []

    roots = data["roots"]
    if not isinstance(roots, dict) or not roots:
        raise c.fail(("roots",), "must be a non-empty object {nonterminal: probability}, "
                     f"found {'an empty object' if roots == {} else _kind(roots)}")
    for name, p in roots.items():
        if name not in nt_set:
            if name in pt_set:
                raise c.fail(("roots", name), f"root {name!r} is a preterminal, which would "
                             "make one-word sentences, and a CNF grammar has none",
                             hint="roots are nonterminals")
            raise c.fail(("roots", name), f"root {name!r} is not a declared nonterminal",
                         hint="declare it or correct the name")
        if c.prob(p, ("roots", name), f"root {name}") == 0:
            zeros.append(("roots", name))
    c.check_sum(sum(float(p) for p in roots.values()), ("roots",), "the root probabilities",
                len(roots))

    rules = data["rules"]
    if not isinstance(rules, list):
        raise c.fail(("rules",), f"must be a list of [lhs, left, right, probability], found "
                     f"{_kind(rules)}")
    parsed_rules, seen, first_rule = [], {}, {}
    for i, row in enumerate(rules):
        where = ("rules", i)
        row = c.row(row, where, "[lhs, left, right, probability] with three symbol names", 3)
        lhs, left, right = row[:3]
        what = f"rule {_rule_text(row)}"
        if lhs not in nt_set:
            raise c.fail(where + (0,), f"{what}: " + (
                f"{lhs!r} is a preterminal, and preterminals only emit words (see emissions)"
                if lhs in pt_set else f"unknown symbol {lhs!r} on the left-hand side"),
                hint="a rule rewrites a declared nonterminal")
        for k, child in ((1, left), (2, right)):
            if child not in nt_set and child not in pt_set:
                raise c.fail(where + (k,), f"{what}: unknown symbol {child!r} on the "
                             "right-hand side", hint="declare it in nonterminals or "
                             "preterminals, or correct the name")
        if (lhs, left, right) in seen:
            raise c.fail(where, f"{what} is listed twice (also rules[{seen[lhs, left, right]}])",
                         hint="give each rule once, with its whole probability")
        seen[lhs, left, right] = i
        first_rule.setdefault(lhs, i)
        p = c.prob(row[3], where + (3,), what)
        if p == 0:
            zeros.append(where)
        parsed_rules.append((lhs, left, right, p))
    for i, name in enumerate(nts):
        mine = [p for a, _, _, p in parsed_rules if a == name]
        if not mine:
            raise c.fail(("nonterminals", i), f"nonterminal {name!r} has no rule",
                         hint=f'give it rules ["{name}", LEFT, RIGHT, p] summing to 1, or '
                              "remove it")
        c.check_sum(math.fsum(mine), ("rules", first_rule[name]), f"the rules of {name!r}",
                    len(mine))

    emissions = data["emissions"]
    if not isinstance(emissions, list):
        raise c.fail(("emissions",), "must be a list of [preterminal, word, probability], "
                     f"found {_kind(emissions)}")
    sums: dict[str, list[float]] = {}
    seen, first_emission = {}, {}
    for i, row in enumerate(emissions):
        where = ("emissions", i)
        tag, word, _ = c.row(row, where, "[preterminal, word, probability] with two strings", 2)
        what = f"emission {tag} -> {word}"
        if tag not in pt_set:
            raise c.fail(where + (0,), f"{what}: " + (
                f"{tag!r} is a nonterminal, and nonterminals rewrite to two symbols (see "
                "rules)" if tag in nt_set else f"unknown preterminal {tag!r}"),
                hint="words are emitted by declared preterminals")
        if not _NAME.fullmatch(word) or word == UNK:
            raise c.fail(where + (1,), f"{what}: word {word!r} must be non-empty, without "
                         "spaces or brackets, and not <unk>")
        if (tag, word) in seen:
            raise c.fail(where, f"{what} is listed twice (also emissions[{seen[tag, word]}])",
                         hint="give each emission once, with its whole probability")
        seen[tag, word] = i
        first_emission.setdefault(tag, i)
        p = c.prob(row[2], where + (2,), what)
        if p == 0:
            zeros.append(where)
        sums.setdefault(tag, []).append(p)
    for i, tag in enumerate(pts):
        if tag not in sums:
            raise c.fail(("preterminals", i), f"preterminal {tag!r} emits no word",
                         hint=f'give it emissions ["{tag}", WORD, p] summing to 1, or remove it')
        c.check_sum(math.fsum(sums[tag]), ("emissions", first_emission[tag]),
                    f"the emissions of {tag!r}", len(sums[tag]))

    try:
        soundness = check_soundness(nts, pts, {k: float(v) for k, v in roots.items()},
                                    parsed_rules)
    except GrammarProblem as problem:
        raise c.fail(problem.where, problem.message, hint=problem.hint) from None
    if zeros:
        warnings.append(f"{path}: {len(zeros)} entr{'y has' if len(zeros) == 1 else 'ies have'}"
                        f" probability 0 and {'is' if len(zeros) == 1 else 'are'} never used "
                        f"(first: {json_path(zeros[0])})")
    grammar = {"version": VERSION, "name": data.get("name", path.stem)}
    if "description" in data:
        grammar["description"] = data["description"]
    grammar.update({key: data[key] for key in REQUIRED})
    return GrammarFile(path, grammar, warnings, "sha256:" + hashlib.sha256(raw).hexdigest(),
                       soundness)
