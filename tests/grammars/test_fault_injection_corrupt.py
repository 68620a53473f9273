"""Fault injection, part 3 (issue 10, DESIGN §9): corrupted checkpoints, corpora, logs, configs.

Each case damages a copy of a finished (or half-finished) tiny run or of a prepared corpus the
way a crash, a full disk or a careless edit would, then runs the commands that read it in a
real child process (tests/fault_driver.py). Every command must either work (a damaged metrics
log never blocks `--resume`, which must still end exactly; nor does a damaged last.pt, from
which `--resume` falls back to previous.pt) or exit 2 with one `error:` line and no
traceback, and a refused command leaves every file as it was.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fault_injection import (SEED, assert_same, check_like_reference,  # noqa: E402,F401
                                  corpus, method_state, references, server, snapshot,
                                  strict_json_lines)

RNG = random.Random(SEED)
DAMAGE = {
    "truncated": lambda data: data[: len(data) // 3],
    "random-bytes": lambda data: RNG.randbytes(len(data)),
    "zero-length": lambda data: b"",
}


def damage(path: Path, how: str) -> None:
    path.write_bytes(DAMAGE[how](path.read_bytes()))


def copy_run(ref, folder: Path, name: str = "run") -> Path:
    run = folder / name
    shutil.copytree(ref.run, run)
    return run


def refused(result, *watched: Path, before: list) -> str:
    line = result.one_line_error()
    assert [snapshot(w) for w in watched] == before, f"files changed: {result}"
    return line


def readers(run: Path, corpus: Path, which: str) -> dict[str, list]:
    """The commands that read a run's checkpoint `which` (best or last)."""
    words = " ".join(json.loads((corpus / "vocab.json").read_text())["tokens"][1:5])
    pick = ["--checkpoint", which, "--device", "cpu"]
    return {"parse": ["parse", run, "--input", corpus, "--out", run.parent / "p.txt", *pick],
            "evaluate": ["evaluate", run, "--data", corpus, "--json", run.parent / "e.json",
                         *pick],
            "sample": ["sample", run, "--sentence", words, "-n", "2", "--brackets-only",
                       *pick]}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_checkpoints_are_one_line_errors_and_resume_falls_back(
        server, references, corpus, tmp_path, how):
    ref = references("marginal")
    done = 0
    for name in ("last", "best"):
        run = copy_run(ref, tmp_path, name)
        damage(run / "checkpoints" / f"{name}.pt", how)
        before = [snapshot(run)]
        for label, argv in readers(run, corpus, name).items():
            line = refused(server.run(argv), run, before=before)
            assert f"{name}.pt" in line, (label, line)
            done += 1
        if name == "last":       # previous.pt damaged too: nothing intact to resume from
            damage(run / "checkpoints" / "previous.pt", how)
            before = [snapshot(run)]
            line = refused(server.run(ref.argv(run, "--resume", "--set", "train.steps=8")),
                           run, before=before)
            assert "last.pt" in line and "previous.pt" in line, line
            done += 1
        other = "best" if name == "last" else "last"     # the intact one still serves
        server.run(readers(run, corpus, other)["sample"]).ok()
        done += 1
    # a damaged last.pt: `--resume` warns in one line and continues from previous.pt (step 3),
    # the log trimmed to it; a damaged best.pt does not stop `--resume`, which never reads it.
    # Either run then ends exactly like a straight one (best.pt is rewritten at the next
    # better validation)
    longer = references("marginal", 8)
    for name in ("last", "best"):
        run = copy_run(ref, tmp_path, f"resume-with-bad-{name}")
        damage(run / "checkpoints" / f"{name}.pt", how)
        result = server.run(longer.argv(run, "--resume")).ok()
        warnings = [x for x in result.stderr.splitlines() if x.startswith("warning:")]
        if name == "last":
            assert len(warnings) == 1 and "resuming from previous.pt (step 3)" in warnings[0], \
                result
            check_like_reference(run, longer)
        else:
            assert not warnings, result
            assert_same(method_state(run / "checkpoints" / "last.pt"), longer.last, "last.pt")
        done += 1
    print(f"\nFAULT damaged checkpoint [{how}]: {done} commands")


