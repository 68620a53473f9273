"""Issue 10, readers and loader: every bad input is one line naming the file, nothing on disk
changes when a command refuses, and nothing is lost or silent (one test per defect found).

Each CLI refusal is checked the same way (`refused`): exit code 2, one `error:` line on stderr
with the file in it, no traceback, and the tree of files under the test's directory
byte-identical before and after.
"""
from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_RUN = ["--set", "model.nonterminals=4", "--set", "model.preterminals=6",
            "--set", "model.symbol_dim=16", "--set", "train.batch_size=8",
            "--set", "train.steps=2", "--set", "train.eval_every=2",
            "--set", "train.checkpoint_every=2"]


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def invoke(runner, app, *args):
    return runner.invoke(app, [str(a) for a in args])


def refused(runner, app, root: Path, *args, names=None, says=()):
    """Run a command that must refuse; return its error line."""
    before = tree_hash(root)
    result = invoke(runner, app, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert not [line for line in lines if line.startswith("error: ")][:-1], result.stderr
    assert "Traceback" not in result.output
    if names is not None:
        assert str(names) in lines[-1], lines[-1]
    for fragment in says:
        assert fragment in lines[-1], lines[-1]
    assert tree_hash(root) == before, "a refused command changed files on disk"
    return lines[-1]


def ok(runner, app, *args):
    result = invoke(runner, app, *args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    out = tmp_path_factory.mktemp("syn") / "corpus"
    ok(CliRunner(), app, "prepare", "synthetic", "--out", out, "--num-sentences", 60,
       "--max-length", 8)
    return out


@pytest.fixture(scope="module")
def run(syn, tmp_path_factory):
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    out = tmp_path_factory.mktemp("run") / "run"
    ok(CliRunner(), app, "train", REPO / "recipes" / "synthetic-npcfg.yaml", "--out", out,
       "--quiet", "--device", "cpu", "--set", f"data.path={syn}", *TINY_RUN)
    return out


@pytest.fixture
def ptb(tmp_path, runner, cli_app, tiny_mrg):
    out = tmp_path / "ptb"
    ok(runner, cli_app, "prepare", "ptb", tiny_mrg, "--out", out, "--split", "none")
    return out


# ------------------------------------------------------------------ 1. empty splits

def test_empty_split_stores_loads_and_is_refused_by_name(runner, cli_app, tmp_path):
    out = tmp_path / "c"
    ok(runner, cli_app, "prepare", "synthetic", "--out", out, "--num-sentences", 40,
       "--ratios", "0.9,0,0.1")
    result = ok(runner, cli_app, "evaluate", "--data", out, "--baseline", "right")
    assert "Traceback" not in result.output
    refused(runner, cli_app, tmp_path, "evaluate", "--data", out, "--baseline", "right",
            "--split", "valid", names=out, says=("split 'valid' is empty", "train 36",
                                                 "valid 0", "test 4"))
    from grammars.data.corpus import load_corpus

    assert load_corpus(out).sizes == {"train": 36, "valid": 0, "test": 4}


def test_one_file_ratio_split_falls_back_to_sentences(runner, cli_app, tmp_path):
    one = tmp_path / "one.mrg"
    one.write_text("".join(f"( (S (NN w{k}) (VBD ran)) )\n" for k in range(20)))
    out = tmp_path / "c"
    result = ok(runner, cli_app, "prepare", "ptb", one, "--out", out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"]["by"] == "sentence" and "fallback" in manifest["split"]
    assert [manifest["splits"][s]["sentences"] for s in ("train", "valid", "test")] == [16, 2, 2]
    assert "splitting the 20 sentences" in " ".join(result.stdout.split())
    ok(runner, cli_app, "evaluate", "--data", out, "--baseline", "left", "--split", "valid")


# ------------------------------------------------------------------ 2. byte-order marks

BOM = b"\xef\xbb\xbf"


def test_bom_never_reaches_a_word(runner, cli_app, tmp_path, run):
    mrg = tmp_path / "bom.mrg"
    mrg.write_bytes(BOM + b"( (S (NN the) (NN dog)) )\n")
    ok(runner, cli_app, "prepare", "ptb", mrg, "--out", tmp_path / "p", "--split", "none")
    assert json.loads((tmp_path / "p" / "vocab.json").read_text())["tokens"][1:] == ["dog", "the"]
    pred = tmp_path / "pred.txt"
    pred.write_bytes(BOM + b"(X (T the) (T dog))\n")
    ok(runner, cli_app, "evaluate", "--data", tmp_path / "p", "--pred", pred)
    text = tmp_path / "in.txt"
    for encoded in (BOM + b"the dog ran\n", "the dog ran\n".encode("utf-16")):
        text.write_bytes(encoded)
        ok(runner, cli_app, "prepare", "text", text, "--out", tmp_path / "t")
        assert json.loads((tmp_path / "t" / "vocab.json").read_text())["tokens"][1:] == [
            "dog", "ran", "the"]
        ok(runner, cli_app, "parse", run, "--input", text, "--out", tmp_path / "parsed.txt")
        parsed = (tmp_path / "parsed.txt").read_text(encoding="utf-8")
        assert "\ufeff" not in parsed and " the)" in parsed
        result = ok(runner, cli_app, "sample", run, "--input", text, "-n", 1, "--brackets-only")
        assert "\ufeff" not in result.stdout and "the dog ran" in result.stdout


# ------------------------------------------------------------------ 3. damaged corpora

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


DAMAGE = {
    "truncated arrow": ("train/data-00000-of-00001.arrow", _truncate),
    "missing split": ("valid", lambda p: [f.unlink() for f in p.iterdir()] and p.rmdir()),
    "missing vocab": ("vocab.json", Path.unlink),
    "corrupt vocab": ("vocab.json", lambda p: p.write_text('{"tokens": ["<unk>", 3')),
    "no dataset_dict.json": ("dataset_dict.json", Path.unlink),
}


@pytest.mark.parametrize("checksums", [True, False], ids=["manifest", "older-manifest"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_corpus_is_one_line(runner, cli_app, tmp_path, syn, damage, checksums):
    import shutil

    corpus = tmp_path / "c"
    shutil.copytree(syn, corpus)
    if not checksums:   # a corpus prepared before the manifest listed its files
        manifest = json.loads((corpus / "manifest.json").read_text())
        manifest.pop("files", None)
        (corpus / "manifest.json").write_text(json.dumps(manifest))
    relative, harm = DAMAGE[damage]
    harm(corpus / relative)
    line = refused(runner, cli_app, tmp_path, "evaluate", "--data", corpus, "--baseline",
                   "right", names=corpus / relative.split("/")[0], says=("again",))
    assert "Traceback" not in line


# ------------------------------------------------------------------ 4. another corpus

def test_foreign_corpus_warns_with_unk_rate(runner, cli_app, tmp_path, run, syn, ptb):
    result = ok(runner, cli_app, "evaluate", run, "--data", ptb, "--json", tmp_path / "r.json")
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "not the corpus" in warning[0] and "<unk>" in warning[0]
    assert "% of the" in warning[0]
    assert json.loads((tmp_path / "r.json").read_text())["unk_rate"] > 0.5
    result = ok(runner, cli_app, "parse", run, "--input", ptb, "--out", tmp_path / "p.txt")
    assert "not the corpus" in result.stderr
    result = ok(runner, cli_app, "evaluate", run, "--data", syn)
    assert "not the corpus" not in result.stderr


# ------------------------------------------------------------------ 5. messages

def test_empty_inputs_name_the_file_and_fitting_options(runner, cli_app, tmp_path, run):
    text = tmp_path / "comments.txt"
    text.write_text("# only a comment\n\n")
    for command in (["prepare", "text", text, "--out", tmp_path / "o"],
                    ["parse", run, "--input", text, "--out", tmp_path / "o.txt"]):
        line = refused(runner, cli_app, tmp_path, *command, names=text,
                       says=("2 lines are blank",))
        assert "--skip-bad" not in line and "--max-train-len" not in line
    refused(runner, cli_app, tmp_path, "prepare", "text", tmp_path, "--out", tmp_path / "o",
            names=tmp_path, says=("is a directory",))


def test_wsj_split_without_training_sections(runner, cli_app, tmp_path, ptb_sample):
    refused(runner, cli_app, tmp_path, "prepare", "ptb", ptb_sample, "--split", "wsj",
            "--out", tmp_path / "o", says=("sections found: 00, 01", "§02–21"))


def test_non_ptb_tags_give_counts(runner, cli_app, tmp_path):
    path = tmp_path / "tags.txt"
    path.write_text("(S (A x) (B y))\n(S (A z) (B w))\n")
    refused(runner, cli_app, tmp_path, "prepare", "ptb", path, "--out", tmp_path / "o",
            names=path, says=("2 trees read", "2 left with no word", "not PTB word tags"))


def test_blank_pred_line_is_reported_at_its_own_number(runner, cli_app, tmp_path, ptb):
    pred = tmp_path / "pred.txt"
    pred.write_text("(A (T The) (T dog) (T barked))\n\n(T Hello)\n(A (T the) (T cats))\n"
                    "(X (T a) (T b) (T c) (T d) (T e))\n")
    refused(runner, cli_app, tmp_path, "evaluate", "--data", ptb, "--pred", pred,
            says=(f"{pred}:2:", "line 2 is blank"))


def test_sample_with_nothing_to_draw_is_an_error(runner, cli_app, tmp_path, run):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    refused(runner, cli_app, tmp_path, "sample", run, "--sentence", "", says=("0 words",))
    refused(runner, cli_app, tmp_path, "sample", run, "--input", empty, names=empty)


@pytest.mark.parametrize("args", [
    ["parse", "RUN", "--input", "CORPUS", "--out", "OUT", "--batch-size", "0"],
    ["parse", "RUN", "--input", "CORPUS", "--out", "OUT", "--batch-size", "-3"],
    ["parse", "RUN", "--input", "CORPUS", "--out", "OUT", "--samples", "0"],
    ["evaluate", "RUN", "--data", "CORPUS", "--batch-size", "0"],
    ["evaluate", "--data", "CORPUS", "--baseline", "right", "--max-length", "-1"],
    ["evaluate", "RUN", "--data", "CORPUS", "--samples", "-2"],
    ["sample", "RUN", "--from-model", "-n", "0"],
    ["sample", "RUN", "--from-model", "--max-length", "1"],
    ["prepare", "synthetic", "--out", "OUT", "--num-sentences", "0"],
    ["prepare", "ptb", "CORPUS", "--out", "OUT", "--vocab-size", "-1"],
    ["parse", "RUN", "--input", "CORPUS", "--out", "OUT", "--checkpoint", "middle"],
    ["evaluate", "RUN", "--data", "CORPUS", "--checkpoint", "middle"],
    ["sample", "RUN", "--from-model", "--checkpoint", "middle"],
], ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_bad_numbers_and_checkpoints_are_one_line(runner, cli_app, tmp_path, run, syn, args):
    mapping = {"RUN": str(run), "CORPUS": str(syn), "OUT": str(tmp_path / "out")}
    line = refused(runner, cli_app, tmp_path, *[mapping.get(a, a) for a in args])
    assert args[-2] in line


@pytest.fixture
def read_only(monkeypatch):
    """Make `root` behave like a read-only mount (the tests run as root, so chmod would not)."""
    from gfnem_cli.engine import files

    def arm(root: Path):
        real = files.create_exclusive

        def create(name):
            if Path(name).parent.resolve().is_relative_to(root.resolve()):
                raise OSError(errno.EROFS, "Read-only file system")
            return real(name)

        monkeypatch.setattr(files, "create_exclusive", create)
    return arm


def test_outputs_are_checked_before_any_work(runner, cli_app, tmp_path, run, syn, ptb,
                                             read_only, monkeypatch):
    import grammars.run

    def no_work(*_, **__):
        raise AssertionError("the output was not checked before the run was loaded")

    monkeypatch.setattr(grammars.run, "load_run", no_work)
    folder = tmp_path / "adir"
    folder.mkdir()
    refused(runner, cli_app, tmp_path, "parse", run, "--input", syn, "--out", folder,
            names=folder, says=("directory",))
    refused(runner, cli_app, tmp_path, "evaluate", run, "--data", syn, "--json", folder,
            names=folder, says=("directory",))
    refused(runner, cli_app, tmp_path, "evaluate", "--data", syn, "--baseline", "right",
            "--json", folder, names=folder)
    read_only(folder)
    for args in (["parse", run, "--input", syn, "--out", folder / "p.txt"],
                 ["evaluate", run, "--data", syn, "--json", folder / "r.json"]):
        refused(runner, cli_app, tmp_path, *args, names=folder, says=("Read-only",))
    # prepare: refused before reading any input, the old corpus left as it was
    refused(runner, cli_app, tmp_path, "prepare", "ptb", tmp_path / "missing.mrg", "--out",
            folder / "c", names=folder / "c", says=("Read-only",))
    read_only(ptb.parent)
    refused(runner, cli_app, tmp_path, "prepare", "ptb", REPO / "README.md", "--out", ptb,
            names=ptb, says=("Read-only",))


def test_failed_prepare_keeps_the_old_corpus_and_no_temp_dir(runner, cli_app, tmp_path, ptb,
                                                             tiny_mrg, monkeypatch):
    import datasets

    def full_disk(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "partial.arrow").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", full_disk)
    refused(runner, cli_app, tmp_path, "prepare", "ptb", tiny_mrg, "--out", ptb,
            "--split", "none", "--no-lowercase", names=ptb, says=("No space left",))
    assert sorted(p.name for p in ptb.parent.iterdir() if p.name.startswith(".")) == []


def test_a_prepare_killed_mid_swap_is_explained_then_repaired(runner, cli_app, tmp_path, ptb,
                                                              tiny_mrg):
    """The state a SIGKILL between the two renames of the fallback swap leaves (systems
    without an atomic exchange): the old corpus aside, the new one in a temporary folder."""
    aside, partial = tmp_path / ".ptb.old-99999999", tmp_path / ".ptb.tmp-99999998"
    ptb.rename(aside)
    partial.mkdir()
    refused(runner, cli_app, tmp_path, "evaluate", "--data", ptb, "--baseline", "right",
            names=ptb, says=("interrupted", aside.name))
    ok(runner, cli_app, "prepare", "ptb", tiny_mrg, "--out", ptb, "--split", "none")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    ok(runner, cli_app, "evaluate", "--data", ptb, "--baseline", "right")
