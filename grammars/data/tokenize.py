"""Splitting a raw sentence into Penn-Treebank-style tokens, and telling punctuation apart.

A model trained on the Penn Treebank saw its tokens: `profits` and `.`, never `profits.`; so
raw text is split the way the treebank's text was (the conventions of the Penn Treebank's
tokenization guidelines, Marcus, Santorini & Marcinkiewicz 1993, as its `tokenizer.sed`
script by R. MacIntyre states them; where that script is coarser than the treebank's own
text, e.g. it splits every comma, the treebank's text is followed), not on spaces alone:

* double quotes become directional: `"` opening a quotation is written ``` `` ```, closing it
  `''`; an opening single quote is written `` ` ``, a closing one `'` (curly quotes likewise);
* punctuation is split from words: `, ; : ? ! ( ) [ ] { }`, the ellipsis `...` and the dash
  `--`, each its own token; brackets are written as the treebank's leaves write them, `-LRB-`
  `-RRB-` (and `-LSB-` `-RSB-`, `-LCB-` `-RCB-`);
* a period is split off at the end of the sentence (before any closing quotes or brackets)
  and after an ordinary word; after an abbreviation inside the sentence (`Mr.`, `U.S.`,
  `Inc.`, a single initial) it stays;
* currency and other symbols are split from numbers and words: `$1.5` → `$ 1.5`, `10%` →
  `10 %`, `#1` → `# 1`; but a comma, colon or period between digits stays (`1,000`, `3:30`,
  `1.5`), and so do `&` between letters (`AT&T`), `-` and `/` inside a word (`10-year`,
  `and/or`) and apostrophes inside one (`O'Brien`);
* clitics are split from their host: `don't` → `do n't`, `can't` → `ca n't`, `won't` →
  `wo n't`; `'s 'm 'd 'll 're 've` (`it's` → `it 's`, `John's` → `John 's`); the possessive
  of a plural (`dogs'` → `dogs '`); and the fused forms `cannot gonna gotta wanna gimme
  lemme` (`can not`, `gon na`, ...).

Tokens never overlap and never lose a character: every token is a slice of the line
(`start`, `end`), its `text` that slice or its treebank spelling (quotes, brackets, a curly
apostrophe in a clitic). Already-tokenized text (``` `` `` ``, `n't`, `-LRB-`) goes through
unchanged, so tokenizing twice is tokenizing once.

`punct` marks the tokens the treebank tags as punctuation or symbols (`` `` '' , . : -LRB-
-RRB- # $ ``), the leaves the evaluation protocol's 36 word tags drop; `%` (NN), `&` (CC) and
other symbols (SYM) are words there, and stay. A lone `'` after a word ending in `s` is the
possessive (a word, tag POS) unless a single quotation is open.
"""
from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

TOKENIZERS = ("ptb", "whitespace")


class Token(NamedTuple):
    text: str       # the treebank spelling
    start: int      # the slice of the line it covers
    end: int
    punct: bool     # tagged as punctuation or a symbol in the treebank (dropped by default)


BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-",
            "}": "-RCB-"}
_ESCAPES = frozenset(BRACKETS.values())
_OPENERS = frozenset("([{<“‘«") | {"``", "`"}
_CLOSERS = "\"'’”)]}>»"
PUNCT_TOKENS = frozenset({"``", "''", "`", "'", '"', "“", "”", "‘", "’", ",", ".", "?", "!",
                          ":", ";", "--", "-", "...", "…", "#", *_ESCAPES, *BRACKETS})
WORD_SYMBOLS = frozenset("%&@*/\\+=<>~^|_")   # tagged as words (NN, CC, SYM) in the treebank

ABBREVIATIONS = frozenset("""
mr mrs ms messrs dr prof sr jr st mt rev gov sen rep gen col lt sgt capt adm cmdr
inc corp co ltd bros cos plc jan feb mar apr jun jul aug sep sept oct nov dec
vs etc ave blvd rd no nos fig approx dept est
""".split())
_LETTER_ABBREVIATION = re.compile(r"^(?:[^\W\d_]\.)*[^\W\d_]$")   # J, U.S, e.g, a.m
_CLITIC = re.compile(r"(?i)(?:n['’]t|['’](?:s|m|d|ll|re|ve))$")
_FUSED = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "gimme": 3, "lemme": 3}

# a word: word characters joined by an internal connector; a number may start with `.`
_WORD = re.compile(r"(?:\.(?=\d)|['’](?=\d\d))?\w+(?:(?:[-.&/'’]|(?<=\d)[,:](?=\d))\w+)*")
_RUN = re.compile(r"\.\.\.+|--+|``|''|…")
_CLITIC_CHUNK = re.compile(r"(?i)['’](?:s|m|d|ll|re|ve)(?!\w)")