CORPUS_DAMAGE = {
    "train-arrow-truncated": lambda c: damage(next((c / "train").glob("*.arrow")), "truncated"),
    "valid-arrow-random": lambda c: damage(next((c / "valid").glob("*.arrow")), "random-bytes"),
    "test-arrow-empty": lambda c: damage(next((c / "test").glob("*.arrow")), "zero-length"),
    "valid-folder-deleted": lambda c: shutil.rmtree(c / "valid"),
    "test-folder-deleted": lambda c: shutil.rmtree(c / "test"),
    "vocab-random-bytes": lambda c: damage(c / "vocab.json", "random-bytes"),
    "vocab-not-a-list": lambda c: (c / "vocab.json").write_text('{"unk": "<unk>", "tokens": 7}'),
    "dataset-dict-truncated": lambda c: damage(c / "dataset_dict.json", "truncated"),
    "manifest-truncated": lambda c: damage(c / "manifest.json", "truncated"),
    # a corpus whose manifest lists no checksums (prepared before they existed): the readers
    # themselves meet the damage
    "unlisted/train-arrow-truncated": lambda c: unlisted(c, "train-arrow-truncated"),
    "unlisted/valid-arrow-random": lambda c: unlisted(c, "valid-arrow-random"),
    "unlisted/valid-folder-deleted": lambda c: unlisted(c, "valid-folder-deleted"),
    "unlisted/vocab-random-bytes": lambda c: unlisted(c, "vocab-random-bytes"),
}


def unlisted(corpus: Path, how: str) -> None:
    manifest = json.loads((corpus / "manifest.json").read_text())
    manifest.pop("files", None)
    (corpus / "manifest.json").write_text(json.dumps(manifest, indent=2))
    CORPUS_DAMAGE[how](corpus)


