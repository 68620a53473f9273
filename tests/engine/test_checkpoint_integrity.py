"""Checkpoint integrity (issue 14): a checksum in every checkpoint, the previous checkpoint kept
until the new one is verified, `--resume` falling back to the newest intact one, and the
output's free space checked before a run writes anything.

The unit tests drive `engine/checkpoint.py` on small states; the end-to-end ones train a tiny
marginal grammar in-process and damage its files the way a bad disk would (one flipped byte
inside tensor data, which `torch.load` reads without noticing).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from gfnem_cli.engine import checkpoint as ckpt
from gfnem_cli.engine import files, runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "grammars"))
from test_gfnem_train_cli import assert_same_state, corpus  # noqa: E402,F401

TINY = {
    "data": {"path": "", "max_train_length": 8, "max_valid_sentences": 6},
    "model": {"kind": "npcfg", "nonterminals": 4, "preterminals": 5, "symbol_dim": 16},
    "method": "marginal",
    "train": {"steps": 6, "batch_size": 4, "eval_every": 2, "checkpoint_every": 3,
              "eval_batch_size": 8, "seed": 5},
}
VOLATILE = ("time", "elapsed_s", "items_per_s")


def state(step: int = 3) -> dict:
    return {"format": ckpt.FORMAT_VERSION, "step": step, "config": {"a": 1},
            "method": {"model": {"w": torch.linspace(-1, 1, 512), "b": torch.ones(3)}}}


def tensor_offset(path: Path) -> int:
    """The file offset of the middle byte of the largest tensor record of a torch archive."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                    info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[tensor_offset(path) if offset is None else offset] ^= 0x10
    path.write_bytes(bytes(data))


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ the format


def test_a_checkpoint_is_a_torch_archive_with_its_sha256_in_the_zip_comment(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_atomic(state(), path)
    data = path.read_bytes()
    comment = zipfile.ZipFile(path).comment
    assert comment.startswith(b"gfnem-sha256:")
    archive = data[:-(len(comment) + 2)] + b"\0\0"           # as torch.save wrote it
    assert comment[len(b"gfnem-sha256:"):].decode() == hashlib.sha256(archive).hexdigest()
    assert torch.equal(torch.load(path, weights_only=False)["method"]["model"]["w"],
                       state()["method"]["model"]["w"])      # torch.load reads it unchanged
    assert torch.equal(ckpt.load(path)["method"]["model"]["w"], state()["method"]["model"]["w"])


def test_a_flipped_tensor_byte_passes_torch_load_but_not_the_checksum(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_atomic(state(), path)
    flip_byte(path)
    silently = torch.load(path, weights_only=False)["method"]["model"]["w"]
    assert not torch.equal(silently, state()["method"]["model"]["w"])   # torch saw nothing
    with pytest.raises(ckpt.DamagedCheckpoint) as caught:
        ckpt.load(path)
    assert "checksum" in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("keep", [0, 1 / 3, 0.999, -5, -40])
def test_a_truncated_checkpoint_is_damage_wherever_it_is_cut(tmp_path, keep):
    path = tmp_path / "last.pt"
    ckpt.save_atomic(state(), path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)] if keep >= 0 else data[:keep])
    with pytest.raises(ckpt.DamagedCheckpoint):
        ckpt.load(path)


def test_a_checkpoint_written_before_checksums_still_loads(tmp_path):
    path = tmp_path / "last.pt"
    old = state()
    old["method"]["grammar_optimizer"] = {"lr": 1}            # and the old keys are mapped
    torch.save(old, path)
    assert zipfile.ZipFile(path).comment == b""
    loaded = ckpt.load(path)
    assert loaded["step"] == 3 and loaded["method"]["model_optimizer"] == {"lr": 1}
    # it is kept as previous.pt like any intact checkpoint
    ckpt.save_atomic(state(6), path, keep_previous=ckpt.previous_of(path))
    assert ckpt.load(tmp_path / "previous.pt")["step"] == 3


# ------------------------------------------------------------------ previous.pt


def saved_twice(folder: Path) -> Path:
    last = folder / "last.pt"
    for step in (3, 6):
        ckpt.save_atomic(state(step), last, keep_previous=ckpt.previous_of(last))
    assert ckpt.load(last)["step"] == 6 and ckpt.load(folder / "previous.pt")["step"] == 3
    return last


