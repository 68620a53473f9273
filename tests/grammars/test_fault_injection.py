"""Fault injection, part 1 (issue 10, DESIGN §9): SIGKILL at random moments of a training run,
and the harness the other fault-injection files share.

A real child process (see tests/fault_driver.py) trains a tiny grammar with `marginal` and with
`gfnem` and is killed with SIGKILL inside an atomic write (temp file empty, half written,
complete but not renamed, just renamed), inside a step, inside a validation, in the middle of
a metrics line, or after a random delay; some resumes are killed again. After every kill each
finished file still reads (last.pt and best.pt load), and `--resume` (a fresh start when no
config.yaml was written) must end exactly where the uninterrupted run ends: every checkpoint
tensor-equal, metrics.jsonl each step once in strict JSON, no temporary file left. Kill points
come from a fixed-seed RNG over the calls a reference run makes, so every case is reproducible
(`FAULT: ...` lines, printed with -s, count what ran).
"""
from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_gfnem_train_cli import TINY as CLI_TINY

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parents[1] / "fault_driver.py"


class ForkServer:
    """The fork server (tests/fault_driver.py): `run(argv, fault=..., kill_after=...)` runs one
    command in a fresh child and gives its `Result`."""

    def __init__(self, scratch: Path):
        self.scratch, self.count = Path(scratch), 0
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb",
               "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, str(DRIVER)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, cwd=REPO)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(self, argv, fault: dict | list | None = None, kill_after: float | None = None,
            cwd: Path | None = None, signals: list | None = None) -> "Result":
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        job = {"argv": [str(a) for a in argv], "fault": fault, "stdout": str(out),
               "stderr": str(err), "cwd": str(cwd) if cwd else None}
        if kill_after is not None:
            job["kill_after"] = kill_after
        job["signals"] = signals or []
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert not answer["hung"], f"gfnem {argv} hung for 90 s: {err.read_text()[-2000:]}"
        return Result(argv, answer["exit"], answer["signal"], answer["wall"],
                      out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Result:
    def __init__(self, argv, code, sig, wall, stdout, stderr):
        self.argv, self.code, self.signal, self.wall = argv, code, sig, wall
        self.stdout, self.stderr = stdout, stderr

    @property
    def killed(self) -> bool:
        return self.signal == signal.SIGKILL

    def __repr__(self) -> str:
        return (f"<gfnem {' '.join(map(str, self.argv))}: exit {self.code} signal {self.signal}"
                f"\nstdout: {self.stdout[-1500:]}\nstderr: {self.stderr[-3000:]}>")

    def ok(self) -> "Result":
        assert self.code == 0 and "Traceback" not in self.stderr + self.stdout, self
        return self

    def one_line_error(self, *needles: str) -> str:
        """Exit 2, no traceback, and the error is one line on stderr naming the problem."""
        assert self.code == 2, self
        text = self.stdout + self.stderr
        assert "Traceback" not in text, self
        errors = [line for line in self.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, self
        for needle in needles:
            assert needle.lower() in errors[0].lower(), (needle, self)
        return errors[0]


def strict_json_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file as strict JSON (no NaN/Infinity), or fail."""
    def reject(token):
        raise ValueError(f"non-strict JSON constant {token}")

    return [json.loads(line, parse_constant=reject) for line in
            path.read_text(encoding="utf-8").splitlines()]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path: compare before and after a refused command."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file()}


def try_mount(point: Path, options: str) -> bool:
    """Mount a tmpfs at `point` if this machine lets us (root, not in a container that
    forbids it); False otherwise, and the caller takes the patched path (forced with
    GFNEM_TEST_NO_MOUNT=1, to check what CI without mount runs)."""
    point.mkdir(parents=True, exist_ok=True)
    if os.environ.get("GFNEM_TEST_NO_MOUNT"):
        return False
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def umount(point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=20)


# the tiny GFlowNet-EM recipe of the CLI tests, with more steps and checkpoints between them
TINY = {**{k: v for k, v in copy.deepcopy(CLI_TINY).items() if k != "mcem"},
        "train": {"steps": 6, "batch_size": 4, "eval_every": 2, "checkpoint_every": 3,
                  "eval_batch_size": 8, "seed": 3}}
STEPS = TINY["train"]["steps"]
SEED = 20240610
VOLATILE = {"time", "elapsed_s", "items_per_s", "train_seconds"}


# One server, corpus and set of reference runs for the session: the three fault files import
# these fixtures, and pytest would otherwise build them once per importing module.
SHARED: dict = {}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if "server" not in SHARED:
        SHARED["server"] = ForkServer(tmp_path_factory.mktemp("fault-logs"))
    yield SHARED["server"]
    if SHARED.get("server"):
        SHARED.pop("server").close()


@pytest.fixture(scope="session")
def corpus(server, tmp_path_factory) -> Path:
    if "corpus" not in SHARED:
        out = tmp_path_factory.mktemp("fault-corpus") / "data"
        server.run(["prepare", "synthetic", "--out", out, "--num-sentences", "60",
                    "--max-length", "8"]).ok()
        SHARED["corpus"] = out
    return SHARED["corpus"]


def write_recipe(folder: Path, corpus: Path, method: str) -> Path:
    config = json.loads(json.dumps(TINY))
    config["data"]["path"], config["method"] = str(corpus), method
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def train_argv(recipe: Path, run: Path, *extra) -> list:
    return ["train", recipe, "--out", run, "-q", "--device", "cpu", *extra]


def method_state(path: Path) -> dict:
    from gfnem_cli.engine.checkpoint import load

    state = load(path)               # the product's own loader: a damaged file fails here
    return {"step": state["step"], "method": state["method"]}


def assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def stable(record, volatile=VOLATILE):
    if isinstance(record, dict):
        return {k: stable(v, volatile) for k, v in record.items() if k not in volatile}
    return record


class Reference:
    """The uninterrupted run of a method, and how many calls of each kind it makes."""

    def __init__(self, server, corpus: Path, folder: Path, method: str, steps: int = STEPS):
        self.recipe, self.steps = write_recipe(folder, corpus, method), steps
        self.extra = [] if steps == STEPS else ["--set", f"train.steps={steps}"]
        self.run = folder / "reference"
        counts = folder / "counts.json"
        result = server.run(self.argv(self.run), fault={"kind": "count", "file": str(counts)})
        self.counts = json.loads(counts.read_text())
        self.wall = max(0.3, result.ok().wall)
        self.last = method_state(self.run / "checkpoints" / "last.pt")
        self.best = method_state(self.run / "checkpoints" / "best.pt")
        self.metrics = [stable(x) for x in strict_json_lines(self.run / "metrics.jsonl")]
        self.report = json.loads((self.run / "report.json").read_text())

    def argv(self, run: Path, *more) -> list:
        return train_argv(self.recipe, run, *self.extra, *more)


@pytest.fixture(scope="session")
def references(server, corpus, tmp_path_factory):
    cache = SHARED.setdefault("references", {})

    def get(method: str, steps: int = STEPS) -> Reference:
        if (method, steps) not in cache:
            folder = tmp_path_factory.mktemp(f"{method}-{steps}")
            cache[method, steps] = Reference(server, corpus, folder, method, steps)
        return cache[method, steps]

    return get


def kill_plan(ref: Reference, rng: random.Random, draws: int) -> list[list[dict | float]]:
    """Scenarios: each a list of faults for successive runs (a float: SIGKILL after that
    many seconds); a fault-free resume always follows the last one. `draws` random points
    per kind of moment (the CI budget: 2 for marginal, 1 for the slower gfnem)."""
    n = ref.counts
    # fixed points first: inside config.yaml's write (its temporary made the folder 'not a run'
    # before 13cc88a) and inside report.json's (the resumed report lost last_train)
    plan = [[{"kind": "write_atomic", "call": 1, "phase": "half"}],
            [{"kind": "write_atomic", "call": n["write_atomic"], "phase": "start"}]]
    for phase in ("start", "half", "before_replace", "after"):
        for call in rng.sample(range(2, n["write_atomic"] + 1), draws):
            plan.append([{"kind": "write_atomic", "call": call, "phase": phase}])
    for phase in ("before", "after"):
        plan.append([{"kind": "step", "call": rng.randint(1, n["step"]), "phase": phase}])
    plan.append([{"kind": "validate", "call": rng.randint(1, n["validate"]), "phase": "before"}])
    plan.append([{"kind": "validate", "call": n["validate"], "phase": "after"}])
    for call in rng.sample(range(1, n["metrics"] + 1), draws + 1):
        plan.append([{"kind": "metrics", "call": call}])
    for _ in range(draws + 1):
        plan.append([round(rng.uniform(0.05, 1.0) * ref.wall, 3)])
    # killed again while resuming (the metrics trim, the run files, a later checkpoint)
    for _ in range(draws):
        plan.append([{"kind": "step", "call": rng.randint(2, n["step"]), "phase": "after"},
                     {"kind": "write_atomic", "call": rng.randint(1, 7),
                      "phase": rng.choice(["start", "half", "before_replace"])}])
    return plan


def check_after_kill(run: Path) -> None:
    """What a kill may leave: finished files readable, at most one torn metrics line at the
    end; never a damaged checkpoint or config."""
    ckpts = run / "checkpoints"
    for name in ("last.pt", "best.pt"):
        if (ckpts / name).exists():
            method_state(ckpts / name)
    if (run / "config.yaml").exists():
        assert isinstance(yaml.safe_load((run / "config.yaml").read_text()), dict)
    for name in ("run_info.json", "vocab.json", "corpus_manifest.json", "report.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    if (run / "metrics.jsonl").exists():
        text = (run / "metrics.jsonl").read_text(encoding="utf-8")
        lines = text.splitlines()
        complete = lines if text.endswith("\n") or not lines else lines[:-1]
        for line in complete:
            json.loads(line)


def check_like_reference(run: Path, ref: Reference) -> None:
    assert_same(method_state(run / "checkpoints" / "last.pt"), ref.last, "last.pt")
    assert_same(method_state(run / "checkpoints" / "best.pt"), ref.best, "best.pt")
    lines = [stable(x) for x in strict_json_lines(run / "metrics.jsonl")]
    assert [x["step"] for x in lines if x["kind"] == "train"] == list(range(1, ref.steps + 1))
    assert lines == ref.metrics
    assert stable(json.loads((run / "report.json").read_text())) == stable(ref.report)
    stray = [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == "scratch.line"]
    assert not stray, stray


def recover(server, ref: Reference, run: Path, refusal: bool = True) -> None:
    """What a user does after a crash: `--resume`, or start again when no run was begun
    (first checking, when `refusal`, that a plain start is refused and changes nothing)."""
    if refusal and (run / "checkpoints" / "last.pt").exists():
        before = snapshot(run)                    # a fresh start must refuse, touching nothing
        server.run(ref.argv(run)).one_line_error("already holds a run")
        assert snapshot(run) == before
    extra = ["--resume"] if (run / "config.yaml").exists() else []
    server.run(ref.argv(run, *extra)).ok()


@pytest.mark.parametrize("method", ["marginal", "gfnem"])
def test_sigkill_at_random_moments_then_resume_is_exact(server, references, tmp_path, method):
    ref = references(method)
    rng = random.Random(f"{SEED}-{method}")
    plan = kill_plan(ref, rng, 2 if method == "marginal" else 1)
    killed = completed = 0
    failures = []
    for number, scenario in enumerate(plan):
        run = tmp_path / f"run{number}"
        try:
            for k, fault in enumerate(scenario):
                resume = ["--resume"] if k and (run / "config.yaml").exists() else []
                argv = ref.argv(run, *resume)
                if isinstance(fault, float):
                    result = server.run(argv, kill_after=fault)
                else:
                    result = server.run(argv, fault=fault)
                    assert result.killed, (fault, result)
                if result.killed:
                    killed += 1
                    check_after_kill(run)
                else:
                    result.ok()
                    completed += 1
            recover(server, ref, run, refusal=number % 3 == 0)    # a third: CI time
            check_like_reference(run, ref)
        except AssertionError as exc:
            failures.append(f"scenario {number} {scenario}: {exc}")
        shutil.rmtree(run, ignore_errors=True)
    print(f"\nFAULT sigkill[{method}]: {len(plan)} scenarios, {killed} kills, "
          f"{completed} runs finished before a timed kill; calls of a run: {ref.counts}")
    assert not failures, "\n".join(failures)
    assert killed >= sum(not isinstance(f, float) for scenario in plan for f in scenario)