@pytest.mark.parametrize("how", sorted(CORPUS_DAMAGE))
def test_damaged_corpus_gives_one_line_errors(server, references, corpus, tmp_path, how):
    ref = references("marginal")
    run = copy_run(ref, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    CORPUS_DAMAGE[how](data)
    recipe = tmp_path / "recipe.yaml"
    config = yaml.safe_load(ref.recipe.read_text())
    config["data"]["path"] = str(data)
    recipe.write_text(yaml.safe_dump(config))
    commands = {"train": ["train", recipe, "--out", tmp_path / "new", "-q", "--device", "cpu"],
                "evaluate": ["evaluate", run, "--data", data, "--json", tmp_path / "e.json",
                             "--device", "cpu"],
                "parse": ["parse", run, "--input", data, "--out", tmp_path / "p.txt",
                          "--device", "cpu"]}
    outcomes = {}
    for label, argv in commands.items():
        before = [snapshot(data), snapshot(run)]
        result = server.run(argv)
        if result.code == 0:          # the damaged part is one this command does not read
            assert "Traceback" not in result.stderr, result
            assert [snapshot(data), snapshot(run)] == before
            outcomes[label] = "works"
        else:
            refused(result, data, run, before=before)
            outcomes[label] = "error"
    if outcomes["train"] == "works":  # then it trained on intact train/valid splits
        assert (tmp_path / "new" / "checkpoints" / "last.pt").exists()
    print(f"\nFAULT damaged corpus [{how}]: {outcomes}")


METRICS_DAMAGE = {      # bytes -> bytes: what a crash, a bad disk or an editor leaves
    "torn-last-line": lambda data: data + data.splitlines()[-1][:37],
    "garbage-lines": lambda data: data.replace(b"\n", b"\n\0\0\0\n#garbage\n", 1)
    + RNG.randbytes(40).replace(b"\n", b"") + b"\n",
    "wrong-types": lambda data: data + b'{"kind": "train", "step": null}\n'
    + b'{"kind": "eval", "step": "7"}\n[1, 2]\n"train"\n',
    "deleted": None,
}


@pytest.mark.parametrize("how", sorted(METRICS_DAMAGE))   # wrong-types: TypeError before 13cc88a
def test_damaged_metrics_log_never_blocks_an_exact_resume(server, references, tmp_path, how):
    ref = references("marginal")
    run = tmp_path / "run"                       # killed in step 4: last.pt at step 3
    assert server.run(ref.argv(run), fault={"kind": "step", "call": 4, "phase": "before"}).killed
    log = run / "metrics.jsonl"
    if METRICS_DAMAGE[how] is None:
        log.unlink()
    else:
        log.write_bytes(METRICS_DAMAGE[how](log.read_bytes()))
    server.run(ref.argv(run, "--resume")).ok()
    assert_same(method_state(run / "checkpoints" / "last.pt"), ref.last, "last.pt")
    lines = strict_json_lines(log)
    steps = [x["step"] for x in lines if x.get("kind") == "train"]
    assert steps == list(range(1 if how != "deleted" else 4, ref.steps + 1)), steps
    if how != "deleted":
        check_like_reference(run, ref)
    print(f"\nFAULT damaged metrics [{how}]: resumed exactly, {len(lines)} lines")


CONFIG_DAMAGE = {
    "yaml-syntax": "model: {kind: npcfg\ntrain: [\n",
    "not-a-mapping": "- 1\n- 2\n",
    "empty": "",
    "binary": "\udcff\udcfe\x00garbage",
    "unknown-key": None,            # built from the real config below
    "bad-type": None,
    "other-value": None,
    "section-a-scalar": None,
}


def edited_config(original: dict, how: str) -> str:
    config = json.loads(json.dumps(original))
    if how == "unknown-key":
        config["model"]["nonterminal"] = 4
    elif how == "bad-type":
        config["train"]["lr"] = "fast"
    elif how == "other-value":
        config["model"]["nonterminals"] = 5
    elif how == "section-a-scalar":
        config["train"] = 5
    return yaml.safe_dump(config, sort_keys=False)


@pytest.mark.parametrize("how", list(CONFIG_DAMAGE) + ["deleted"])
def test_hand_edited_run_config_gives_one_line_errors(server, references, corpus, tmp_path,
                                                      how):
    ref = references("marginal")
    run = copy_run(ref, tmp_path)
    path = run / "config.yaml"
    if how == "deleted":
        path.unlink()
    else:
        text = CONFIG_DAMAGE[how]
        if text is None:
            text = edited_config(yaml.safe_load(path.read_text()), how)
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = [snapshot(run)]
    commands = readers(run, corpus, "best")
    commands["resume"] = ref.argv(run, "--resume", "--set", "train.steps=8")
    lines = {}
    for label, argv in commands.items():
        lines[label] = refused(server.run(argv), run, before=before)
        # the one line names the run's config (resume may instead name the recipe's differing
        # key: the config it was given is not the run's)
        assert "config.yaml" in lines[label] or str(run) in lines[label], (label, lines[label])
    print(f"\nFAULT edited config [{how}]: {len(commands)} commands refused")


RUN_FILE_DAMAGE = {"vocab.json": "random-bytes", "corpus_manifest.json": "truncated",
                   "run_info.json": "zero-length", "true_grammar.json": "truncated"}


@pytest.mark.parametrize("name", sorted(RUN_FILE_DAMAGE))
def test_damaged_run_files_are_one_line_errors_or_harmless(server, references, corpus,
                                                           tmp_path, name):
    """The other files of a run: a reader either works or refuses in one line, touching
    nothing; `--resume` rewrites them from the corpus and continues exactly."""
    ref = references("marginal")
    run = copy_run(ref, tmp_path)
    damage(run / name, RUN_FILE_DAMAGE[name])
    outcomes = {}
    for label, argv in readers(run, corpus, "best").items():
        before = [snapshot(run)]
        result = server.run(argv)
        if result.code == 0:
            assert "Traceback" not in result.stderr + result.stdout, result
            outcomes[label] = "works"
        else:
            refused(result, run, before=before)
            outcomes[label] = "error"
    longer = references("marginal", 8)
    server.run(longer.argv(run, "--resume")).ok()
    assert_same(method_state(run / "checkpoints" / "last.pt"), longer.last, "last.pt")
    print(f"\nFAULT damaged run file [{name}]: {outcomes}, resume exact")
