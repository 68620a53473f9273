"""`gfnem prepare` and `gfnem evaluate` end to end through the Typer app."""
from __future__ import annotations

import json
import sys
import types

import pytest


def invoke(runner, app, *args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments):
    """Exit 2, one `error:` line on stderr naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in " ".join(result.stderr.split()), result.stderr


def read_json(path):
    return json.loads(path.read_text())


def test_prepare_ptb_then_evaluate_baselines_and_pred(runner, cli_app, tiny_mrg, tmp_path):
    out = tmp_path / "corpus"
    result = invoke(runner, cli_app, "prepare", "ptb", tiny_mrg, "--out", out, "--split", "none")
    assert result.exit_code == 0, result.output
    assert "dropped with no words left: 1" in " ".join(result.stdout.split())
    assert (out / "vocab.json").is_file() and read_json(out / "manifest.json")["kind"] == "ptb"
    scores = {}
    for baseline in ("right", "left", "oracle", "random"):
        report = tmp_path / f"{baseline}.json"
        result = invoke(runner, cli_app, "evaluate", "--data", out, "--baseline", baseline,
                        "--json", report)
        assert result.exit_code == 0, result.output
        data = read_json(report)
        assert data["num_sentences"] == 4 and data["num_skipped"] == 1
        assert data["decoding"] == f"baseline:{baseline}"
        assert data["length_filter"] == {"min_length": 2, "max_length": None}
        assert [b["max_length"] for b in data["buckets"]] == [10, 20, 40, None]
        scores[baseline] = data["sentence_f1"]
    # scored gold sets: {(0,2)}, {}, {} (2 words each), {(0,2),(2,5),(3,5)}; "Hello" skipped
    assert scores["oracle"] == 100.0
    assert scores["left"] == pytest.approx(100 * (1 + 1 + 1 + 1 / 3) / 4, abs=1e-3)
    assert scores["right"] == pytest.approx(100 * (0 + 1 + 1 + 2 / 3) / 4, abs=1e-3)
    result = invoke(runner, cli_app, "evaluate", "--data", out, "--baseline", "right",
                    "--max-length", 3, "--json", report)
    assert result.exit_code == 0, result.output
    data = read_json(report)
    assert (data["num_sentences"], data["sentence_f1"]) == (3, pytest.approx(200 / 3, abs=1e-3))
    assert data["length_filter"]["max_length"] == 3
    # --max-images is the image runs' option: refused for sentences, nothing written
    report.unlink()
    result = invoke(runner, cli_app, "evaluate", "--data", out, "--baseline", "right",
                    "--max-images", 2, "--json", report)
    assert result.exit_code == 2 and "--max-length" in result.output and not report.exists()
    # --pred with the split's tokens (normalized forms) is accepted and scored like a baseline
    pred = tmp_path / "pred.txt"
    pred.write_text("(A (A (T the) (T dog)) (T barked))\n(A (T he) (T left))\n(T hello)\n"
                    "(A (T the) (T cats))\n"
                    "(A (A (T N,N) (T dollars)) (A (T fell) (A (T in) (T N))))\n")
    report = tmp_path / "pred.json"
    result = invoke(runner, cli_app, "evaluate", "--data", out, "--pred", pred, "--json", report)
    assert result.exit_code == 0, result.output
    data = read_json(report)
    assert data["sentence_f1"] == 100.0 and data["decoding"] == "pred-file"
    # mismatched --pred files
    pred.write_text("(A (T The) (T dog) (T barked))\n")
    assert_user_error(invoke(runner, cli_app, "evaluate", "--data", out, "--pred", pred),
                      f"{pred}:1: 1 trees for the 5 sentences of split 'test'")
    pred.write_text("(A (T The) (T dog) (T barked))\n(A (T He) (T went))\n(T Hello)\n"
                    "(T the)\n(T x)\n")
    assert_user_error(invoke(runner, cli_app, "evaluate", "--data", out, "--pred", pred),
                      f"{pred}:2: word 2 is `went` but sentence 2", f"({tiny_mrg}:3)")


def test_prepare_wsj_sections_and_vocab_from(runner, cli_app, tmp_path):
    root = tmp_path / "wsj"
    for section, word in (("02", "cat"), ("21", "dog"), ("22", "emu"), ("23", "cat"),
                          ("24", "gnu")):
        (root / section).mkdir(parents=True)
        (root / section / f"wsj_{section}00.mrg").write_text(
            f"( (S (NP (DT the) (NN {word})) (VP (VBD sat))) )\n")
    out = tmp_path / "corpus"
    result = invoke(runner, cli_app, "prepare", "ptb", root, "--out", out)
    assert result.exit_code == 0, result.output
    manifest = read_json(out / "manifest.json")
    assert manifest["split"]["mode"] == "wsj"
    assert {k: v["sentences"] for k, v in manifest["splits"].items()} == {
        "train": 2, "valid": 1, "test": 1}
    assert manifest["inputs"]["files_outside_splits"] == 1
    text = tmp_path / "raw.txt"
    text.write_text("The emu sat\nA cat\n")
    new = tmp_path / "text"
    result = invoke(runner, cli_app, "prepare", "text", text, "--out", new, "--vocab-from", out)
    assert result.exit_code == 0, result.output
    new_manifest = read_json(new / "manifest.json")
    assert new_manifest["kind"] == "text" and new_manifest["vocab_from"] == str(out)
    assert read_json(new / "vocab.json") == read_json(out / "vocab.json")
    assert_user_error(invoke(runner, cli_app, "evaluate", "--data", new, "--baseline", "right"),
                      "raw text and has no gold trees")


def test_prepare_ratio_split_by_file(runner, cli_app, tmp_path):
    for k in range(10):
        (tmp_path / f"f{k}.mrg").write_text("(S (NN a) (NN b))\n(S (NN c) (NN d))\n")
    out = tmp_path / "out"
    result = invoke(runner, cli_app, "prepare", "ptb", *sorted(tmp_path.glob("*.mrg")),
                    "--out", out, "--split", "ratio", "--ratios", "0.6,0.2,0.2")
    assert result.exit_code == 0, result.output
    manifest = read_json(out / "manifest.json")
    assert manifest["split"]["files"]["valid"]["first"].endswith("f6.mrg")
    assert [manifest["splits"][s]["sentences"] for s in ("train", "valid", "test")] == [12, 4, 4]
    assert_user_error(invoke(runner, cli_app, "prepare", "ptb", tmp_path, "--out", out,
                             "--ratios", "0.5,0.1"), "--ratios must be three")


def test_prepare_synthetic_with_a_stand_in_sampler(runner, cli_app, tmp_path, monkeypatch):
    calls = {}

    def sample_treebank(num_sentences, seed, max_length):
        calls.update(num_sentences=num_sentences, seed=seed, max_length=max_length)
        return [f"(S (NP (DT the) (NN w{k % 3})) (VP (VBZ runs)))" for k in range(num_sentences)]

    fake = types.ModuleType("grammars.data.synthetic")
    fake.sample_treebank = sample_treebank
    fake.true_grammar_json = lambda: {"rules": ["S -> NP VP"]}
    monkeypatch.setitem(sys.modules, "grammars.data.synthetic", fake)
    import grammars.data
    monkeypatch.setattr(grammars.data, "synthetic", fake, raising=False)
    out = tmp_path / "synth"
    result = invoke(runner, cli_app, "prepare", "synthetic", "--out", out, "--num-sentences", 20,
                    "--seed", 5, "--max-length", 7)
    assert result.exit_code == 0, result.output
    assert calls == {"num_sentences": 20, "seed": 5, "max_length": 7}
    assert read_json(out / "grammar.json") == {"rules": ["S -> NP VP"]}
    manifest = read_json(out / "manifest.json")
    assert manifest["kind"] == "synthetic" and manifest["split"]["by"] == "sentence"
    assert [manifest["splits"][s]["sentences"] for s in ("train", "valid", "test")] == [16, 2, 2]
    assert "w1" in read_json(out / "vocab.json")["tokens"]     # digits kept: words are symbols


def test_bad_input_errors(runner, cli_app, tmp_path):
    bad = tmp_path / "bad.mrg"
    bad.write_text("( (S (NN a) (NN b)) )\n# comment\n( (S (NN c)\n  (NN d) )\n( (S (NN e)) )\n")
    out = tmp_path / "out"
    assert_user_error(invoke(runner, cli_app, "prepare", "ptb", bad, "--out", out),
                      f"{bad}:3: unbalanced brackets")
    assert not out.exists()
    result = invoke(runner, cli_app, "prepare", "ptb", bad, "--out", out, "--skip-bad",
                    "--split", "none")
    assert result.exit_code == 0, result.output
    assert "skipped malformed: 1" in " ".join(result.stdout.split())
    assert f"{bad}:3" in result.stderr
    assert read_json(out / "manifest.json")["splits"]["test"]["sentences"] == 2
    empty = tmp_path / "empty.mrg"
    empty.write_text("# nothing here\n")
    assert_user_error(invoke(runner, cli_app, "prepare", "ptb", empty, "--out", tmp_path / "e"),
                      "empty corpus")
    assert_user_error(invoke(runner, cli_app, "prepare", "ptb", bad, "--out", empty),
                      "refusing to overwrite")
    assert_user_error(invoke(runner, cli_app, "prepare", "ptb", tmp_path / "nope.mrg",
                             "--out", tmp_path / "e"), "nope.mrg: no such file")
    assert_user_error(invoke(runner, cli_app, "evaluate", "--data", tmp_path, "--baseline",
                             "right"), "not a prepared corpus")
    assert_user_error(invoke(runner, cli_app, "evaluate", "--data", out), "exactly one of")
    assert_user_error(invoke(runner, cli_app, "evaluate", "--data", out, "--baseline", "up"),
                      "unknown baseline 'up'")
    assert_user_error(invoke(runner, cli_app, "evaluate", "--data", out, "--baseline", "left",
                             "--split", "valid"), "no split 'valid'")


def test_latin1_input_warns_and_is_read(runner, cli_app, tmp_path):
    path = tmp_path / "latin.mrg"
    path.write_bytes(b"( (S (NN caf\xe9) (NN noir)) )\n")
    out = tmp_path / "out"
    result = invoke(runner, cli_app, "prepare", "ptb", path, "--out", out, "--split", "none")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "latin-1" in result.stderr
    assert "café" in read_json(out / "vocab.json")["tokens"]


@pytest.mark.parametrize("command,options", [
    (["prepare", "ptb"], ["--out", "--split", "--ratios", "--lowercase", "--replace-digits",
                          "--vocab-size", "--max-train-len", "--vocab-from", "--skip-bad"]),
    (["prepare", "text"], ["--out", "--vocab-from", "--lowercase", "--vocab-size"]),
    (["prepare", "synthetic"], ["--out", "--num-sentences", "--max-length", "--seed",
                                "--ratios"]),
    (["evaluate"], ["--data", "--split", "--baseline", "--pred", "--json", "--seed",
                    "--max-length", "--max-images"]),
])
def test_help_explains_every_option(runner, cli_app, command, options):
    result = runner.invoke(cli_app, command + ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in options:
        assert option in result.stdout
    assert "GfnemError" not in result.stdout


def test_ptb_sample_reference_figures(runner, cli_app, ptb_sample_none, tmp_path):
    """The figures the data README gives for the PTB sample under DESIGN §6."""
    manifest = read_json(ptb_sample_none / "manifest.json")
    assert manifest["splits"]["test"]["sentences"] == 3914
    assert round(manifest["splits"]["test"]["mean_length"], 1) == 21.0
    expected = {"right": ((39.6, 39.8), (35.6, 35.8)), "left": ((8.2, 8.4), (6.3, 6.5)),
                "oracle": ((84.2, 84.6), (0, 100))}
    for baseline, ((s_lo, s_hi), (c_lo, c_hi)) in expected.items():
        report = tmp_path / f"{baseline}.json"
        result = invoke(runner, cli_app, "evaluate", "--data", ptb_sample_none,
                        "--baseline", baseline, "--json", report)
        assert result.exit_code == 0, result.output
        data = read_json(report)
        assert data["num_sentences"] == 3914 - 13 and data["num_skipped"] == 13
        assert s_lo <= data["sentence_f1"] <= s_hi, (baseline, data["sentence_f1"])
        assert c_lo <= data["corpus_f1"] <= c_hi, (baseline, data["corpus_f1"])
