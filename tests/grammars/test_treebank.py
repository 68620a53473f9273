"""Bracket reading and cleaning: the PTB quirks and every malformed-input message."""
from __future__ import annotations

import pytest

from gfnem_cli.engine.errors import GfnemError
from grammars.data.predicted_trees import read_predicted_spans
from grammars.data.treebank import (base_label, clean_tree, collect_files, parse_bracketed,
                               read_text, tree_words_spans, wsj_section)


def cleaned(text: str):
    trees, _ = parse_bracketed(text, "t.mrg")
    return [clean_tree(t.tree) for t in trees]


def test_tiny_treebank_cleaning(tiny_treebank):
    trees, bad = parse_bracketed(tiny_treebank, "tiny.mrg")
    assert bad == []
    assert [t.source for t in trees] == [f"tiny.mrg:{n}" for n in (2, 3, 5, 6, 7, 8)]
    got = [clean_tree(t.tree) for t in trees]
    assert got[0] == (["The", "dog", "barked"], [(0, 3), (0, 2)])   # trace NP gone, `.` gone
    assert got[1] == (["He", "left"], [(0, 2)])                     # spans lines 3-4
    assert got[2] == (["Hello"], [])
    assert got[3] == (["the", "cats"], [(0, 2)])                    # unary chain at the root
    assert got[4] == (["1,000", "Dollars", "fell", "in", "1999"],
                      [(0, 5), (0, 2), (2, 5), (3, 5)])
    assert got[5] == ([], [])                                       # nothing but , and trace


def test_outer_empty_bracket_is_kept_in_tree_string():
    trees, _ = parse_bracketed("( (S (NN a) (NN b)) )")
    assert trees[0].tree.label == ""
    assert trees[0].tree.to_string() == "( (S (NN a) (NN b)))"
    assert clean_tree(trees[0].tree) == (["a", "b"], [(0, 2)])


def test_function_tags_and_special_labels():
    assert base_label("NP-SBJ-1") == "NP"
    assert base_label("PP-CLR") == "PP"
    assert base_label("NP=2") == "NP"
    assert base_label("-NONE-") == "-NONE-"
    assert base_label("-LRB-") == "-LRB-"
    assert base_label("PRP$") == "PRP$"


def test_traces_empty_constituents_and_dedup():
    # the SBAR holds only a trace: it disappears, so no span ends where it was
    (words, spans), = cleaned("( (S (NP (NN a)) (VP (VB b) (SBAR (-NONE- 0) (S (-NONE- *T*))))"
                              " (NP (NN c) (NN d))) )")
    assert words == ["a", "b", "c", "d"]
    assert spans == [(0, 4), (2, 4)]        # VP (1,2) is width 1; NP (2,4) once


def test_non_word_tags_are_dropped():
    (words, _), = cleaned("( (S (`` ``) (NP ($ $) (CD 5) (# #)) (: ;) (-LRB- -LRB-) (NN x)) )")
    assert words == ["5", "x"]


def test_comment_lines_are_skipped_only_between_trees():
    text = "# header\n  # indented comment\n(S (NN a)\n (NN b))\n# tail\n"
    trees, _ = parse_bracketed(text, "c.txt")
    assert len(trees) == 1 and trees[0].line == 3


@pytest.mark.parametrize("text,line,problem", [
    ("(S (NN a) (NN b))\n(S (NN a) (NN b)\n(S (NN c) (NN d))\n", 2, "never closed"),
    ("(S (NN a) (NN b))\n(S (NN a) (NN b)))\n", 2, "no matching `(`"),
    ("(S (NN a))\nhello (S (NN b))\n", 2, "outside brackets"),
    ("(S (NN a))\n( )\n", 2, "no words"),
    ("(S (NP))\n", 1, "empty constituent `(NP)`"),
    ("(S (NN a b))\n", 1, "unexpected word `b`"),
    ("(S (NN a (DT b)))\n", 1, "both a word and subtrees"),
])
def test_malformed_trees_name_file_and_line(text, line, problem):
    with pytest.raises(GfnemError) as info:
        parse_bracketed(text, "bad.mrg")
    assert info.value.path == "bad.mrg" and info.value.line == line
    assert problem in str(info.value)
    assert str(info.value).startswith(f"bad.mrg:{line}: ")


