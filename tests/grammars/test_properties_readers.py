"""Property-based tests of every reader (DESIGN §9): whatever the input, a result or a
`GfnemError`, never another exception; plus the invariants that are cheap to state.

Fixed seeds (`derandomize=True`) and bounded example counts keep the file deterministic and
under a minute on a 2-core machine; `pytest --hypothesis-show-statistics` prints how many
examples each property ran.
"""
from __future__ import annotations

import codecs
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from gfnem_cli.engine.errors import GfnemError
from grammars.binary_trees import escape_word
from grammars.data.corpus import PrepareOptions, load_corpus, prepare_text, prepare_trees, save_corpus
from grammars.data.predicted_trees import read_predicted_spans
from grammars.data.raw_text import TextOptions
from grammars.data.treebank import Tree, clean_tree, decode_bytes, parse_bracketed

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BOMS = [b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties")


def fresh(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


def quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------ the treebank reader

_PIECES = ["(", ")", " ", "\n", "\r\n", "\r", "\t", "NP", "a", "-NONE-", "#", "# c\n", "((",
           "))", "( (", "x y", "\x0c", "\u2028", "\x85", "\ufeff"]
bracket_text = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)
symbol = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                               blacklist_characters="()\ufeff\x85"), min_size=1, max_size=4)
leaf = st.builds(lambda label, word: Tree(label, word=word), symbol, symbol)
trees = st.recursive(leaf, lambda kids: st.builds(Tree, st.one_of(st.just(""), symbol),
                                                  st.lists(kids, min_size=1, max_size=3)),
                     max_leaves=12)


@settings(max_examples=1000, **SETTINGS)
@given(text=bracket_text, skip_bad=st.booleans())
def test_parse_bracketed_returns_or_raises_gfnem_error(text, skip_bad):
    try:
        parsed, bad = parse_bracketed(text, "f.mrg", skip_bad)
    except GfnemError as exc:
        assert not skip_bad and exc.path == "f.mrg" and exc.line >= 1
        event("refused")
        return
    event(f"{len(parsed)} trees" if len(parsed) < 3 else "3+ trees")
    assert skip_bad or not bad
    for item in parsed:   # whatever was accepted prints and reads back as itself
        again, _ = parse_bracketed(item.tree.to_string())
        assert [t.tree.to_string() for t in again] == [item.tree.to_string()]


@settings(max_examples=500, **SETTINGS)
@given(forest=st.lists(trees, min_size=1, max_size=4), crlf=st.booleans(),
       comment=st.booleans())
def test_printed_trees_parse_back_to_the_same_trees(forest, crlf, comment):
    newline = "\r\n" if crlf else "\n"
    lines = []
    for tree in forest:
        lines += (["# a comment", ""] if comment else []) + [tree.to_string()]
    parsed, _ = parse_bracketed(newline.join(lines) + newline, "t")
    assert [item.tree for item in parsed] == forest
    assert [item.line for item in parsed] == [k + 1 for k, line in enumerate(lines)
                                              if line.startswith("(")]
    for tree in forest:
        words, spans = clean_tree(tree, keep_tags=None)
        assert words == [word for _, word in tree.leaves()]
        assert all(0 <= a < b <= len(words) and b - a >= 2 for a, b in spans)


def test_deep_nesting_is_no_recursion_error():
    depth = 5000
    text = "(A " * depth + "(N w)" + ")" * depth
    parsed, _ = parse_bracketed(text)
    assert clean_tree(parsed[0].tree, keep_tags=None) == (["w"], [])
    assert parsed[0].tree.to_string() == text


@settings(max_examples=1000, **SETTINGS)
@given(data=st.binary(max_size=120), bom=st.sampled_from(BOMS))
def test_decode_bytes_then_parse_never_raises_anything_else(data, bom):
    try:
        text = decode_bytes(bom + data, "f", quiet)
        parse_bracketed(text, "f", skip_bad=True)
        parse_bracketed(text, "f")
    except GfnemError:
        pass


