"""`gfnem prepare synthetic --grammar FILE.json`: a corpus from a grammar of one's own.

The embedded grammar exported to a file draws the very corpus the default draws; every
defect of a grammar file is one `error:` line, exit 2, nothing written (each listed case,
and random perturbations by hypothesis); and `evaluate` gives the true grammar's NLL on a
corpus drawn from the shipped example, checked against a plain-Python inside pass.
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfnem_cli.engine.errors import GfnemError
from grammars.data.grammar_file import read_grammar_file
from grammars.data.synthetic import sample_treebank, true_grammar_json
from grammars.data.true_grammar import TrueGrammar

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "grammars" / "head-final.json"
SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


def example() -> dict:
    return json.loads(EXAMPLE.read_text(encoding="utf-8"))


def prepare(runner, app, grammar, out, *extra):
    args = ["prepare", "synthetic", "--out", str(out), *map(str, extra)]
    if grammar is not None:
        args += ["--grammar", str(grammar)]
    return runner.invoke(app, args)


def assert_refused(result, path: Path, out: Path, *fragments):
    """Exit 2, exactly one stderr line `error: FILE...`, no traceback, nothing written."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --- the embedded grammar, exported, round-trips -------------------------------------------

def test_exported_embedded_grammar_draws_the_default_corpus(runner, cli_app, tmp_path):
    options = ("--num-sentences", 120, "--seed", 4, "--max-length", 12)
    result = prepare(runner, cli_app, None, tmp_path / "default", *options)
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "default" / "grammar.json").read_text())
    assert stored == json.loads(json.dumps(true_grammar_json()))
    exported = tmp_path / "exported.json"
    exported.write_text(json.dumps(true_grammar_json(), indent=1), encoding="utf-8")
    result = prepare(runner, cli_app, exported, tmp_path / "mine", *options)
    assert result.exit_code == 0, result.output
    assert "gfnem-english-v1" in result.stdout and "spectral radius" in result.stdout
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("default", "mine"))
    assert b["synthetic"].pop("grammar")["file"] == str(exported)
    assert a == b                        # same fingerprint, splits, checksums of every file
    assert (tmp_path / "mine" / "grammar.json").read_text() == \
        (tmp_path / "default" / "grammar.json").read_text()
    drawn = read_grammar_file(exported).true_grammar().sample(50, 9, 15)
    assert drawn == sample_treebank(50, seed=9, max_length=15)


def test_the_example_is_valid_and_not_the_embedded_grammar():
    source = read_grammar_file(EXAMPLE)
    assert source.warnings == [] and source.grammar == example()
    assert set(source.grammar["nonterminals"]) != set(true_grammar_json()["nonterminals"])
    assert len(source.grammar["nonterminals"]) <= 20 and len(source.grammar["preterminals"]) <= 30
    assert 0 < source.soundness.spectral_radius < 1 and 3 < source.soundness.expected_length < 12


def test_warnings_are_printed_and_the_corpus_drawn(runner, cli_app, tmp_path):
    d = example()
    d["author"] = "me"
    d["rules"].append(["VP", "NNP", "NN", 0])
    path = tmp_path / "g" / "warned.json"
    path.parent.mkdir()
    path.write_text(json.dumps(d), encoding="utf-8")
    result = prepare(runner, cli_app, path, tmp_path / "out", "--num-sentences", 30)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    assert "unknown field 'author' ignored" in text and "1 entry has probability 0" in text
    stored = json.loads((tmp_path / "out" / "grammar.json").read_text())
    assert "author" not in stored and stored["name"] == "gfnem-head-final-v1"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["synthetic"]["grammar"]["sha256"].startswith("sha256:")
    assert manifest["synthetic"]["seed"] == 0 and manifest["splits"]["train"]["sentences"] == 24


# --- every defect: one line, exit 2, nothing written ----------------------------------------

