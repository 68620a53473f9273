"""Normalization, vocabulary, splits, and corpora saved and read back."""
from __future__ import annotations

import json

import pytest

from gfnem_cli.engine.errors import GfnemError
from grammars.data.corpus import (PrepareOptions, check_output_dir, choose_split, load_corpus,
                             parse_ratios, prepare_ptb, prepare_text, prepare_trees,
                             ratio_bounds, save_corpus, split_files)
from grammars.data.vocabulary import UNK, Vocabulary, normalize_word


def test_normalize_word():
    assert normalize_word("Pierre") == "pierre"
    assert normalize_word("1,000") == "N,N"
    assert normalize_word("1980s") == "Ns"
    assert normalize_word("A4", lowercase=False) == "AN"
    assert normalize_word("A4", replace_digits=False) == "a4"


def test_vocabulary_top_k_ties_and_unk(tmp_path):
    vocab = Vocabulary.build([["b", "a", "c", "a"], ["b", "d"]], size=2)
    assert vocab.tokens == [UNK, "a", "b"]               # ties broken alphabetically
    assert vocab.encode(["a", "zzz", "b"]) == [1, 0, 2]
    assert len(Vocabulary.build([["x", "y"]], size=0)) == 3
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path).tokens == vocab.tokens
    with pytest.raises(GfnemError, match="no vocabulary"):
        Vocabulary.load(tmp_path / "nowhere")


def test_ratio_bounds_round_cumulatively():
    assert ratio_bounds(199, (0.8, 0.1, 0.1)) == [0, 159, 179, 199]   # files 0001-0159 …
    assert ratio_bounds(3, (0.8, 0.1, 0.1)) == [0, 2, 3, 3]
    assert ratio_bounds(0, (0.8, 0.1, 0.1)) == [0, 0, 0, 0]


def test_auto_split_needs_the_standard_sections(tmp_path):
    wsj = [tmp_path / d / f"wsj_{d}01.mrg" for d in ("02", "21", "22", "23", "24")]
    assert choose_split("auto", wsj)[0] == "wsj"
    sample = [tmp_path / "wsj_0001.mrg", tmp_path / "wsj_0101.mrg"]
    mode, note = choose_split("auto", sample)
    assert mode == "ratio" and "00, 01" in note
    assert choose_split("auto", [tmp_path / "a.txt"])[0] == "ratio"
    splits, outside = split_files("wsj", wsj, (0.8, 0.1, 0.1))
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "valid": 1, "test": 1}
    assert [p.name for p in outside] == ["wsj_2401.mrg"]
    with pytest.raises(GfnemError, match="no WSJ section"):
        split_files("wsj", [tmp_path / "a.txt"], (0.8, 0.1, 0.1))


def test_prepare_ptb_none(tiny_mrg):
    corpus = prepare_ptb([tiny_mrg], PrepareOptions(), split="none")
    assert list(corpus.splits) == ["test"]
    test = corpus.splits["test"]
    assert [s.words for s in test][-1] == ["1,000", "Dollars", "fell", "in", "1999"]
    assert corpus.tokens["test"][-1] == ["N,N", "dollars", "fell", "in", "N"]
    assert corpus.manifest["dropped_empty"] == 1
    assert corpus.manifest["splits"]["test"]["sentences"] == 5
    assert corpus.vocab.tokens[0] == UNK


def test_train_cap_applies_to_train_only(tmp_path):
    for name, lengths in (("a.mrg", [2, 5]), ("b.mrg", [5]), ("c.mrg", [5])):
        trees = ["(S " + " ".join(f"(NN w{k})" for k in range(n)) + ")" for n in lengths]
        (tmp_path / name).write_text("\n".join(trees))
    corpus = prepare_ptb([tmp_path], PrepareOptions(max_train_len=3), split="ratio",
                         ratios=(0.34, 0.33, 0.33))
    stats = corpus.manifest["splits"]
    assert (stats["train"]["sentences"], stats["train"]["over_length"]) == (1, 1)
    assert stats["valid"]["max_length"] == 5 and stats["test"]["max_length"] == 5
    assert corpus.vocab.tokens == [UNK, "wN"]             # from the (capped) training split
    assert stats["test"]["unk_rate"] == pytest.approx(0.0)


def test_vocabulary_from_train_gives_unknowns_elsewhere(tmp_path):
    (tmp_path / "a.mrg").write_text("(S (NN cat) (NN dog))")
    (tmp_path / "b.mrg").write_text("(S (NN cat) (NN emu))")
    corpus = prepare_ptb([tmp_path], PrepareOptions(), split="ratio", ratios=(0.5, 0.5, 0))
    assert corpus.ids["valid"] == [[corpus.vocab.index["cat"], 0]]
    assert corpus.manifest["splits"]["valid"]["unk_rate"] == 0.5