@settings(max_examples=500, **SETTINGS)
@given(text=st.text(max_size=60))
def test_a_bom_never_changes_the_text(text):
    assume(not text.startswith("\ufeff"))
    plain = decode_bytes(text.encode("utf-8"), "f", quiet)
    assert plain == text
    assert decode_bytes(codecs.BOM_UTF8 + text.encode("utf-8"), "f", quiet) == text
    assert decode_bytes(text.encode("utf-16"), "f", quiet) == text        # BOM + native order
    assert decode_bytes(codecs.BOM_UTF16_BE + text.encode("utf-16-be"), "f", quiet) == text


# ------------------------------------------------------------------ the text reader

ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "latin-1", "cp1252"]
sentences_text = st.text(st.sampled_from(list("ab cé\n\r\t#") + ["\u2028", "\x0c", "日", "\x00"]),
                         max_size=60)


AS_WRITTEN = TextOptions("whitespace", keep_punct=True)   # words exactly as line.split()


def expected_sentences(text: str) -> list[list[str]]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line.split() for line in lines if line.split() and not line.split()[0][0] == "#"]


@settings(max_examples=500, **SETTINGS)
@given(text=sentences_text, encoding=st.sampled_from(ENCODINGS), bom=st.sampled_from(BOMS),
       noise=st.binary(max_size=40))
def test_prepare_text_on_any_bytes(scratch, text, encoding, bom, noise):
    folder = fresh(scratch)
    for raw in (bom + text.encode(encoding, errors="replace"), bom + noise):
        path = folder / "in.txt"
        path.write_bytes(raw)
        try:
            prepare_text(path, PrepareOptions(lowercase=False), on_warning=quiet,
                         text_options=AS_WRITTEN)
        except GfnemError as exc:
            assert exc.path == str(path)
    # exact encodings: the words are the text's, with or without a byte-order mark
    if encoding in ("utf-8", "utf-8-sig", "utf-16") and not bom:
        assume(not text.startswith("\ufeff"))
        path.write_bytes(text.encode(encoding))
        expected = expected_sentences(text)
        try:
            corpus = prepare_text(path, PrepareOptions(lowercase=False), on_warning=quiet,
                                  text_options=AS_WRITTEN)
        except GfnemError:
            assert expected == []
            return
        assert [s.words for s in corpus.splits["test"]] == expected
    shutil.rmtree(folder)


# ------------------------------------------------------------------ --pred files

words = st.lists(st.sampled_from(["a", "b", "(", "c)", "dé"]), min_size=1, max_size=6)


@st.composite
def bracketing(draw, sentence: list[str]) -> str:
    """A random binary tree over `sentence`, written as --pred files are."""
    def build(lo: int, hi: int) -> str:
        if hi - lo == 1:
            return f"(T {escape_word(sentence[lo])})"
        cut = draw(st.integers(lo + 1, hi - 1))
        return f"(X {build(lo, cut)} {build(cut, hi)})"
    return build(0, len(sentence))


@settings(max_examples=400, **SETTINGS)
@given(data=st.data(), reference=st.lists(words, min_size=1, max_size=5),
       bom=st.sampled_from(BOMS[:2]), crlf=st.booleans())
