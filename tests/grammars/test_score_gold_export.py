"""Numbers users can hand on (issue 13, item 5): `gfnem score` writes each sentence's log p(x)
and they sum to `evaluate`'s NLL; `evaluate RUN` on a corpus prepared from raw text gives
NLL and perplexity without F1; `parse --gold-out` and `evaluate --export-gold` write gold
trees aligned with the predictions, which, read back by the F1 scorer, give `evaluate`'s F1;
`evaluate --pred` takes trees that still carry punctuation and PTB tags; a corpus whose
fingerprint or vocabulary is not the run's is warned about, and the `<unk>` rate is said.
Every refusal is one line, exit 2, no traceback, nothing written.

Runs are tiny (a 2-step N-PCFG; a 4-step GFlowNet-EM run of the non-context-free grammar,
whose likelihood is the importance-sampled bound) on a 60-sentence synthetic corpus.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input_readers import REPO, TINY_RUN, ok, refused
from test_gfnem_train_cli import recipe

from grammars.data.tag_filter import PTB
from grammars.data.treebank import clean_tree, parse_bracketed, tree_words_spans
from grammars.evaluation.f1 import score_spans

CHINESE = ("( (IP (NP (NR 张三)) (VP (VV 走) (AS 了)) (PU 。)) )\n"
           "( (IP (NP (NR 李四)) (VP (VV 看) (NP (NN 书))) (PU ，) (VP (VV 笑) (AS 了))) )\n")


def flat(text: str) -> str:
    return " ".join(text.split())


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_lines(path: Path) -> tuple[list[list[str]], list[list[tuple[int, int]]]]:
    """Words and spans of a file of trees, line by line (`()` is an empty row)."""
    rows = [([], []) if line == "()" else tree_words_spans(line, path, k)
            for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)]
    return [w for w, _ in rows], [s for _, s in rows]


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    out = tmp_path_factory.mktemp("syn") / "corpus"
    ok(CliRunner(), app, "prepare", "synthetic", "--out", out, "--num-sentences", 60,
       "--max-length", 8)
    return out


def _train(tmp_path_factory, *args) -> Path:
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    out = tmp_path_factory.mktemp("run") / "run"
    ok(CliRunner(), app, "train", *args, "--out", out, "--quiet", "--device", "cpu")
    return out


@pytest.fixture(scope="module")
def run(syn, tmp_path_factory) -> Path:
    return _train(tmp_path_factory, REPO / "recipes" / "synthetic-npcfg.yaml",
                  "--set", f"data.path={syn}", *TINY_RUN)


@pytest.fixture
def ptb(tmp_path, runner, cli_app, tiny_mrg) -> Path:
    out = tmp_path / "ptb"
    ok(runner, cli_app, "prepare", "ptb", tiny_mrg, "--out", out, "--split", "none")
    return out


def summed(rows: list[dict]) -> tuple[float, int, int]:
    scored = [r for r in rows if r["log_p"] is not None]
    return sum(r["nll"] for r in scored), sum(r["nll_tokens"] for r in scored), len(scored)


# ------------------------------------------------------------------ score

@pytest.mark.parametrize("split", ["test", "valid"])
def test_score_sums_to_evaluates_exact_nll(runner, cli_app, tmp_path, run, syn, split):
    scores, report = tmp_path / "scores.jsonl", tmp_path / "report.json"
    result = ok(runner, cli_app, "score", run, "--input", syn, "--split", split, "--out", scores)
    ok(runner, cli_app, "evaluate", run, "--data", syn, "--split", split, "--json", report)
    rows, figures = records(scores), json.loads(report.read_text())
    from grammars.data.corpus import load_corpus

    words = load_corpus(syn).column(split, "words")
    assert [r["words"] for r in rows] == words and [r["row"] for r in rows] == list(
        range(1, len(words) + 1))
    total, tokens, count = summed(rows)
    assert (count, tokens) == (figures["nll_sentences"], figures["nll_tokens"])
    assert total == pytest.approx(figures["nll_per_token"] * figures["nll_tokens"], rel=1e-9)
    for r in rows:
        assert r["bound"] is False and r["method"] == "inside" and r["length"] == len(r["words"])
        assert r["nll"] == -r["log_p"] and r["nll_tokens"] == r["length"] + 1
        assert r["nll_per_token"] == pytest.approx(r["nll"] / r["nll_tokens"])
    said = flat(result.stdout)
    assert f"NLL/token {figures['nll_per_token']:.4f} (exact, inside)" in said
    assert f"perplexity {figures['perplexity']:.2f}" in said and "<unk>: " in said


@pytest.mark.parametrize("kind", ["ncfg", "npcfg"])
def test_score_of_a_bound_gives_m_and_standard_errors(runner, cli_app, tmp_path, syn,
                                                      tmp_path_factory, kind):
    """GFlowNet-EM runs: the non-context-free grammar's figure is the importance-sampled
    bound; the N-PCFG's is exact, with the bound beside it when --samples is given."""
    gfnem = _train(tmp_path_factory, recipe(tmp_path, syn, model__kind=kind))
    scores, report = tmp_path / "scores.jsonl", tmp_path / "report.json"
    ok(runner, cli_app, "score", gfnem, "--input", syn, "--out", scores, "--samples", 4,
       "--seed", 3)
    ok(runner, cli_app, "evaluate", gfnem, "--data", syn, "--json", report, "--samples", 4,
       "--seed", 3, "--decode-samples", 2)
    rows, figures = records(scores), json.loads(report.read_text())
    rows = [r for r in rows if r["log_p"] is not None]
    prefix = "is_" if kind == "npcfg" else ""
    total, tokens, _ = summed(rows)
    if kind == "npcfg":
        assert figures["nll_is_bound"] is False and figures["nll_method"] == "inside"
        assert total == pytest.approx(figures["nll_per_token"] * tokens, rel=1e-9)
        assert all(r["bound"] is False and "std_error" not in r for r in rows)
        total = -sum(r["is_log_p"] for r in rows)
    assert figures[prefix + "nll_is_bound"] is True
    assert figures[prefix + "nll_method"] == "importance sampling, M=4"
    assert total == pytest.approx(figures[prefix + "nll_per_token"] * tokens, rel=1e-9)
    se = math.sqrt(sum(r[prefix + "std_error"] ** 2 for r in rows)) / tokens
    assert se == pytest.approx(figures[prefix + "nll_std_error"], rel=1e-9)
    assert all(r[prefix + "method"] == "importance sampling, M=4" for r in rows)
    if kind == "ncfg":
        assert all(r["bound"] is True and r["samples"] == 4 for r in rows)


