"""`gfnem parse` takes what users have (issue 13, item 1): a treebank file is read as trees
(told by its content, any extension) with the run's own preprocessing, raw text is tokenized
PTB-style with one output line per input line, and the `<unk>` rate is said, with a warning
and the unknown words above 5%. Every refusal is one line, exit 2, nothing written.

The run is a tiny N-PCFG trained for two steps on a PTB-style treebank made here (lowercased,
digits mapped), so every word of the sentences below but the invented ones is known.
"""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input_readers import REPO, TINY_RUN, ok, refused

from grammars.data.tokenize import words as ptb_words
from grammars.data.treebank import clean_tree, parse_bracketed, tree_words_spans

TREES = [
    "( (S (NP-SBJ (DT The) (NN company)) (VP (VBD said) (SBAR (-NONE- 0) (S (NP-SBJ (PRP it))"
    " (VP (VBZ expects) (NP (NP (NNS profits)) (PP (IN of) (NP ($ $) (CD 1.5) (CD billion)"
    " (-NONE- *U*)))) (PP-TMP (IN in) (NP (CD 1990))))))) (. .)) )",
    "( (S (`` ``) (S-TPC (NP-SBJ (PRP I)) (VP (VBP do) (RB n't) (VP (VB know)))) (, ,)"
    " ('' '') (NP-SBJ (NNP Smith)) (VP (VBD said)) (. .)) )",
    "( (S (NP-SBJ (NNP Pierre) (NNP Vinken)) (VP (MD will) (VP (VB join) (NP (NP (DT the)"
    " (NN board)) (PRN (-LRB- -LRB-) (NP (CD 61)) (-RRB- -RRB-))))) (. .)) )",
]

# what a user has: a WSJ `.mrg` file (a tree over many lines, an empty outer bracket)
MRG = """\
( (S
    (NP-SBJ (NNP Pierre) (NNP Vinken) )
    (VP (MD will)
      (VP (VB join)
        (NP (DT the) (NN board) )
        (PRN (-LRB- -LRB-) (NP (CD 61) ) (-RRB- -RRB-) )))
    (. .) ))
( (S (NP-SBJ (PRP I)) (VP (VBP do) (RB n't) (VP (VB know))) (. .)) )
( (X (, ,) (-NONE- *)) )
"""

RAW = (
    "The company said it expects profits of $1.5 billion in 1990.\n"
    "\n"
    "\"I don't know,\" Smith said.\n"
    "# a comment line\n"
    "...\n"
    "Pierre Vinken will join the board of Zorblax Quuxcorp, Smith said.\n"
    "   \n"
)
RAW_WORDS = [
    ["The", "company", "said", "it", "expects", "profits", "of", "1.5", "billion", "in", "1990"],
    [], ["I", "do", "n't", "know", "Smith", "said"], [], [],
    ["Pierre", "Vinken", "will", "join", "the", "board", "of", "Zorblax", "Quuxcorp", "Smith",
     "said"], []]


def invoke(runner, app, *args):
    return runner.invoke(app, [str(a) for a in args])