def test_a_new_checkpoint_damaged_before_its_check_replaces_nothing(tmp_path, monkeypatch):
    """A byte flipped between the write and the read-back (a bad disk or cable): the check
    fails, and last.pt and previous.pt stay exactly as they were."""
    last = saved_twice(tmp_path)
    before = digest(tmp_path)
    real = ckpt.write_atomic

    def corrupting(path, write, binary=True, check=None):
        def bad_disk(handle):
            buffer = io.BytesIO()
            write(buffer)
            data = bytearray(buffer.getvalue())
            data[len(data) // 2] ^= 0x01
            handle.write(bytes(data))
        return real(path, bad_disk, binary, check)

    monkeypatch.setattr(ckpt, "write_atomic", corrupting)
    with pytest.raises(ckpt.DamagedCheckpoint, match="read back damaged"):
        ckpt.save_atomic(state(9), last, keep_previous=ckpt.previous_of(last))
    assert digest(tmp_path) == before and not temporaries(tmp_path)


def test_a_failure_after_the_check_before_the_rename_replaces_nothing(tmp_path, monkeypatch):
    last = saved_twice(tmp_path)
    before = digest(tmp_path)

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ckpt.GfnemError, match="No space left"):
        ckpt.save_atomic(state(9), last, keep_previous=ckpt.previous_of(last))
    monkeypatch.undo()
    assert digest(tmp_path) == before and not temporaries(tmp_path)


def test_a_damaged_last_is_never_kept_as_previous(tmp_path):
    last = saved_twice(tmp_path)
    flip_byte(last)
    ckpt.save_atomic(state(9), last, keep_previous=ckpt.previous_of(last))
    assert ckpt.load(last)["step"] == 9
    assert ckpt.load(tmp_path / "previous.pt")["step"] == 3     # the intact older one


def test_a_write_killed_after_the_keep_leaves_no_temporary_at_the_next_one(tmp_path):
    """Killed between keeping last.pt as previous.pt (a hard link) and replacing last.pt, a
    run resumes with both names on one file; the next checkpoint must not leave the link it
    makes behind (a rename between two links of one file does nothing)."""
    last = saved_twice(tmp_path)
    previous = ckpt.previous_of(last)
    previous.unlink()
    os.link(last, previous)                      # the state such a kill leaves
    ckpt.save_atomic(state(9), last, keep_previous=previous)
    assert ckpt.load(last)["step"] == 9 and ckpt.load(previous)["step"] == 6
    assert not temporaries(tmp_path)


def test_previous_is_a_copy_where_hard_links_fail(tmp_path, monkeypatch):
    last = saved_twice(tmp_path)
    kept = last.read_bytes()

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    ckpt.save_atomic(state(9), last, keep_previous=ckpt.previous_of(last))
    assert (tmp_path / "previous.pt").read_bytes() == kept and not temporaries(tmp_path)
    assert os.stat(tmp_path / "previous.pt").st_nlink == 1


def test_load_newest_falls_back_with_one_warning(tmp_path):
    last = saved_twice(tmp_path)
    flip_byte(last)
    said = []
    path, loaded = ckpt.load_newest(last, said.append)
    assert path.name == "previous.pt" and loaded["step"] == 3
    assert len(said) == 1 and "checksum" in said[0] and "previous.pt (step 3)" in said[0]
    last.unlink()                                              # missing: the same fallback
    assert ckpt.load_newest(last, said.append)[1]["step"] == 3 and "missing" in said[-1]
    flip_byte(tmp_path / "previous.pt")
    with pytest.raises(ckpt.DamagedCheckpoint, match="previous.pt too"):
        ckpt.load_newest(last, said.append)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def recipe(corpus, tmp_path_factory) -> Path:
    config = json.loads(json.dumps(TINY))
    config["data"]["path"] = str(corpus)
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def gfnem(*argv):
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    return CliRunner().invoke(app, [str(a) for a in argv])