def test_score_answers_raw_text_line_for_line(runner, cli_app, tmp_path, run):
    raw = tmp_path / "raw.txt"
    raw.write_text("the dog saw a cat.\n\nZorblax!\n# comment\nbob wanted\n", encoding="utf-8")
    scores = tmp_path / "scores.jsonl"
    result = ok(runner, cli_app, "score", run, "--input", raw, "--out", scores)
    rows = records(scores)
    assert [r["source"] for r in rows] == [f"{raw}:{k}" for k in range(1, 6)]
    assert [r["words"] for r in rows] == [["the", "dog", "saw", "a", "cat"], [], ["Zorblax"],
                                          [], ["bob", "wanted"]]
    assert [r["skipped"] for r in rows if r["log_p"] is None] == [
        "no word", "one word: a binary grammar derives none", "no word"]
    assert rows[2]["unk"] == 1 and rows[0]["log_p"] < 0 < rows[4]["nll"]
    assert "wrote 5 rows" in flat(result.stdout) and "2 sentences scored" in flat(result.stdout)


# ------------------------------------------------------------------ a corpus without trees

def test_evaluate_a_text_corpus_gives_nll_and_perplexity(runner, cli_app, tmp_path, run, syn):
    raw = tmp_path / "raw.txt"
    raw.write_text("the dog saw a cat\nbob wanted\njohn\nsome child liked the ball\n")
    text = tmp_path / "text"
    ok(runner, cli_app, "prepare", "text", raw, "--out", text, "--vocab-from", syn,
       "--no-lowercase")
    report, scores = tmp_path / "report.json", tmp_path / "scores.jsonl"
    result = ok(runner, cli_app, "evaluate", run, "--data", text, "--json", report)
    figures = json.loads(report.read_text())
    assert figures["sentence_f1"] is None and figures["corpus_f1"] is None
    assert figures["gold_trees"] is False and figures["nll_is_bound"] is False
    assert (figures["num_sentences"], figures["num_skipped"]) == (3, 1)
    assert "no gold trees" in flat(result.stdout) and "perplexity" in flat(result.stdout)
    assert "not the corpus" in result.stderr and "<unk>" in result.stderr   # another corpus
    ok(runner, cli_app, "score", run, "--input", text, "--out", scores)
    total, tokens, _ = summed(records(scores))
    assert total / tokens == pytest.approx(figures["nll_per_token"], rel=1e-9)
    for extra, says in ((["--export-gold", tmp_path / "g.txt"], "--export-gold"),
                        (["--decode", "mbr"], "--decode")):
        refused(runner, cli_app, tmp_path, "evaluate", run, "--data", text, "--json", report,
                *extra, names=text, says=(says, "no gold trees"))
    refused(runner, cli_app, tmp_path, "evaluate", "--data", text, "--baseline", "right",
            says=("raw text and has no gold trees", "give a RUN"))