def output_words(path: Path) -> list[list[str]]:
    return [[] if line == "()" else tree_words_spans(line)[0]
            for line in path.read_text(encoding="utf-8").splitlines()]


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def ptb_run(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    root = tmp_path_factory.mktemp("ptb-run")
    treebank = root / "train.mrg"
    treebank.write_text("\n".join(TREES * 10) + "\n", encoding="utf-8")
    corpus, run = root / "corpus", root / "run"
    runner = CliRunner()
    ok(runner, app, "prepare", "ptb", treebank, "--out", corpus)
    ok(runner, app, "train", REPO / "recipes" / "synthetic-npcfg.yaml", "--out", run, "--quiet",
       "--device", "cpu", "--set", f"data.path={corpus}", *TINY_RUN)
    return run


@pytest.mark.parametrize("name", ["wsj_0001.mrg", "trees.dat"])
def test_a_treebank_file_is_parsed_as_trees(runner, cli_app, tmp_path, ptb_run, name):
    path = tmp_path / name
    path.write_text(MRG, encoding="utf-8")
    out = tmp_path / "parsed.txt"
    result = ok(runner, cli_app, "parse", ptb_run, "--input", path, "--out", out)
    expected = [clean_tree(t.tree)[0] for t in parse_bracketed(MRG)[0]]
    assert expected == [["Pierre", "Vinken", "will", "join", "the", "board", "61"],
                        ["I", "do", "n't", "know"], []]
    assert output_words(out) == expected            # one line per tree, not per line
    assert out.read_text().splitlines()[2] == "()"  # a tree with no word kept
    assert "-LRB-" not in out.read_text() and "NP-SBJ" not in out.read_text()
    said = flat(result.stdout)
    assert "is a bracketed treebank: 3 trees read with the run's preprocessing" in said
    assert "--keep-tags ptb, lowercased, digits -> N" in said
    assert "<unk>: 0.00% of the 11 words" in said and "warning:" not in result.stderr
    assert "wrote 3 lines (2 trees, 1 empty `()`" in said


def test_raw_text_gives_one_line_per_input_line(runner, cli_app, tmp_path, ptb_run):
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW, encoding="utf-8")
    out = tmp_path / "parsed.txt"
    result = ok(runner, cli_app, "parse", ptb_run, "--input", raw, "--out", out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(RAW.splitlines()) == 7
    assert [k for k, line in enumerate(lines) if line == "()"] == [1, 3, 4, 6]
    assert output_words(out) == RAW_WORDS            # the original words, punctuation gone
    said = flat(result.stdout)
    assert "9 punctuation tokens dropped" in said
    assert "4 blank, `#` or punctuation-only lines: written as ()" in said
    assert "<unk>: 7.14% of the 28 words are not in the run's vocabulary" in said
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "above 5%" in warnings[0], result.stderr
    assert "the most frequent unknown words: quuxcorp (1), zorblax (1)" in warnings[0]


def test_known_words_only_say_the_rate_and_warn_of_nothing(runner, cli_app, tmp_path,
                                                           ptb_run):
    raw = tmp_path / "known.txt"
    raw.write_text("Pierre Vinken (61) will join the board.\n", encoding="utf-8")
    result = ok(runner, cli_app, "parse", ptb_run, "--input", raw, "--out", tmp_path / "o")
    assert "<unk>: 0.00% of the 7 words" in flat(result.stdout)
    assert "warning:" not in result.stderr


def test_the_ten_most_frequent_unknown_words_are_named(runner, cli_app, tmp_path, ptb_run):
    raw = tmp_path / "unknown.txt"
    raw.write_text("".join(f"the w{chr(97 + k)} " * (12 - k) + "said\n" for k in range(12)),
                   encoding="utf-8")
    result = ok(runner, cli_app, "parse", ptb_run, "--input", raw, "--out", tmp_path / "o")
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning:"))
    named = warning.split("unknown words: ")[1]
    assert named.split(", ") == [f"w{chr(97 + k)} ({12 - k})" for k in range(10)]


def test_tokenize_whitespace_and_keep_punct(runner, cli_app, tmp_path, ptb_run):
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW, encoding="utf-8")
    out = tmp_path / "parsed.txt"
    result = ok(runner, cli_app, "parse", ptb_run, "--input", raw, "--out", out, "--tokenize",
                "whitespace")
    words = output_words(out)
    assert words[0][-3:] == ["billion", "in", "1990."] and "$1.5" in words[0]
    assert words[2][0] == '"I' and len(words) == 7
    assert "$N.N (1)" in result.stderr and "N. (1)" in result.stderr     # as the model sees them
    ok(runner, cli_app, "parse", ptb_run, "--input", raw, "--out", out, "--keep-punct")
    words = output_words(out)
    assert words[0][-4:] == ["billion", "in", "1990", "."] and "$" in words[0]
    assert words[2] == ["``", "I", "do", "n't", "know", ",", "''", "Smith", "said", "."]
    assert words[4] == ["..."] and words[3] == []
    assert words == [ptb_words(line, keep_punct=True)[0] if not line.startswith("#") else []
                     for line in RAW.splitlines()]