def test_skip_bad_recovers_at_next_tree():
    text = ("( (S (NN a) (NN b)) )\n"
            "(S (NN g) (NN h)))\n"            # stray `)`: the tree it ends is suspect
            "( (S (NN x y)\n"                 # error inside a multi-line tree
            "    (NN z)))\n"
            "( (S (NN e) (NN f)) )\n"
            "( (S (NN c) (NN d)\n"            # never closed: swallows the rest until EOF
            "    (NN indented))\n"
            "(S (NN i) (NN j))\n")
    trees, bad = parse_bracketed(text, "s.mrg", skip_bad=True)
    assert [clean_tree(t.tree)[0] for t in trees] == [["a", "b"], ["e", "f"], ["i", "j"]]
    assert [t.line for t in trees] == [1, 5, 8]
    assert [e.line for e in bad] == [2, 3, 6]


def test_latin1_fallback_warns(tmp_path):
    path = tmp_path / "latin.mrg"
    path.write_bytes(b"( (S (NN caf\xe9) (NN au) (NN lait)) )\n")
    messages = []
    text = read_text(path, messages.append)
    assert "café" in text
    assert len(messages) == 1 and "latin.mrg:1" in messages[0] and "latin-1" in messages[0]


def test_tree_words_spans_keeps_every_leaf():
    words, spans = tree_words_spans("(NT-1 (T-3 the) (NT-2 (T , ) (T dog)))")
    assert words == ["the", ",", "dog"]
    assert spans == [(0, 3), (1, 3)]
    with pytest.raises(GfnemError, match="p.txt:7: unbalanced"):
        tree_words_spans("(A (T x) (T y)", "p.txt", 7)


def test_predicted_spans_alignment(tmp_path):
    pred = tmp_path / "pred.txt"
    pred.write_text("(A (T The) (B (T dog) (T -LRB-)))\n(A (T x) (T y))\n")
    words = [["The", "dog", "("], ["x", "y"]]
    assert read_predicted_spans(pred, words) == [[(0, 3), (1, 3)], [(0, 2)]]
    assert read_predicted_spans(pred, [["t", "d", "("], ["x", "y"]],
                                alternative=words) == [[(0, 3), (1, 3)], [(0, 2)]]
    with pytest.raises(GfnemError, match=r"pred.txt:2: 2 trees for the 1 sentences"):
        read_predicted_spans(pred, words[:1])
    with pytest.raises(GfnemError, match=r"pred.txt:2: 2 trees for the 3 sentences"):
        read_predicted_spans(pred, words + [["z"]])
    with pytest.raises(GfnemError, match=r"pred.txt:2: word 2 is `y` but sentence 2 of split "
                                         r"'test' \(f:9\) has `z`"):
        read_predicted_spans(pred, [words[0], ["x", "z"]], sources=["f:1", "f:9"])
    with pytest.raises(GfnemError, match=r"pred.txt:1: tree has 3 words but sentence 1"):
        read_predicted_spans(pred, [["The", "dog"], ["x", "y"]])


def test_collect_files_and_sections(tmp_path):
    (tmp_path / "02").mkdir()
    (tmp_path / "23").mkdir()
    (tmp_path / "02" / "wsj_0201.mrg").write_text("(S (NN a))")
    (tmp_path / "23" / "b.mrg").write_text("(S (NN a))")
    (tmp_path / "23" / "README").write_text("not a tree")
    files = collect_files([tmp_path])
    assert [f.name for f in files] == ["wsj_0201.mrg", "b.mrg"]
    assert [wsj_section(f) for f in files] == [2, 23]
    assert wsj_section(tmp_path / "plain.txt") is None
    with pytest.raises(GfnemError, match="no such file"):
        collect_files([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GfnemError, match="no .mrg files"):
        collect_files([tmp_path / "empty"])