# ------------------------------------------------------------------ gold trees for EVALB

def test_gold_export_read_back_gives_evaluates_f1(runner, cli_app, tmp_path, run, syn):
    pred, gold, exported = tmp_path / "pred.txt", tmp_path / "gold.txt", tmp_path / "g2.txt"
    ok(runner, cli_app, "parse", run, "--input", syn, "--out", pred, "--gold-out", gold)
    from grammars.data.corpus import load_corpus

    corpus = load_corpus(syn)
    gold_words, gold_spans = read_lines(gold)
    pred_words, pred_spans = read_lines(pred)
    assert gold_words == pred_words == corpus.column("test", "words")
    assert [sorted(s) for s in gold_spans] == [sorted(map(tuple, s))
                                               for s in corpus.column("test", "gold_spans")]
    for max_length in (0, 5):
        report = tmp_path / f"e{max_length}.json"
        ok(runner, cli_app, "evaluate", run, "--data", syn, "--json", report, "--max-length",
           max_length, "--export-gold", exported)
        figures = json.loads(report.read_text())
        again = score_spans(gold_spans, pred_spans, [len(w) for w in gold_words],
                            max_length or None)
        assert (again.sentence_f1, again.corpus_f1) == (figures["sentence_f1"],
                                                        figures["corpus_f1"])
        assert exported.read_text() == gold.read_text()      # every sentence, whatever the cap
    # the gold file is a valid --pred file of its own split: F1 100
    report = tmp_path / "self.json"
    ok(runner, cli_app, "evaluate", "--data", syn, "--pred", gold, "--json", report)
    assert json.loads(report.read_text())["sentence_f1"] == 100.0


def test_gold_out_of_a_treebank_file_is_line_for_line(runner, cli_app, tmp_path, run,
                                                     tiny_mrg):
    pred, gold = tmp_path / "pred.txt", tmp_path / "gold.txt"
    result = ok(runner, cli_app, "parse", run, "--input", tiny_mrg, "--out", pred,
                "--gold-out", gold)
    lines = gold.read_text().splitlines()
    assert lines == ["(S (NP (DT The) (NN dog)) (VP (VBD barked)))",
                     "(S (NP (PRP He)) (VP (VBD left)))", "(FRAG (INTJ (UH Hello)))",
                     "(ROOT (S (NP (DT the) (NNS cats))))",
                     "(S (NP (CD 1,000) (NNS Dollars)) (VP (VBD fell) (PP (IN in) (NP (CD 1999)))))",
                     "()"]
    assert read_lines(gold)[0] == read_lines(pred)[0]
    assert pred.read_text().splitlines()[-1] == "()"
    assert "wrote the 6 gold trees" in flat(result.stdout)