def test_bad_inputs_are_one_line_and_write_nothing(runner, cli_app, tmp_path, ptb_run):
    mrg = tmp_path / "wsj_0001.mrg"
    mrg.write_text(MRG, encoding="utf-8")
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW, encoding="utf-8")
    out = tmp_path / "parsed.txt"
    run = ["parse", ptb_run, "--out", out, "--input"]
    refused(runner, cli_app, tmp_path, *run, raw, "--tokenize", "spacy",
            says=("unknown --tokenize 'spacy'", "ptb or whitespace"))
    refused(runner, cli_app, tmp_path, *run, mrg, "--tokenize", "whitespace", names=mrg,
            says=("apply to raw text, but this is a bracketed treebank",))
    refused(runner, cli_app, tmp_path, *run, mrg, "--keep-punct", names=mrg)
    refused(runner, cli_app, tmp_path, *run, raw, "--split", "valid", names=raw,
            says=("--split valid", "this is a file"))
    broken = tmp_path / "broken.mrg"
    broken.write_text("( (S (NP (DT The) (NN dog))\n   (VP (VBD barked))) )\n( (S (NN x)\n")
    refused(runner, cli_app, tmp_path, *run, broken, says=(f"{broken}:3: unbalanced",))
    chinese = tmp_path / "chtb.mrg"
    chinese.write_text("( (IP (NP (NR 张三)) (VP (VV 走) (AS 了)) (PU 。)) )\n",
                       encoding="utf-8")
    refused(runner, cli_app, tmp_path, *run, chinese, names=chinese,
            says=("none of the 1 trees has a word the run's tag filter keeps (--keep-tags ptb",
                  "NR, VV, AS, PU"))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n# nothing\n\n", encoding="utf-8")
    refused(runner, cli_app, tmp_path, *run, blank, names=blank,
            says=("all 3 lines are blank or `#` comments",))
    marks = tmp_path / "marks.txt"
    marks.write_text("...\n\n-- !\n", encoding="utf-8")
    refused(runner, cli_app, tmp_path, *run, marks, names=marks,
            says=("punctuation only", "--keep-punct"))
    assert not out.exists()


def test_a_run_without_its_corpus_manifest_refuses_trees_with_the_command(
        runner, cli_app, tmp_path, ptb_run):
    run = tmp_path / "run"
    shutil.copytree(ptb_run, run)
    (run / "corpus_manifest.json").unlink()
    mrg = tmp_path / "wsj_0001.mrg"
    mrg.write_text(MRG, encoding="utf-8")
    line = refused(runner, cli_app, tmp_path, "parse", run, "--input", mrg, "--out",
                   tmp_path / "p.txt", names=mrg, says=("records no corpus manifest",))
    assert f"`gfnem prepare ptb {mrg} --out {tmp_path / 'wsj_0001-prepared'} --split none " \
           f"--vocab-from {run}`" in line


def test_a_folder_of_mrg_files_is_refused_with_the_exact_command(runner, cli_app, tmp_path,
                                                                ptb_run):
    folder = tmp_path / "wsj" / "00"
    folder.mkdir(parents=True)
    (folder / "wsj_0001.mrg").write_text(MRG, encoding="utf-8")
    direct = tmp_path / "direct.txt"
    ok(runner, cli_app, "parse", ptb_run, "--input", folder / "wsj_0001.mrg", "--out", direct)
    line = refused(runner, cli_app, tmp_path, "parse", ptb_run, "--input", folder, "--out",
                   tmp_path / "p.txt", names=folder, says=("not a prepared corpus",))
    command = shlex.split(line.split("`")[1])
    assert command[:3] == ["gfnem", "prepare", "ptb"] and "--vocab-from" in command
    ok(runner, cli_app, *command[1:])                   # the command, as printed, works
    prepared = Path(command[command.index("--out") + 1])
    via = tmp_path / "via.txt"
    ok(runner, cli_app, "parse", ptb_run, "--input", prepared, "--out", via)
    # the same trees either way (the prepared corpus drops the tree with no word)
    assert via.read_text().splitlines() == [t for t in direct.read_text().splitlines()
                                            if t != "()"]