def test_empty_corpus_is_an_error(tmp_path):
    path = tmp_path / "punct.mrg"
    path.write_text("( (S (. .)) )\n# only punctuation\n")
    with pytest.raises(GfnemError, match="empty corpus"):
        prepare_ptb([path], PrepareOptions(), split="none")


def test_prepare_text_and_trees(tmp_path):
    path = tmp_path / "raw.txt"
    path.write_text("# comment\nThe 2 dogs\n\n  bark loudly \n")
    corpus = prepare_text(path, PrepareOptions())
    assert [s.source for s in corpus.splits["test"]] == [f"{path}:2", f"{path}:4"]
    assert corpus.tokens["test"] == [["the", "N", "dogs"], ["bark", "loudly"]]
    assert all(s.gold_spans == [] for s in corpus.splits["test"])
    trees = [f"(S (NN a{k}) (VB b))" for k in range(10)]
    synth = prepare_trees(trees, PrepareOptions(lowercase=False, replace_digits=False,
                                                vocab_size=0), (0.8, 0.1, 0.1), "synthetic",
                          "synthetic")
    assert [len(synth.splits[n]) for n in ("train", "valid", "test")] == [8, 1, 1]
    assert synth.splits["test"][0].source == "synthetic:10"
    assert "a9" not in synth.vocab.index and "a7" in synth.vocab.index


def test_save_load_round_trip_and_fingerprint(tiny_mrg, tmp_path):
    corpus = prepare_ptb([tiny_mrg], PrepareOptions(), split="none")
    out = save_corpus(corpus, tmp_path / "corpus")
    loaded = load_corpus(out)
    assert loaded.column("test", "words") == [s.words for s in corpus.splits["test"]]
    assert loaded.column("test", "gold_spans")[0] == [[0, 3], [0, 2]]
    assert loaded.column("test", "ids") == corpus.ids["test"]
    assert loaded.vocab.tokens == corpus.vocab.tokens
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"] == corpus.manifest["fingerprint"]
    again = prepare_ptb([tiny_mrg], PrepareOptions(), split="none")
    assert again.manifest["fingerprint"] == corpus.manifest["fingerprint"]
    other = prepare_ptb([tiny_mrg], PrepareOptions(lowercase=False), split="none")
    assert other.manifest["fingerprint"] != corpus.manifest["fingerprint"]
    save_corpus(other, out)                                   # replacing a corpus is allowed
    assert load_corpus(out).manifest["fingerprint"] == other.manifest["fingerprint"]
    with pytest.raises(GfnemError, match="no split 'train'"):
        load_corpus(out).split("train")


def test_output_dir_and_load_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GfnemError, match="refusing to overwrite"):
        check_output_dir(tmp_path)
    with pytest.raises(GfnemError, match="not a prepared corpus"):
        load_corpus(tmp_path)


def test_wsj_split_needs_training_sections_and_ratios_must_be_finite(tmp_path):
    files = [tmp_path / d / f"wsj_{d}01.mrg" for d in ("00", "01", "23")]
    with pytest.raises(GfnemError, match=r"sections found: 00, 01, 23"):
        split_files("wsj", files, (0.8, 0.1, 0.1))
    for bad in ("nan,0.5,0.5", "inf,0,0", "0.5,0.5"):
        with pytest.raises(GfnemError, match="--ratios"):
            parse_ratios(bad)


def test_empty_split_round_trip_and_refusal(tmp_path):
    trees = [f"(S (NN a{k}) (VB b))" for k in range(10)]
    corpus = prepare_trees(trees, PrepareOptions(), (0.9, 0, 0.1), "synthetic", "s")
    loaded = load_corpus(save_corpus(corpus, tmp_path / "c"))
    assert loaded.sizes == {"train": 9, "valid": 0, "test": 1}
    assert len(loaded.data["valid"]) == 0 and loaded.column("test", "words") == [["a9", "b"]]
    with pytest.raises(GfnemError, match=r"split 'valid' is empty \(splits: train 9, valid 0, "
                                         r"test 1\)"):
        loaded.split("valid")
    assert loaded.column("valid", "ids") == []


def test_an_image_set_given_as_a_corpus_is_named_as_such(tmp_path):
    from vae.data.shapes import prepare_shapes

    prepare_shapes(tmp_path / "shapes", {"train": 4, "valid": 0, "test": 2})
    with pytest.raises(GfnemError, match="a prepared 'shapes' set, not a corpus"):
        load_corpus(tmp_path / "shapes")