def test_pred_files_read_back_or_name_the_line(scratch, data, reference, bom, crlf):
    lines = [data.draw(bracketing(sentence)) for sentence in reference]
    newline = "\r\n" if crlf else "\n"
    path = fresh(scratch) / "pred.txt"
    path.write_bytes(bom + (newline.join(lines) + newline).encode("utf-8"))
    spans = read_predicted_spans(path, reference, on_warning=quiet)
    assert spans == [clean_tree(parse_bracketed(line)[0][0].tree, None)[1] for line in lines]
    # a sentence's tree replaced by a blank line: reported at that line
    gap = data.draw(st.integers(0, len(lines) - 1))
    if len(lines) > 1:
        path.write_text("\n".join(lines[:gap] + [""] + lines[gap + 1:]) + "\n")
        with pytest.raises(GfnemError) as caught:
            read_predicted_spans(path, reference, on_warning=quiet)
        assert caught.value.line == gap + 1 and "blank" in caught.value.message
    # and any bytes at all: a result or a GfnemError naming the file
    path.write_bytes(data.draw(st.binary(max_size=80)) + data.draw(bracket_text).encode())
    try:
        read_predicted_spans(path, reference, [[w.lower() for w in s] for s in reference],
                             on_warning=quiet)
    except GfnemError as exc:
        assert exc.path == str(path)


# ------------------------------------------------------------------ the corpus loader

@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    """One small three-split corpus, saved with and without the manifest's file list."""
    tree_strings = [f"(S (NP (DT the) (NN w{k % 7})) (VP (VBZ runs) (RB k{k % 3})))"
                    for k in range(30)]
    options = PrepareOptions(lowercase=False, replace_digits=False, vocab_size=0)
    root = tmp_path_factory.mktemp("corpora")
    corpus = prepare_trees(tree_strings, options, (0.6, 0.2, 0.2), "synthetic", "s")
    listed = save_corpus(corpus, root / "listed")
    older = root / "older"
    shutil.copytree(listed, older)
    manifest = json.loads((older / "manifest.json").read_text())
    manifest.pop("files", None)
    (older / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_corpus(listed)
    columns = {(s, c): loaded.column(s, c) for s in loaded.data
               for c in loaded.data[s].column_names}
    columns["sizes"] = loaded.sizes
    files = sorted(p.relative_to(listed).as_posix() for p in listed.rglob("*"))
    return {"listed": listed, "older": older, "columns": columns, "files": files}


damage = st.tuples(st.sampled_from(["truncate", "flip", "delete", "garbage", "append", "empty"]),
                   st.floats(0, 1), st.integers(0, 255), st.binary(min_size=1, max_size=64))


def harm(path: Path, how: tuple) -> None:
    kind, where, bits, noise = how
    if path.is_dir():
        shutil.rmtree(path)
        return
    data = path.read_bytes()
    at = int(where * max(len(data) - 1, 0))
    if kind == "truncate":
        path.write_bytes(data[:at])
    elif kind == "flip" and data:
        path.write_bytes(data[:at] + bytes([data[at] ^ (bits or 1)]) + data[at + 1:])
    elif kind == "delete":
        path.unlink()
    elif kind == "garbage":
        path.write_bytes(data[:at] + noise + data[at + len(noise):])
    elif kind == "append":
        path.write_bytes(data + noise)
    elif kind == "empty":
        path.write_bytes(b"")


@settings(max_examples=400, **SETTINGS)
@given(data=st.data(), which=st.sampled_from(["listed", "older"]),
       harms=st.lists(damage, min_size=1, max_size=2))
def test_load_corpus_on_damaged_files(scratch, prepared, data, which, harms):
    corpus = fresh(scratch) / "c"
    shutil.copytree(prepared[which], corpus)
    for how in harms:
        target = corpus / data.draw(st.sampled_from(prepared["files"]))
        if target.exists():
            harm(target, how)
    try:
        loaded = load_corpus(corpus)
        columns = {(s, c): loaded.column(s, c) for s in loaded.data if len(loaded.data[s])
                   for c in loaded.data[s].column_names}
        columns["sizes"] = loaded.sizes
    except GfnemError as exc:
        assert exc.path is not None and (exc.hint or exc.message)
        event(f"{which}: refused ({exc.message.split(':')[0][:40]})")
    else:
        event(f"{which}: loaded")
        if which == "listed":   # with the file list, a corpus that loads is the one prepared
            assert columns == prepared["columns"]
    shutil.rmtree(corpus.parent)