@st.composite
def ptb_trees(draw, depth: int = 0) -> str:
    """A bracketed tree of word and non-word leaves, function tags, traces, empty labels."""
    if depth >= 4 or (depth and draw(st.booleans())):
        tag = draw(st.sampled_from(["NN", "DT", "VBD", "PRP$", ",", ".", "``", "-NONE-", "$"]))
        return f"({tag} {draw(st.sampled_from(['a', 'Dog', '1,000', '*T*-1', 'é']))})"
    label = draw(st.sampled_from(["S", "NP-SBJ-1", "VP", "PP=2", "", "FRAG"]))
    kids = draw(st.lists(ptb_trees(depth + 1), min_size=1, max_size=3))
    return f"({label} {' '.join(kids)})"


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(texts=st.lists(ptb_trees(), min_size=1, max_size=4))
def test_gold_lines_and_pred_files_read_back_as_the_filter_cleans(tmp_path, texts):
    """Any tree: its gold line has exactly the words and spans the tag filter gives it (or is
    `()`), and the trees themselves, given as --pred, read as those spans."""
    from grammars.data.gold_trees import gold_tree_lines
    from grammars.data.predicted_trees import read_predicted_trees

    cleaned = [clean_tree(parse_bracketed(t)[0][0].tree, PTB) for t in texts]
    for line, (words, spans) in zip(gold_tree_lines(texts, PTB, [w for w, _ in cleaned]),
                                    cleaned):
        assert (line == "()") if not words else tree_words_spans(line) == (words, spans)
    path = tmp_path / "pred.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    kept = [(w, s) for w, s in cleaned if w]
    if kept:
        read = read_predicted_trees(path, [w for w, _ in kept], tag_filter=PTB)
        assert read.spans == [s for _, s in kept]
        assert read.skipped == len(cleaned) - len(kept)


# ------------------------------------------------------------------ --pred with punctuation

def test_pred_may_carry_punctuation_traces_and_ptb_tags(runner, cli_app, tmp_path, ptb,
                                                        tiny_mrg):
    report = tmp_path / "r.json"
    # the treebank itself: punctuation, -NONE- traces, function tags and a tree with no word
    result = ok(runner, cli_app, "evaluate", "--data", ptb, "--pred", tiny_mrg, "--json", report)
    figures = json.loads(report.read_text())
    assert figures["sentence_f1"] == figures["corpus_f1"] == 100.0
    assert (figures["pred_filtered"], figures["pred_skipped"]) == (2, 1)
    assert "2 of the 5 trees read through the corpus's tag filter" in flat(result.stdout)
    from grammars.data.corpus import load_corpus

    original = tmp_path / "original.txt"        # the split's own `tree` column
    original.write_text("\n".join(load_corpus(ptb).column("test", "tree")) + "\n")
    ok(runner, cli_app, "evaluate", "--data", ptb, "--pred", original, "--json", report)
    assert json.loads(report.read_text())["sentence_f1"] == 100.0
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(original.read_text().replace("(NN dog)", "(NN cat)"))
    refused(runner, cli_app, tmp_path, "evaluate", "--data", ptb, "--pred", wrong,
            names=wrong, says=("word 2 is `cat`", "as the corpus's tag filter"))


def test_pred_uses_the_corpus_own_tag_filter(runner, cli_app, tmp_path):
    trees = tmp_path / "ctb.mrg"
    trees.write_text(CHINESE, encoding="utf-8")
    corpus = tmp_path / "ctb"
    ok(runner, cli_app, "prepare", "ptb", trees, "--out", corpus, "--split", "none",
       "--keep-tags", "NR,VV,AS,NN")
    report, gold = tmp_path / "r.json", tmp_path / "gold.txt"
    ok(runner, cli_app, "evaluate", "--data", corpus, "--pred", trees, "--json", report,
       "--export-gold", gold)
    assert json.loads(report.read_text())["sentence_f1"] == 100.0
    assert gold.read_text(encoding="utf-8").splitlines()[0] == \
        "(IP (NP (NR 张三)) (VP (VV 走) (AS 了)))"


# ------------------------------------------------------------------ another corpus