def tokenize(line: str, how: str = "ptb") -> list[Token]:
    """The tokens of one line: `ptb` (the conventions above) or `whitespace` (split on
    spaces only, nothing rewritten; punctuation still marked)."""
    if how == "whitespace":
        return _mark_possessives([Token(m.group(), m.start(), m.end(),
                                        is_punctuation(m.group()))
                                  for m in re.finditer(r"\S+", line)])
    if how != "ptb":
        raise ValueError(f"unknown tokenizer {how!r}")
    final = _final_period(line)
    tokens: list[Token] = []
    for chunk in re.finditer(r"\S+", line):
        tokens.extend(_split_chunk(line, chunk.start(), chunk.end(), final))
    return _mark_possessives(tokens)


def words(line: str, how: str = "ptb", keep_punct: bool = False) -> tuple[list[str], int]:
    """The kept token texts of a line and how many punctuation tokens were dropped."""
    tokens = tokenize(line, how)
    kept = [t.text for t in tokens if keep_punct or not t.punct]
    return kept, len(tokens) - len(kept)


def is_punctuation(text: str) -> bool:
    """A token the treebank tags as punctuation, `$` or `#` (by its spelling alone)."""
    if text in PUNCT_TOKENS:
        return True
    if not text or any(c in WORD_SYMBOLS for c in text):
        return False
    return all(unicodedata.category(c)[0] == "P" or unicodedata.category(c) == "Sc"
               for c in text)


def _final_period(line: str) -> int:
    """Index of the sentence-final period (before closing quotes and brackets), or -1."""
    end = len(line.rstrip())
    while end > 0 and line[end - 1] in _CLOSERS:
        end -= 1
    if end > 0 and line[end - 1] == "." and not line[:end].endswith(".."):
        return end - 1
    return -1


def _split_chunk(line: str, start: int, end: int, final: int) -> list[Token]:
    chunk = line[start:end]
    if chunk in _ESCAPES or chunk in ("``", "''"):
        return [Token(chunk, start, end, True)]
    out: list[Token] = []
    at = start
    while at < end:
        if at == start and _CLITIC_CHUNK.match(line, at, end):   # `'s` written apart
            size = _CLITIC_CHUNK.match(line, at, end).end() - at
            out.append(Token("'" + line[at + 1:at + size], at, at + size, False))
            at += size
            continue
        word = _WORD.match(line, at, end)
        if word:
            stop = word.end()
            if (stop < end and line[stop] == "." and stop != final
                    and _abbreviation(word.group())):
                stop += 1                                      # `Mr.`, `U.S.` keep their period
            out.extend(_split_word(line[at:stop], at))
            at = stop
            continue
        run = _RUN.match(line, at, end)
        size = run.end() - at if run else 1
        out.append(_punct(line, at, at + size))
        at += size
    return out


def _abbreviation(word: str) -> bool:
    return word.lower() in ABBREVIATIONS or bool(_LETTER_ABBREVIATION.match(word))


def _split_word(word: str, at: int) -> list[Token]:
    """Clitics and fused forms split from a word (the slice `word` starting at `at`);
    clitics come off one by one from the end (`he'd've` → `he 'd 've`)."""
    fused = _FUSED.get(word.lower())
    if fused:
        return [Token(word[:fused], at, at + fused, False),
                Token(word[fused:], at + fused, at + len(word), False)]
    clitic = _CLITIC.search(word)
    if clitic and clitic.start() > 0 and (word[clitic.start() - 1].isalnum()
                                          or word[clitic.start() - 1] == "_"):
        cut = clitic.start()
        return _split_word(word[:cut], at) + [
            Token(word[cut:].replace("’", "'"), at + cut, at + len(word), False)]
    return [Token(word.replace("’", "'") if _CLITIC.fullmatch(word) else word, at,
                  at + len(word), False)]


def _punct(line: str, start: int, end: int) -> Token:
    text = line[start:end]
    if text == '"' or text in "“”":
        opening = text == "“" or (text == '"' and _opens(line, start))
        return Token("``" if opening else "''", start, end, True)
    if text in ("'", "‘", "’"):
        opening = text == "‘" or (text == "'" and _opens(line, start)
                                 and end < len(line) and not line[end].isspace())
        return Token("`" if opening else "'", start, end, True)
    if text in BRACKETS:
        return Token(BRACKETS[text], start, end, True)
    if text == "…":
        return Token("...", start, end, True)
    return Token(text, start, end, is_punctuation(text))


def _opens(line: str, at: int) -> bool:
    """A quote opens when it starts the line or follows a space or an opening bracket."""
    if at == 0 or line[at - 1].isspace():
        return True
    return line[at - 1] in _OPENERS


def _mark_possessives(tokens: list[Token]) -> list[Token]:
    """A lone `'` after a word ending in `s` is the possessive (tag POS, a word), unless a
    single quotation opened by `` ` `` is still open."""
    out: list[Token] = []
    open_single = False
    for token in tokens:
        if token.text == "`":
            open_single = True
        elif token.text == "'" and token.punct:
            host = out[-1] if out else None
            if open_single:
                open_single = False
            elif host is not None and not host.punct and host.text[-1:] in ("s", "S"):
                token = token._replace(punct=False)
        out.append(token)
    return out
