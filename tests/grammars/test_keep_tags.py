"""`prepare ptb --keep-tags / --punct-tags` (issue 13, item 2): a treebank tagged otherwise
than the English PTB (here Chinese-Treebank tags, NN VV AD PU ...) is kept whole by the
right filter, warned about by the wrong one, and every bad value is one line with nothing
written. A run trained on such a corpus parses new trees of it with its own filter.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bad_input_readers import REPO, TINY_RUN, ok, refused

from grammars.data.tag_filter import PUNCT_TAGS, TagFilter, resolve_tag_filter

CTB_TREES = [
    "( (IP (NP-SBJ (NR 张三)) (VP (ADVP (AD 已经)) (VP (VV 离开) (AS 了))) (PU 。)) )",
    "( (IP (NP-SBJ (PN 他)) (VP (VV 说) (IP (NP-SBJ (-NONE- *pro*)) (VP (VV 喜欢) "
    "(NP-OBJ (NN 音乐))))) (PU ，) (PU 。)) )",
    "( (IP (NP (DP (DT 这) (CLP (M 个))) (NP (NN 公司))) (VP (PP (P 在) (NP (NR 北京))) "
    "(VP (VV 成立))) (PU 。)) )",
]
WORDS = [["张三", "已经", "离开", "了"], ["他", "说", "喜欢", "音乐"],
         ["这", "个", "公司", "在", "北京", "成立"]]
CTB_WORD_TAGS = "NR,AD,VV,AS,PN,NN,DT,M,P"


def invoke(runner, app, *args):
    return runner.invoke(app, [str(a) for a in args])


def manifest(corpus: Path) -> dict:
    return json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))


def words_of(corpus: Path) -> list[list[str]]:
    from grammars.data.corpus import load_corpus

    return load_corpus(corpus).column("test", "words")


@pytest.fixture
def ctb(tmp_path) -> Path:
    path = tmp_path / "inputs" / "chtb_0001.mrg"
    path.parent.mkdir()
    path.write_text("\n".join(CTB_TREES) + "\n", encoding="utf-8")
    return path


def test_the_english_filter_on_chinese_tags_warns_naming_the_tags(runner, cli_app, tmp_path,
                                                                  ctb):
    out = tmp_path / "ptb-filter"
    result = ok(runner, cli_app, "prepare", "ptb", ctb, "--out", out, "--split", "none")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    text = warnings[0]
    # 19 leaves, 3 kept (NN, DT, NN): VV x4 and PU x4 are the tags dropped most
    assert "--keep-tags ptb" in text and "dropped 16 of the 19 leaves (84.2%)" in text
    assert "dropped most: VV 4, PU 4" in text and "--keep-tags all-but-punct" in text
    assert words_of(out) == [["音乐"], ["这", "公司"]]    # the first tree kept no word at all
    recorded = manifest(out)
    assert recorded["tag_filter"]["keep_tags"] == "ptb"
    assert recorded["leaves"] == {"kept": 3, "dropped": 16, "dropped_tags": {
        "VV": 4, "PU": 4, "NR": 2, "AD": 1, "AS": 1, "PN": 1, "-NONE-": 1, "M": 1, "P": 1}}


def test_all_but_punct_a_list_and_a_file_keep_every_word(runner, cli_app, tmp_path, ctb):
    preset = tmp_path / "preset"
    result = ok(runner, cli_app, "prepare", "ptb", ctb, "--out", preset, "--split", "none",
                "--keep-tags", "all-but-punct")
    assert "warning:" not in result.stderr
    assert words_of(preset) == WORDS                    # PU and the -NONE- trace dropped
    assert "kept 14 of 19 leaves" in " ".join(result.stdout.split())
    assert manifest(preset)["tag_filter"] == {"keep_tags": "all-but-punct", "tags": None,
                                              "drop_tags": sorted(PUNCT_TAGS | {"-NONE-"})}
    listed = tmp_path / "listed"
    ok(runner, cli_app, "prepare", "ptb", ctb, "--out", listed, "--split", "none",
       "--keep-tags", CTB_WORD_TAGS)
    tags = tmp_path / "ctb-tags.txt"
    tags.write_text("# the word tags of the Chinese Treebank used here\nNR AD VV\nAS, PN\n"
                    "NN DT M P\n", encoding="utf-8")
    from_file = tmp_path / "from-file"
    ok(runner, cli_app, "prepare", "ptb", ctb, "--out", from_file, "--split", "none",
       "--keep-tags", tags)
    prints = {manifest(c)["fingerprint"] for c in (preset, listed, from_file)}
    assert len(prints) == 1
    assert manifest(listed)["tag_filter"]["tags"] == sorted(CTB_WORD_TAGS.split(","))
    # --punct-tags replaces the punctuation of all-but-punct: the aspect marker goes too
    fewer = tmp_path / "fewer"
    ok(runner, cli_app, "prepare", "ptb", ctb, "--out", fewer, "--split", "none",
       "--keep-tags", "all-but-punct", "--punct-tags", "PU,AS")
    assert words_of(fewer)[0] == ["张三", "已经", "离开"]
    assert TagFilter.from_manifest(manifest(fewer)["tag_filter"]) == resolve_tag_filter(
        "all-but-punct", "PU,AS")


def test_all_but_punct_on_the_ptb_is_the_ptb_filter(runner, cli_app, tmp_path, tiny_mrg):
    prints = []
    for keep in ("ptb", "all-but-punct"):
        out = tmp_path / keep
        result = ok(runner, cli_app, "prepare", "ptb", tiny_mrg, "--out", out, "--split",
                    "none", "--keep-tags", keep)
        assert "warning:" not in result.stderr
        prints.append(manifest(out)["fingerprint"])
    assert prints[0] == prints[1]


@pytest.mark.parametrize("args,says", [
    (["--keep-tags", "ptbb"], ("--keep-tags 'ptbb': no such file, and not a preset",
                               "all-but-punct")),
    (["--keep-tags", "missing-tags.txt"], ("no such file",)),
    (["--keep-tags", ","], ("--keep-tags names no tag",)),
    (["--keep-tags", "NN,(X"], ("'(X' cannot be a tag",)),
    (["--punct-tags", "PU"], ("--punct-tags", "with --keep-tags 'ptb' it would change nothing")),
    (["--keep-tags", "NN", "--punct-tags", "PU"], ("--punct-tags",)),
    (["--keep-tags", "all-but-punct", "--punct-tags", ""], ("--punct-tags names no tag",)),
    (["--keep-tags", "EMPTY"], ("names no tag",)),
    (["--keep-tags", "DIR"], ("is a directory",)),
    (["--keep-tags", "VB,NNX"], ("empty corpus", "are none of --keep-tags NNX,VB",
                                 "--keep-tags all-but-punct")),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_bad_filters_are_one_line_and_write_nothing(runner, cli_app, tmp_path, ctb, args,
                                                    says):
    empty = tmp_path / "inputs" / "empty-tags.txt"
    empty.write_text("# no tag here\n\n", encoding="utf-8")
    mapping = {"EMPTY": str(empty), "DIR": str(ctb.parent)}
    refused(runner, cli_app, tmp_path, "prepare", "ptb", ctb, "--out", tmp_path / "out",
            "--split", "none", *[mapping.get(a, a) for a in args], says=says)
    assert not (tmp_path / "out").exists()


def test_help_explains_the_filter_options(runner, cli_app):
    result = runner.invoke(cli_app, ["prepare", "ptb", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for needle in ("--keep-tags", "--punct-tags", "all-but-punct", "36 PTB word tags",
                   "Chinese Treebank", "more than half"):
        assert needle in text, needle


def test_a_run_parses_new_trees_with_its_own_filter(runner, cli_app, tmp_path):
    treebank = tmp_path / "chtb.mrg"
    treebank.write_text("\n".join(CTB_TREES * 4) + "\n", encoding="utf-8")
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    ok(runner, cli_app, "prepare", "ptb", treebank, "--out", corpus, "--keep-tags",
       "all-but-punct")
    ok(runner, cli_app, "train", REPO / "recipes" / "synthetic-npcfg.yaml", "--out", run,
       "--quiet", "--device", "cpu", "--set", f"data.path={corpus}", *TINY_RUN)
    new = tmp_path / "new.txt"                  # any name: told a treebank by its content
    new.write_text(CTB_TREES[1] + "\n( (IP (PU 。)) )\n" + CTB_TREES[2] + "\n",
                   encoding="utf-8")
    out = tmp_path / "parsed.txt"
    result = ok(runner, cli_app, "parse", run, "--input", new, "--out", out, "--device", "cpu")
    assert "--keep-tags all-but-punct" in " ".join(result.stdout.split())
    assert "warning:" not in result.stderr           # every word known, no filter surprise
    from grammars.data.treebank import tree_words_spans

    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[1] == "()"
    assert [tree_words_spans(lines[k])[0] for k in (0, 2)] == [WORDS[1], WORDS[2]]
    # a folder of such files is refused with the command that prepares it as the run's was
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "chtb_0002.mrg").write_text(CTB_TREES[0] + "\n", encoding="utf-8")
    refused(runner, cli_app, tmp_path, "parse", run, "--input", folder, "--out", out,
            says=(f"gfnem prepare ptb {folder} --out {folder}-prepared --split none "
                  f"--vocab-from {run} --keep-tags all-but-punct",))


@settings(max_examples=400, derandomize=True, deadline=None, database=None)
@given(keep=st.text(max_size=20), punct=st.none() | st.text(max_size=12))
def test_any_option_value_gives_a_filter_or_one_line_error(keep, punct):
    from gfnem_cli.engine.errors import GfnemError

    try:
        tag_filter = resolve_tag_filter(keep, punct)
    except GfnemError as exc:
        assert "\n" not in exc.message
        return
    assert TagFilter.from_manifest(tag_filter.to_manifest()) == tag_filter
    assert resolve_tag_filter(*_args(tag_filter.cli_args())) == tag_filter


def _args(cli: list[str]) -> tuple[str, str | None]:
    options = dict(zip(cli[::2], cli[1::2]))
    return options.get("--keep-tags", "ptb"), options.get("--punct-tags")