def test_another_vocabulary_is_warned_and_the_unk_rate_said(runner, cli_app, tmp_path, run,
                                                            ptb):
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "corpus_manifest.json").unlink()        # no fingerprint to compare with
    for command in (["evaluate", bare, "--data", ptb], ["parse", bare, "--input", ptb,
                                                         "--out", tmp_path / "p.txt"]):
        result = ok(runner, cli_app, *command)
        warnings = [line for line in result.stderr.splitlines() if "vocabulary of" in line]
        assert len(warnings) == 1 and "is not the one" in warnings[0], result.stderr
        assert "% of the 13 words of split 'test' are <unk>" in warnings[0]
        assert "<unk>: " in result.stdout and "of the 13 words" in flat(result.stdout)


# ------------------------------------------------------------------ refusals

def test_refusals_are_one_line_and_write_nothing(runner, cli_app, tmp_path, run, syn,
                                                 monkeypatch):
    raw = tmp_path / "raw.txt"
    raw.write_text("the dog saw a cat\n")
    out = tmp_path / "scores.jsonl"
    score = ["score", run, "--input", syn, "--out", out]
    refused(runner, cli_app, tmp_path, *score, "--samples", 2,
            says=("--samples needs a run trained with a GFlowNet sampler",))
    refused(runner, cli_app, tmp_path, *score, "--samples", -1, says=("--samples",))
    refused(runner, cli_app, tmp_path, *score, "--batch-size", 0, says=("--batch-size",))
    refused(runner, cli_app, tmp_path, *score, "--checkpoint", "middle", says=("middle",))
    refused(runner, cli_app, tmp_path, *score, "--tokenize", "whitespace",
            says=("apply to raw text",))
    refused(runner, cli_app, tmp_path, "score", run, "--input", syn, "--out", tmp_path,
            says=("is a directory",))
    refused(runner, cli_app, tmp_path, "score", run, "--input", tmp_path / "none.txt",
            "--out", out, says=("input not found",))
    refused(runner, cli_app, tmp_path, "score", run, "--input", raw, "--out", raw,
            says=("--out names the --input file",))
    gold = tmp_path / "gold.txt"
    refused(runner, cli_app, tmp_path, "parse", run, "--input", raw, "--out",
            tmp_path / "p.txt", "--gold-out", gold, says=("--gold-out", "raw text"))
    refused(runner, cli_app, tmp_path, "parse", run, "--input", syn, "--out", gold,
            "--gold-out", gold, says=("--gold-out names the --out file",))
    refused(runner, cli_app, tmp_path, "evaluate", run, "--data", syn, "--json", gold,
            "--export-gold", gold, says=("--export-gold names the --json file",))
    from gfnem_cli.commands import images

    monkeypatch.setattr(images, "is_image_run", lambda path: path is not None)
    refused(runner, cli_app, tmp_path, *score, says=("image run", "gfnem evaluate RUN --data"))
    refused(runner, cli_app, tmp_path, "parse", run, "--input", syn, "--out", tmp_path / "c",
            "--gold-out", gold, says=("--gold-out", "grammar-only"))
    refused(runner, cli_app, tmp_path, "evaluate", run, "--data", syn, "--export-gold", gold,
            says=("--export-gold", "grammar-only"))


def test_a_run_with_no_likelihood_has_nothing_to_score(runner, cli_app, tmp_path, syn,
                                                      tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcem")
    mcem = _train(tmp_path_factory, recipe(folder, syn, model__kind="ncfg", method="mcem"))
    refused(runner, cli_app, tmp_path, "score", mcem, "--input", syn, "--out",
            tmp_path / "s.jsonl", says=("no exact likelihood and no GFlowNet sampler",))


def test_help_explains_the_new_options(runner, cli_app):
    for command, needles in (
            (["score"], ["--input", "--out", "--split", "--tokenize", "--keep-punct",
                         "--samples", "--seed", "--batch-size", "--checkpoint", "--device",
                         "std_error", "gfnem evaluate RUN --data DIR"]),
            (["parse"], ["--gold-out", "EVALB"]),
            (["evaluate"], ["--export-gold", "EVALB", "raw text", "tag filter"])):
        result = runner.invoke(cli_app, command + ["--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        for needle in needles:
            assert needle in flat(result.stdout), (command, needle)