def train(recipe: Path, out: Path, *extra):
    result = gfnem("train", recipe, "--out", out, "-q", "--device", "cpu", *extra)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def finished(recipe, tmp_path_factory) -> Path:
    """A 6-step run: last.pt at step 6, previous.pt at step 3, best.pt."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(recipe, run)
    return run


@pytest.fixture(scope="module")
def straight9(recipe, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    train(recipe, run, "--set", "train.steps=9")
    return run


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in VOLATILE}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def copy_run(run: Path, folder: Path) -> Path:
    shutil.copytree(run, folder / "run")
    return folder / "run"


def test_a_flipped_byte_is_refused_by_parse_and_evaluate_in_one_line(finished, corpus,
                                                                     tmp_path):
    run = copy_run(finished, tmp_path)
    for name in ("last", "best"):
        flip_byte(run / "checkpoints" / f"{name}.pt")
        before = digest(run)
        for argv in (["parse", run, "--input", corpus, "--out", tmp_path / "p.txt"],
                     ["evaluate", run, "--data", corpus, "--json", tmp_path / "e.json"]):
            line = one_line_error(gfnem(*argv, "--checkpoint", name, "--device", "cpu"),
                                  f"{name}.pt", "checksum")
            intact = ("previous.pt, best.pt beside it are intact: `gfnem train --resume`"
                      if name == "last" else "last.pt, previous.pt beside it are intact: use "
                      "--checkpoint last")
            assert intact in line, line
        assert digest(run) == before
        assert not (tmp_path / "p.txt").exists() and not (tmp_path / "e.json").exists()
        shutil.copy(finished / "checkpoints" / f"{name}.pt", run / "checkpoints")


def test_resume_from_a_damaged_last_falls_back_to_previous_and_ends_exactly(
        finished, straight9, recipe, tmp_path):
    run = copy_run(finished, tmp_path)
    flip_byte(run / "checkpoints" / "last.pt")
    result = train(recipe, run, "--set", "train.steps=9", "--resume")
    warnings = [x for x in result.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "checksum" in warnings[0], result.output
    assert "resuming from previous.pt (step 3)" in warnings[0]
    for name in ("last.pt", "best.pt"):
        assert_same_state(ckpt.load(run / "checkpoints" / name)["method"],
                          ckpt.load(straight9 / "checkpoints" / name)["method"], name)
    assert metrics(run) == metrics(straight9)           # trimmed to step 3, then steps 4-9
    info = json.loads((run / "run_info.json").read_text())
    assert info["resumes"][-1]["from_step"] == 3
    assert ckpt.load(run / "checkpoints" / "previous.pt")["step"] == 6


def test_resume_with_no_intact_checkpoint_is_refused_and_changes_nothing(finished, recipe,
                                                                          tmp_path):
    run = copy_run(finished, tmp_path)
    flip_byte(run / "checkpoints" / "last.pt")
    (run / "checkpoints" / "previous.pt").write_bytes(b"")
    before = digest(run)
    one_line_error(gfnem("train", recipe, "--out", run, "-q", "--device", "cpu", "--resume"),
                   "last.pt", "previous.pt")
    assert digest(run) == before


def fake_disk(monkeypatch, free: int, seen: list | None = None):
    real = shutil.disk_usage

    def disk_usage(path):
        if seen is not None:
            seen.append(Path(path))
        return real(path)._replace(free=free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def test_too_little_free_space_is_refused_before_any_write(recipe, finished, tmp_path,
                                                           monkeypatch):
    seen = []
    fake_disk(monkeypatch, 200_000, seen)
    one_line_error(gfnem("train", recipe, "--out", tmp_path / "new", "-q", "--device", "cpu"),
                   "no space left", "195.3 KiB free")
    assert not (tmp_path / "new").exists() and seen == [tmp_path]
    run = copy_run(finished, tmp_path)
    before = digest(run)
    one_line_error(gfnem("train", recipe, "--out", run, "-q", "--device", "cpu", "--resume",
                         "--set", "train.steps=9"), "no space left")
    assert digest(run) == before


def test_the_space_estimate_covers_the_checkpoints_a_run_writes(recipe, tmp_path,
                                                                monkeypatch):
    needed = []
    real = runs.check_free_space
    monkeypatch.setattr(runs, "check_free_space",
                        lambda folder, need, shown: (needed.append(need), real(folder, need,
                                                                               shown)))
    run = tmp_path / "run"
    train(recipe, run)
    sizes = [p.stat().st_size for p in (run / "checkpoints").glob("*.pt")]
    assert len(sizes) == 3 and needed[0] >= sum(sizes) + max(sizes)
    fake_disk(monkeypatch, needed[0])                   # exactly enough: it trains
    train(recipe, tmp_path / "run2")


def test_a_read_only_checkpoints_folder_refuses_resume_before_any_write(
        finished, recipe, tmp_path, monkeypatch):
    run = copy_run(finished, tmp_path)
    before = digest(run)
    real = files.create_exclusive

    def read_only(name):
        if str(run / "checkpoints") in name:
            raise OSError(errno.EROFS, "Read-only file system", name)
        return real(name)

    monkeypatch.setattr(files, "create_exclusive", read_only)
    one_line_error(gfnem("train", recipe, "--out", run, "-q", "--device", "cpu", "--resume",
                         "--set", "train.steps=9"), "Read-only file system", "checkpoints")
    assert digest(run) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through chmod 0555")
def test_a_folder_without_write_permission_is_refused_by_the_probe(recipe, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        one_line_error(gfnem("train", recipe, "--out", locked / "run", "-q", "--device", "cpu"),
                       "Permission denied")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)
