"""Fault injection, part 2 (issue 10, DESIGN §9): a full disk, a read-only output, a plain
`python -m gfnem_cli` process killed after a random delay, `prepare` killed while it replaces
a corpus, and SIGTERM / Ctrl-C (once: a polite stop; twice: an abort) at random moments.

The full disk and the read-only output are real where this machine lets us mount a tmpfs (as
root: `mount -t tmpfs`, filled by a file, or remounted read-only), and patched otherwise (the
child's writes under the output raise OSError(ENOSPC / EROFS), see tests/fault_driver.py);
the patched path always runs too, so CI without mount still covers every case. Each command
must either work or exit 2 with one `error:` line and no traceback, leave every file it found
as it was, and a later `--resume` with space again must end exactly like a straight run.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_driver import fill  # noqa: E402
from test_fault_injection import (  # noqa: E402,F401  (fixtures: corpus, references, server)
    REPO, SEED, assert_same, check_after_kill, check_like_reference, corpus, method_state,
    references, server, snapshot, stable, strict_json_lines, try_mount, umount)


@pytest.fixture(params=["tmpfs", "patched"])
def disk(request, tmp_path):
    """A folder on its own small filesystem: ("tmpfs", path) when mount works here, else
    ("patched", path) on the ordinary disk, where faults are patched into the child."""
    point = tmp_path / "mnt"
    mounted = request.param == "tmpfs" and try_mount(point, "size=8m")
    point.mkdir(exist_ok=True)
    if request.param == "tmpfs" and not mounted:
        print(f"\nFAULT {request.node.name}: mount unavailable, patched OSError instead")
    yield ("tmpfs" if mounted else "patched"), point
    if mounted:
        umount(point)


def no_temporaries(folder: Path) -> None:
    stray = [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert not stray, stray


@pytest.mark.parametrize("where", ["start", "checkpoint", "metrics"])
def test_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes_exactly(
        server, references, disk, where):
    kind, point = disk
    # metrics lines must cross a 4 KiB page after the first checkpoint: a longer run
    ref = references("marginal", 24 if where == "metrics" else 6)
    run, filler = point / "run", point / "filler"
    last = ref.run / "checkpoints" / "last.pt"
    if where == "start":          # full before the first write: config.yaml, vocab.json...
        fault = {"kind": "oserror", "errno": errno.ENOSPC, "match": f"{run}/", "on": "write"}
        if kind == "tmpfs":
            fill(filler, 0)
            fault = None
    elif kind == "tmpfs" and where == "checkpoint":
        fault = {"kind": "fill_disk", "after_save": 1, "free": last.stat().st_size // 2,
                 "filler": str(filler)}
    elif kind == "tmpfs":
        fault = {"kind": "fill_disk", "after_save": 1, "at_log_crossing": True,
                 "filler": str(filler)}
    else:
        match = str(run / "checkpoints") if where == "checkpoint" else "metrics.jsonl"
        fault = {"kind": "oserror", "errno": errno.ENOSPC, "match": match, "on": "write",
                 "after_save": 1}
    result = server.run(ref.argv(run), fault=fault)
    line = result.one_line_error("no space left")
    assert ("checkpoints" in line) == (where == "checkpoint"), line
    check_after_kill(run)
    no_temporaries(run)
    filler.unlink(missing_ok=True)
    if where == "start":          # no checkpoint yet: the same command again
        assert not (run / "checkpoints" / "last.pt").exists()
        server.run(ref.argv(run)).ok()
        check_like_reference(run, ref)
        return print(f"\nFAULT full disk [{kind}, {where}]: {line}")
    step = method_state(run / "checkpoints" / "last.pt")["step"]      # intact and loadable
    assert step == 3 if where == "checkpoint" or kind == "patched" else step % 3 == 0 < step
    server.run(ref.argv(run, "--resume")).ok()
    check_like_reference(run, ref)
    print(f"\nFAULT full disk [{kind}, {where}]: {line}")


def run_copy(ref, folder: Path) -> Path:
    run = folder / "run"
    shutil.copytree(ref.run, run)
    return run


def test_full_disk_while_writing_parses_or_a_report_keeps_the_old_file(
        server, references, corpus, disk, tmp_path):
    kind, point = disk
    ref = references("marginal")
    words = json.loads((ref.run / "vocab.json").read_text())["tokens"][1:9]
    text = tmp_path / "many.txt"
    text.write_text("".join(" ".join(words) + "\n" for _ in range(300)))
    old_parses, old_report = point / "parses.txt", point / "report.json"
    old_parses.write_text("(old parses)\n")
    old_report.write_text('{"old": true}\n')
    before = snapshot(point)
    commands = {"parses.txt": ["parse", ref.run, "--input", text, "--out", old_parses,
                               "--device", "cpu"],
                "report.json": ["evaluate", ref.run, "--data", corpus, "--json", old_report,
                                "--device", "cpu"]}
    failures = []
    for name, argv in commands.items():
        # a real full tmpfs catches the parses (45 kB); the report (1 kB) would fit in the page
        # an in-place truncation frees, so it is always patched: every write under the folder
        # (the output or its temporary sibling) opens, then fails
        if kind == "tmpfs" and name == "parses.txt":
            fill(point / "filler", 0)
            result = server.run(argv)
            (point / "filler").unlink()
        else:
            result = server.run(argv, fault={"kind": "oserror", "errno": errno.ENOSPC,
                                             "match": f"{point}/", "on": "write"})
        try:
            line = result.one_line_error("no space left")
            assert snapshot(point) == before, f"{name} changed"
            print(f"\nFAULT full disk [{kind}] {argv[0]} over an old {name}: {line}")
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, failures


@pytest.fixture(params=["tmpfs", "patched"])
def read_only(request, server, references, corpus, tmp_path):
    """A run, a corpus, parses and a report on a read-only filesystem (or patched EROFS)."""
    point = tmp_path / "ro"
    mounted = request.param == "tmpfs" and try_mount(point, "size=8m")
    point.mkdir(exist_ok=True)
    run = run_copy(references("marginal"), point)
    shutil.copytree(corpus, point / "data")
    (point / "parses.txt").write_text("(old parses)\n")
    (point / "report.json").write_text('{"old": true}\n')
    fault = None
    if mounted:
        assert subprocess.run(["mount", "-o", "remount,ro", str(point)]).returncode == 0
    else:
        if request.param == "tmpfs":
            print(f"\nFAULT {request.node.name}: mount unavailable, patched EROFS instead")
        fault = {"kind": "oserror", "errno": errno.EROFS, "match": str(point), "on": "open"}
    yield point, run, fault, "tmpfs" if mounted else "patched"
    if mounted:
        umount(point)


def test_read_only_output_refuses_every_command_and_changes_nothing(
        server, references, corpus, read_only):
    point, run, fault, kind = read_only
    ref = references("marginal")
    before = snapshot(point)
    commands = [
        ref.argv(point / "new-run"),
        ref.argv(run, "--resume", "--set", "train.steps=9"),
        ["prepare", "synthetic", "--out", point / "new-data", "--num-sentences", "30"],
        ["prepare", "synthetic", "--out", point / "data", "--num-sentences", "30"],
        ["parse", run, "--input", corpus, "--out", point / "parses.txt", "--device", "cpu"],
        ["parse", run, "--input", corpus, "--out", point / "new.txt", "--device", "cpu"],
        ["evaluate", run, "--data", corpus, "--json", point / "report.json", "--device", "cpu"],
        ["evaluate", "--data", corpus, "--baseline", "right", "--json", point / "new.json"],
    ]
    failures = []
    for argv in commands:
        result = server.run(argv, fault=fault)
        try:
            result.one_line_error("read-only")
            assert snapshot(point) == before, "files changed"
            assert not (point / "new-run").exists() and not (point / "new-data").exists()
        except AssertionError as exc:
            failures.append(f"{' '.join(map(str, argv[:2]))}: {exc}")
    print(f"\nFAULT read-only [{kind}]: {len(commands)} commands, {len(failures)} failed")
    assert not failures, "\n".join(failures)


def test_plain_process_sigkill_after_a_random_delay(server, references, tmp_path):
    """A plain `python -m gfnem_cli` process (no fork server, nothing patched), killed at a
    random moment once training has begun, resumes to the same state as a straight run."""
    ref = references("marginal")
    rng = random.Random(SEED)
    run, straight = tmp_path / "plain", tmp_path / "straight"
    every = ["--set", "train.checkpoint_every=7"]
    command = [sys.executable, "-m", "gfnem_cli", *map(str, ref.argv(run)),
               "--set", "train.steps=5000", *every]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # 2 shared cores
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.1, 0.8))
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    check_after_kill(run)
    last = run / "checkpoints" / "last.pt"
    step = method_state(last)["step"] if last.exists() else 0
    target = ["--set", f"train.steps={step + 3}", *every]
    server.run(ref.argv(run, "--resume", *target)).ok()
    server.run(ref.argv(straight, *target)).ok()
    assert_same(method_state(last), method_state(straight / "checkpoints" / "last.pt"))
    lines = strict_json_lines(run / "metrics.jsonl")
    assert [x["step"] for x in lines if x["kind"] == "train"] == list(range(1, step + 4))
    assert [stable(x) for x in lines] == [stable(x) for x in
                                          strict_json_lines(straight / "metrics.jsonl")]
    no_temporaries(run)
    print(f"\nFAULT plain-process sigkill: killed past checkpoint step {step}, resumed to "
          f"{step + 3}")


PREPARE = ["prepare", "synthetic", "--num-sentences", "40", "--max-length", "6", "--out"]
# the two-rename swap prepare uses where the atomic exchange (renameat2) is not available
TWO_RENAMES = {"kind": "stub", "target": "gfnem_cli.engine.prepared:_exchange",
               "returns": False}


@pytest.mark.parametrize("swap", ["exchange", "two-renames"])
def test_prepare_killed_while_replacing_a_corpus_leaves_a_corpus(server, tmp_path, swap):
    """`prepare --out` over an existing corpus, SIGKILLed at each rename / removal / save of
    its swap: the folder must still hold a whole corpus, the old one or the new one (with the
    two-rename swap, a kill between the renames may instead leave a one-line error saying
    where the old corpus was left); preparing again then works and removes every hidden
    folder the killed runs left."""
    out = tmp_path / "data"
    server.run([*PREPARE, out]).ok()
    points, explained = [], 0
    targets = [("shutil:rmtree", "before"), ("datasets:DatasetDict.save_to_disk", "after")]
    if swap == "two-renames":
        targets.insert(0, ("os:rename", "after"))
    for target, phase in targets:
        for call in range(1, 8):
            fault = [{"kind": "kill_in", "target": target, "call": call, "phase": phase}]
            fault += [TWO_RENAMES] if swap == "two-renames" else []
            result = server.run([*PREPARE, out, "--seed", str(call)], fault=fault)
            if not result.killed:
                result.ok()
                break
            points.append(f"{target}#{call}")
            check = server.run(["evaluate", "--data", out, "--baseline", "right"])
            if swap == "exchange" or check.code == 0:
                check.ok()
            else:
                check.one_line_error()
                explained += 1
    server.run([*PREPARE, out]).ok()
    server.run(["evaluate", "--data", out, "--baseline", "right"]).ok()
    stray = sorted(p.name for p in tmp_path.iterdir() if p.name != "data")
    assert not stray, stray
    print(f"\nFAULT prepare killed [{swap}]: {len(points)} kill points {points}, {explained} "
          "left a one-line error instead of a corpus")


@pytest.mark.parametrize("method", ["marginal", "gfnem"])
def test_sigterm_or_ctrl_c_at_random_moments_stops_politely_then_resumes_exactly(
        server, references, tmp_path, method):
    """SIGTERM or SIGINT at a random moment: the step finishes, a checkpoint is written, exit
    130 with the step in the message; a second Ctrl-C right after aborts at once (exit 130,
    wherever it lands, nothing torn). `--resume` then ends like the straight run."""
    import re

    ref = references(method, 24 if method == "marginal" else 6)     # ~ the same length
    rng = random.Random(f"{SEED}-signals-{method}")
    moments = [rng.uniform(0.35, 0.95) * ref.wall for _ in range(4)]
    cases = [[[moments[0], signal.SIGTERM]],
             [[moments[1], signal.SIGINT], [moments[1] + rng.uniform(0.001, 0.05),
                                            signal.SIGINT]],
             [[moments[2], signal.SIGINT]],
             [[moments[3], signal.SIGTERM], [moments[3] + 0.01, signal.SIGTERM]]]
    cases = cases if method == "marginal" else cases[:2]               # CI time
    outcomes = []
    for number, case in enumerate(cases):
        run = tmp_path / f"run{number}"
        result = server.run(ref.argv(run), signals=case)
        assert "Traceback" not in result.stderr + result.stdout, result
        if result.signal == signal.SIGTERM:       # before the trainer took the signal over
            outcomes.append("terminated during startup")
        elif result.code == 0:
            outcomes.append("finished first")
        else:
            assert result.code == 130, result
            stopped = re.search(r"interrupted at step (\d+)", result.stderr)
            if len(case) == 1:
                assert stopped, result
            if stopped:
                assert method_state(run / "checkpoints" / "last.pt")["step"] == int(
                    stopped.group(1))
            outcomes.append(f"stopped at step {stopped.group(1)}" if stopped else "aborted")
        check_after_kill(run)
        if outcomes[-1].startswith("stopped"):  # a polite stop never leaves a temporary file
            no_temporaries(run)                  # (an abort inside a write may leave one)
        extra = ["--resume"] if (run / "config.yaml").exists() else []
        server.run(ref.argv(run, *extra)).ok()
        check_like_reference(run, ref)
    print(f"\nFAULT signals [{method}]: {len(cases)} cases: {outcomes}")


def test_ctrl_c_abort_inside_a_temporary_file_creation_leaves_nothing(server, references,
                                                                      tmp_path):
    ref = references("marginal")
    left = {}
    for call in (1, 2, 9):       # the --out probe, config.yaml's temporary, a checkpoint's
        folder = tmp_path / f"case{call}"
        folder.mkdir()
        fault = {"kind": "kill_in", "target": "gfnem_cli.engine.files:create_exclusive", "call": call,
                 "phase": "interrupt_after"}
        result = server.run(ref.argv(folder / "run"), fault=fault)
        assert result.code == 130 and "Traceback" not in result.stderr, result
        stray = [str(p.relative_to(folder)) for p in folder.rglob(".*") if p.is_file()]
        if stray:
            left[call] = stray
    assert not left, left