def _set(path, value):
    def edit(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _tiny(rules, roots=None):
    """A two-tag grammar with the given S rules: for recursion that never ends."""
    return lambda d: (d.clear(), d.update({
        "nonterminals": ["S"], "preterminals": ["DT", "NN"], "roots": roots or {"S": 1.0},
        "rules": rules, "emissions": [["DT", "the", 1.0], ["NN", "dog", 1.0]]}))


def _add(field, item):
    return lambda d: d[field].append(item)


CASES = {
    "missing field": (lambda d: d.pop("rules"), ["missing field 'rules'"]),
    "only unknown fields": (lambda d: (d.clear(), d.update({"L": 1})),
                            ["missing field 'nonterminals'"]),
    "mistyped list": (_set(["nonterminals"], "S VP"), ["nonterminals: must be a non-empty list"]),
    "mistyped name": (_set(["name"], 3), ["name: must be a string"]),
    "bad version": (_set(["version"], 2), ["version: unsupported version 2"]),
    "short rule": (_set(["rules", 0], ["S", "NP", 0.45]), ["rules[0]: expected [lhs, left"]),
    "string probability": (_set(["rules", 0, 3], "0.45"), ["rules[0][3]: rule S -> NP VP",
                                                          "must be a number, found a string"]),
    "boolean probability": (_set(["roots", "S"], True), ["roots.S", "found a boolean"]),
    "unknown right-hand side": (_set(["rules", 0, 2], "VPX"), [
        "rules[0][2]: rule S -> NP VPX: unknown symbol 'VPX' on the right-hand side"]),
    "unknown left-hand side": (_set(["rules", 0, 0], "Q"), ["unknown symbol 'Q' on the left"]),
    "rule for a preterminal": (_set(["rules", 0, 0], "DT"), ["preterminals only emit words"]),
    "unknown root": (_set(["roots", "X"], 0.0), ["roots.X: root 'X' is not a declared"]),
    "preterminal root": (_set(["roots", "NN"], 0.0), ["one-word sentences"]),
    "unknown emission tag": (_add("emissions", ["XX", "w", 0.1]), ["unknown preterminal 'XX'"]),
    "nonterminal emits": (_add("emissions", ["NP", "w", 0.1]), ["'NP' is a nonterminal"]),
    "not a PTB tag": (_set(["preterminals", 0], "DET"), ["preterminals[0]: preterminal 'DET'",
                                                         "36 PTB word tags"]),
    "declared twice": (_add("nonterminals", "NP"), ["'NP' is declared twice (also "
                                                    "nonterminals[2])"]),
    "both kinds": (_add("preterminals", "S"), ["'S' is declared both as a nonterminal"]),
    "word with a space": (_set(["emissions", 0, 1], "the end"), ["word 'the end' must be"]),
    "word <unk>": (_set(["emissions", 0, 1], "<unk>"), ["not <unk>"]),
    "duplicate rule": (_add("rules", ["S", "NP", "VP", 0.0]), ["is listed twice (also "
                                                               "rules[0])"]),
    "duplicate emission": (_add("emissions", ["DT", "the", 0.0]), ["listed twice"]),
    "rules do not sum to one": (_set(["rules", 0, 3], 0.40), [
        "rules[0]: the rules of 'S' sum to 0.95, not 1 within 1e-06"]),
    "emissions do not sum to one": (_set(["emissions", 0, 2], 0.5), [
        "the emissions of 'DT' sum to 0.95"]),
    "roots do not sum to one": (_set(["roots", "NP"], 0.2), ["root probabilities sum to 1.1"]),
    "barely off": (_set(["rules", 0, 3], 0.45 + 1e-5), ["sum to 1.00001, not 1"]),
    "negative probability": (_set(["rules", 0, 3], -0.1), ["negative probability -0.1"]),
    "above one": (_set(["emissions", 0, 2], 1.5), ["probability 1.5 is above 1"]),
    "infinite": (_set(["emissions", 0, 2], math.inf), ["probability inf is not finite"]),
    "huge integer": (_set(["emissions", 0, 2], 10 ** 400), ["is above 1"]),
    "no rule": (_add("nonterminals", "X"), ["nonterminal 'X' has no rule"]),
    "no emission": (_add("preterminals", "FW"), ["preterminal 'FW' emits no word"]),
    "unreachable nonterminal": (lambda d: (d["nonterminals"].append("X"),
                                           d["rules"].append(["X", "DT", "NN", 1.0])),
                                ["nonterminals[8]: unreachable: 'X' cannot be reached"]),
    "unreachable preterminal": (lambda d: (d["preterminals"].append("FW"),
                                           d["emissions"].append(["FW", "ja", 1.0])),
                                ["unreachable: 'FW'"]),
    "non-terminating": (lambda d: (d["nonterminals"].append("X"),
                                   d["rules"].append(["X", "X", "NN", 1.0]),
                                   _set(["rules", 18, 2], "X")(d)),
                        ["non-terminating: 'X' has no finite derivation"]),
    "supercritical": (_tiny([["S", "S", "S", 0.6], ["S", "DT", "NN", 0.4]]),
                      ["not consistent: the expected-children matrix has spectral radius 1.2"]),
    "critical": (_tiny([["S", "S", "S", 0.5], ["S", "DT", "NN", 0.5]]),
                 ["spectral radius 1 >= 1"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_defect_is_one_line_and_writes_nothing(runner, cli_app, tmp_path, case):
    edit, fragments = CASES[case]
    d = example()
    edit(d)
    path = tmp_path / "g" / "bad.json"
    path.parent.mkdir()
    path.write_text(json.dumps(d, indent=1), encoding="utf-8")
    assert_refused(prepare(runner, cli_app, path, tmp_path / "out"), path, tmp_path / "out",
                   *fragments)


TEXT_CASES = {
    "malformed JSON": (lambda t: t.replace('"roots": {"S": 0.9, "NP": 0.1},', '"roots": {'),
                       ["not valid JSON", "at column"]),
    "a list": (lambda t: "[1, 2]", ["(top level): expected a JSON object"]),
    "empty": (lambda t: "", [":1: not valid JSON"]),
    "duplicate key": (lambda t: t.replace('"NP": 0.1}', '"S": 0.1}'),
                      ['roots.S: key given twice']),
    "NaN": (lambda t: t.replace('["DT", "the", 0.55]', '["DT", "the", NaN]'), ["not finite"]),
    "5,000 digits": (lambda t: t.replace('["DT", "the", 0.55]', '["DT", "the", ' + "1" * 5000
                                         + "]"), ["not valid JSON: Exceeds the limit"]),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_each_syntax_defect_is_one_line(runner, cli_app, tmp_path, case):
    edit, fragments = TEXT_CASES[case]
    path = tmp_path / "g" / "bad.json"
    path.parent.mkdir()
    path.write_text(edit(EXAMPLE.read_text(encoding="utf-8")), encoding="utf-8")
    assert_refused(prepare(runner, cli_app, path, tmp_path / "out"), path, tmp_path / "out",
                   *fragments)


def test_errors_point_at_the_line_and_other_files_are_refused(runner, cli_app, tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8")
    line = next(i + 1 for i, x in enumerate(text.splitlines()) if '"S", "NP", "VP"' in x)
    path = tmp_path / "g" / "typo.json"
    path.parent.mkdir()
    path.write_text(text.replace('["S", "NP", "VP", 0.45]', '["S", "NP", "VPX", 0.45]'))
    assert_refused(prepare(runner, cli_app, path, tmp_path / "out"), path, tmp_path / "out",
                   f"{path}:{line}: rules[0][2]", "(declare it in nonterminals")
    path.write_bytes(b'{"name": "\xff"}')
    assert_refused(prepare(runner, cli_app, path, tmp_path / "out"), path, tmp_path / "out",
                   "not UTF-8")
    path.unlink()
    result = prepare(runner, cli_app, path, tmp_path / "out")
    assert result.exit_code == 2 and "no such file" in result.stderr
    result = prepare(runner, cli_app, tmp_path, tmp_path / "out")
    assert result.exit_code == 2 and "is a directory" in result.stderr
    assert not (tmp_path / "out").exists()


# --- properties: perturbed grammars are accepted or refused in one line ---------------------

PROBS = (st.floats(-2, 2) | st.sampled_from([0, 1, 10 ** 400, -10 ** 400, math.nan, math.inf])
         | st.text(max_size=3)
         | st.none() | st.booleans())
NAMES = st.sampled_from(["S", "VP", "NP", "PP", "DT", "NN", "IN", "X", "", "a b", 7])


@st.composite
def perturbed(draw):
    d = example()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["prob", "symbol", "drop", "field", "dup", "scale", "swap"]))
        field = draw(st.sampled_from(["rules", "emissions"]))
        i = draw(st.integers(0, len(d[field]) - 1)) if isinstance(d.get(field), list) and \
            d[field] else None
        if i is None or not isinstance(d[field][i], list):
            op = "field"
        if op == "prob":
            d[field][i][-1] = draw(PROBS)
        elif op == "symbol":
            d[field][i][draw(st.integers(0, len(d[field][i]) - 2))] = draw(NAMES)
        elif op == "drop":
            del d[field][i]
        elif op == "swap" and len(d[field][i]) == 4:
            d[field][i][1], d[field][i][2] = d[field][i][2], d[field][i][1]
        elif op == "dup":
            d[field].append(copy.deepcopy(d[field][i]))
        elif op == "scale":
            lhs = d[field][i][0]
            for row in d[field]:
                if isinstance(row, list) and row and row[0] == lhs and \
                        isinstance(row[-1], float):
                    row[-1] *= draw(st.sampled_from([0.5, 1.0 + 1e-9, 2.0, 4.0]))
        else:
            key = draw(st.sampled_from(sorted(d) + ["extra"]))
            if draw(st.booleans()):
                d.pop(key, None)
            else:
                d[key] = draw(st.sampled_from([[], {}, "S", 1, None, ["S"], {"S": 1.0}]))
    return d


@settings(max_examples=250, **SETTINGS)
@given(d=perturbed())
def test_perturbed_grammars_are_accepted_or_refused_in_one_line(d):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "g.json"
        path.write_text(json.dumps(d), encoding="utf-8")
        try:
            source = read_grammar_file(path)
        except GfnemError as exc:
            assert exc.path == str(path) and "\n" not in str(exc)
            return
        grammar = source.true_grammar()        # the stored form loads as a TrueGrammar
        assert isinstance(grammar, TrueGrammar) and source.soundness.spectral_radius < 1
        path.write_text(json.dumps(source.grammar), encoding="utf-8")
        assert read_grammar_file(path).grammar == source.grammar
        try:
            assert len(grammar.sample(3, 0, 60)) == 3
        except GfnemError as exc:              # e.g. sentences of <= 60 words too rare
            assert "\n" not in str(exc)


@settings(max_examples=25, **SETTINGS)
@given(cut=st.integers(0, 4000), width=st.integers(0, 8),
       insert=st.sampled_from(["", "{", "]", ",", '"', "0", " ", "-", "1e9"]))
def test_corrupted_text_never_gives_a_traceback(runner, cli_app, cut, width, insert):
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text[:cut] + insert + text[cut + width:]
    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / "g" / "g.json", Path(folder) / "out"
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
        result = prepare(runner, cli_app, path, out, "--num-sentences", 10)
        if result.exit_code == 0:
            assert (out / "grammar.json").is_file()
        else:
            assert_refused(result, path, out)


# --- the true grammar's reference in evaluate, on a corpus of the example ------------------

def inside_log_prob(d: dict, tokens: list[str], vocab: set[str]) -> float:
    """log p(x) by a plain-Python inside pass straight from the JSON (words outside the
    vocabulary are <unk>, emitted with their summed probability)."""
    emit: dict[tuple, float] = {}
    for tag, word, p in d["emissions"]:
        key = (tag, word if word in vocab else "<unk>")
        emit[key] = emit.get(key, 0.0) + p
    n = len(tokens)
    words = [w if w in vocab else "<unk>" for w in tokens]
    chart = {(i, i + 1): {t: emit.get((t, w), 0.0) for t in d["preterminals"]}
             for i, w in enumerate(words)}
    for width in range(2, n + 1):
        for i in range(n - width + 1):
            cell = {}
            for a, b, c, p in d["rules"]:
                total = sum(chart[i, k].get(b, 0.0) * chart[k, i + width].get(c, 0.0)
                            for k in range(i + 1, i + width))
                cell[a] = cell.get(a, 0.0) + p * total
            chart[i, i + width] = cell
    return math.log(sum(p * chart[0, n].get(a, 0.0) for a, p in d["roots"].items()))


def test_evaluate_reports_the_example_grammars_nll(runner, cli_app, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    result = prepare(runner, cli_app, EXAMPLE, data, "--num-sentences", 80, "--max-length", 8,
                     "--seed", 1)
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli_app, [
        "train", str(REPO / "recipes" / "synthetic-npcfg.yaml"), "--out", str(run), "-q",
        "--device", "cpu", "--set", f"data.path={data}", "--set", "train.steps=2",
        "--set", "train.batch_size=4", "--set", "train.eval_every=2",
        "--set", "train.checkpoint_every=2", "--set", "model.symbol_dim=16"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "true_grammar.json").read_text()) == example()
    report = tmp_path / "test.json"
    result = runner.invoke(cli_app, ["evaluate", str(run), "--data", str(data), "--split",
                                     "test", "--json", str(report)])
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    from grammars.data.corpus import load_corpus

    corpus = load_corpus(data)
    vocab = set(corpus.vocab.tokens)
    sentences = corpus.column("test", "tokens")
    total = -sum(inside_log_prob(example(), s, vocab) for s in sentences)
    tokens = sum(len(s) + 1 for s in sentences)
    assert figures["true_nll_per_token"] == pytest.approx(total / tokens, rel=1e-9)
    assert f"true grammar: NLL/token {total / tokens:.4f}" in result.stdout
    assert figures["true_nll_per_token_given_length_cap"] < figures["true_nll_per_token"]


def test_help_explains_the_option_and_points_to_the_format(runner, cli_app):
    result = runner.invoke(cli_app, ["prepare", "synthetic", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "--grammar" in text and "examples/grammars/README.md" in text
    assert (REPO / "examples" / "grammars" / "README.md").is_file()