def test_prepare_text_tokenizes_like_parse(runner, cli_app, tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW, encoding="utf-8")
    from grammars.data.corpus import load_corpus

    out = tmp_path / "text"
    result = ok(runner, cli_app, "prepare", "text", raw, "--out", out)
    corpus = load_corpus(out)
    assert corpus.column("test", "words") == [w for w in RAW_WORDS if w]
    assert corpus.column("test", "source") == [f"{raw}:1", f"{raw}:3", f"{raw}:6"]
    assert corpus.manifest["text"] == {"tokenize": "ptb", "keep_punct": False,
                                       "punct_dropped": 9, "punct_only_lines": 1}
    assert "tokenized: ptb; punctuation tokens dropped: 9" in flat(result.stdout)
    ok(runner, cli_app, "prepare", "text", raw, "--out", out, "--tokenize", "whitespace",
       "--keep-punct")
    assert load_corpus(out).column("test", "words")[0][-1] == "1990."
    refused(runner, cli_app, tmp_path, "prepare", "text", raw, "--out", tmp_path / "o",
            "--tokenize", "nltk", says=("unknown --tokenize 'nltk'",))


def test_an_image_run_refuses_the_text_options(runner, cli_app, tmp_path, monkeypatch):
    from gfnem_cli.commands import images

    def never(*_, **__):
        raise AssertionError("grammar-only options reached the image parser")

    monkeypatch.setattr(images, "is_image_run", lambda run: True)
    monkeypatch.setattr(images, "parse_images", never)
    for extra in (["--tokenize", "ptb"], ["--keep-punct"]):
        refused(runner, cli_app, tmp_path, "parse", tmp_path, "--input", tmp_path, "--out",
                tmp_path / "codes.jsonl", *extra, says=(extra[0], "grammar-only"))


def test_help_explains_the_new_options(runner, cli_app):
    result = runner.invoke(cli_app, ["parse", "--help"], env={"COLUMNS": "200"})
    text = flat(result.stdout)
    for needle in ("--tokenize", "--keep-punct", "whitespace", "bracketed treebank",
                   "output line k answers input line k", "`do n't`"):
        assert needle in text, needle
    result = runner.invoke(cli_app, ["prepare", "text", "--help"], env={"COLUMNS": "200"})
    assert "--tokenize" in result.stdout and "--keep-punct" in result.stdout


def test_a_run_that_kept_punctuation_says_so(tmp_path):
    import json

    from grammars.data.inputs import read_parse_input
    from grammars.data.tag_filter import PTB
    from grammars.data.vocabulary import Vocabulary

    run = tmp_path / "run"
    run.mkdir()
    kept = {"keep_tags": "list", "tags": sorted(PTB.keep | {",", "."})}
    (run / "corpus_manifest.json").write_text(json.dumps({"options": {}, "tag_filter": kept}))
    raw = tmp_path / "raw.txt"
    raw.write_text("Yes, he said.\n", encoding="utf-8")
    data = read_parse_input(raw, run, Vocabulary(["<unk>", "yes", "he", "said"]))
    assert data.words == [["Yes", "he", "said"]] and data.ids == [[1, 2, 3]]
    assert any("kept punctuation leaves (tags , .," in note and "--keep-punct" in note
               for note in data.notes), data.notes

PIECES = ["(", ")", "( (S ", "(NN dog)", "(. .)", " ", "\n", "#", "The", "don't", '"', ",",
          "$1.5", "-NONE-", "(-LRB- -LRB-)", "\t", "é", "..."]


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_any_input_file_gives_rows_or_one_line_error(tmp_path, ptb_run, text):
    """Whatever the file holds: one row per line (text) or per tree (a treebank), or a
    GfnemError naming the file; never another exception."""
    from gfnem_cli.engine.errors import GfnemError
    from grammars.data.inputs import looks_like_treebank, read_parse_input
    from grammars.data.treebank import split_lines
    from grammars.data.vocabulary import Vocabulary

    path = tmp_path / "any.txt"
    path.write_text(text, encoding="utf-8")
    vocab = Vocabulary.load(ptb_run / "vocab.json")
    try:
        data = read_parse_input(path, ptb_run, vocab)
    except GfnemError as exc:
        assert exc.path == str(path)
        return
    if looks_like_treebank(text):
        assert data.kind == "treebank" and len(data.words) == len(parse_bracketed(text)[0])
    else:
        assert data.kind == "text" and len(data.words) == len(split_lines(text))
    assert [len(row) for row in data.words] == [len(row) for row in data.ids]
