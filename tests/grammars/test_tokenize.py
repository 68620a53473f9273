"""The Penn-Treebank-style tokenizer (grammars/data/tokenize.py): the classic cases of the
treebank's conventions, then properties over any text (hypothesis): no character is lost or
invented, tokens are slices of the line in order, and tokenizing twice is tokenizing once."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grammars.data.tokenize import is_punctuation, tokenize, words

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def texts(line: str, how: str = "ptb") -> list[str]:
    return [t.text for t in tokenize(line, how)]


@pytest.mark.parametrize("line,expected", [
    ("I don't know.", "I do n't know ."),
    ("You can't and won't.", "You ca n't and wo n't ."),
    ("DON'T", "DO N'T"),
    ("It's John's dog; they're here, we'll see, I'd've gone.",
     "It 's John 's dog ; they 're here , we 'll see , I 'd 've gone ."),
    ("The dogs' bones", "The dogs ' bones"),
    ("profits of $1.5 billion in 1990.", "profits of $ 1.5 billion in 1990 ."),
    ("10% of 1,000 shares at 3:30", "10 % of 1,000 shares at 3:30"),
    ('"I agree," Smith said.', "`` I agree , '' Smith said ."),
    ("He said, \"Yes.\"", "He said , `` Yes . ''"),
    ("“Curly” quotes and ‘single’ ones", "`` Curly '' quotes and ` single ' ones"),
    ("It’s a dog’s life, isn’t it?", "It 's a dog 's life , is n't it ?"),
    ("Mr. Smith of the U.S. met Dr. J. Doe on Jan. 5.",
     "Mr. Smith of the U.S. met Dr. J. Doe on Jan. 5 ."),
    ("He left. She stayed!", "He left . She stayed !"),
    ("AT&T and Procter & Gamble", "AT&T and Procter & Gamble"),
    ("a 10-year bond (rated AA) -- or not...", "a 10-year bond -LRB- rated AA -RRB- -- or not ..."),
    ("[x] {y}", "-LSB- x -RSB- -LCB- y -RCB-"),
    ("I cannot, gonna, wanna", "I can not , gon na , wan na"),
    ("the '80s and #1", "the '80s and # 1"),
    ("Is it ?", "Is it ?"),
])
def test_classic_cases(line, expected):
    assert " ".join(texts(line)) == expected


def test_already_tokenized_text_goes_through_unchanged():
    line = "`` I do n't know , '' he said -LRB- the U.S. 's $ 1.5 -RRB- ."
    assert texts(line) == line.split()


def test_punctuation_is_marked_as_the_treebank_tags_it():
    tokens = tokenize('"Smith, 61, paid $5 (10%) for AT&T -- the dogs\' bones."')
    punct = {t.text for t in tokens if t.punct}
    kept = [t.text for t in tokens if not t.punct]
    assert punct == {"``", ",", "$", "-LRB-", "-RRB-", "--", ".", "''"}
    assert kept == ["Smith", "61", "paid", "5", "10", "%", "for", "AT&T", "the", "dogs", "'",
                    "bones"]                 # % (NN), & inside a word and the possessive stay
    # a `'` closing a single quotation is punctuation, a possessive is not
    assert [t.punct for t in tokenize("`the dogs'")] == [True, False, False, True]
    assert words("The end.") == (["The", "end"], 1)
    assert words("The end.", keep_punct=True) == (["The", "end", "."], 0)
    assert is_punctuation("...") and is_punctuation("€") and is_punctuation("。")
    assert not any(is_punctuation(w) for w in ("%", "&", "a.", "1990.", "n't", "'s", "<"))


def test_whitespace_tokenizer_splits_on_spaces_only():
    line = ' "I   don\'t   1990.  ,  Smith, '
    assert texts(line, "whitespace") == line.split()
    assert [t.punct for t in tokenize(line, "whitespace")] == [False, False, False, True, False]
    with pytest.raises(ValueError):
        tokenize("x", "spacy")


ALPHABET = list("aAbsStnT019 .,;:?!'\"`-$%&#@()[]{}/\\\t") + [
    "’", "“", "”", "…", "日", "é", "n't", "'s", "--", "...", "U.S."]
lines = st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join)
NORMALIZED = {'"': {"``", "''"}, "“": {"``"}, "”": {"''"}, "‘": {"`"}, "’": {"'"},
              "'": {"`", "'"}, "…": {"..."}, "(": {"-LRB-"}, ")": {"-RRB-"},
              "[": {"-LSB-"}, "]": {"-RSB-"}, "{": {"-LCB-"}, "}": {"-RCB-"}}


@settings(max_examples=1500, **SETTINGS)
@given(line=lines)
def test_no_character_is_lost_or_invented(line):
    tokens = tokenize(line)
    # the tokens are slices of the line, in order, and between them only spaces
    assert "".join(line[t.start:t.end] for t in tokens) == "".join(line.split())
    assert all(t.start < t.end for t in tokens)
    assert all(a.end <= b.start for a, b in zip(tokens, tokens[1:]))
    for token in tokens:
        piece = line[token.start:token.end]
        assert token.text and not any(c.isspace() for c in token.text)
        # a token is its slice, or the treebank's spelling of a quote or bracket (a curly
        # apostrophe inside a clitic written straight)
        assert (token.text == piece or token.text in NORMALIZED.get(piece, ())
                or token.text == piece.replace("’", "'")), (token, piece)


@settings(max_examples=1500, **SETTINGS)
@given(line=lines)
def test_tokenizing_twice_is_tokenizing_once(line):
    once = texts(line)
    assert texts(" ".join(once)) == once
    assert [t.punct for t in tokenize(" ".join(once))] == [t.punct for t in tokenize(line)]


@settings(max_examples=500, **SETTINGS)
@given(line=st.text(max_size=60))
def test_any_unicode_line_tokenizes(line):
    tokens = tokenize(line)
    assert "".join(line[t.start:t.end] for t in tokens) == "".join(line.split())
    assert texts(line, "whitespace") == line.split()
