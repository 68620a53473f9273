"""Data parallelism under torchrun (engine/distributed.py), on CPU with gloo.

Two ranks with a global batch of 2B (B rows each) must end where one process with batch 2B
ends: exactly, up to float rounding, for the deterministic methods (exact marginal likelihood,
VQ-VAE), and a resume may change the world size. The stochastic methods do too with
`train.row_noise: true` (each row's draws keyed by the row, engine/row_noise.py); without it
each rank draws its own noise, so the check is that the ranks never diverge (the engine
compares every rank's method state at each checkpoint and stops on a difference;
`first_divergence` is tested to find one) and that the M-step gate decided the same on every
rank.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gfnem_cli.engine import distributed

REPO = Path(__file__).resolve().parents[2]
GRAMMAR = ["--set", "train.batch_size=8", "--set", "model.nonterminals=4",
           "--set", "model.preterminals=5", "--set", "model.symbol_dim=16",
           "--set", "sampler.d_model=16", "--set", "sampler.num_layers=1",
           "--set", "sampler.num_heads=2", "--set", "em.valid_samples=4",
           "--set", "train.eval_every=3", "--set", "train.checkpoint_every=1"]
IMAGES = ["--set", "model.channels=8", "--set", "sampler.channels=8",
          "--set", "train.batch_size=8", "--set", "data.max_valid_images=8",
          "--set", "em.valid_samples=2", "--set", "train.eval_batch_size=8",
          "--set", "baseline.encoder_channels=8", "--set", "train.eval_every=2",
          "--set", "train.checkpoint_every=1"]


@given(count=st.integers(1, 64), size=st.integers(1, 8))
def test_shards_cover_the_batch_once_with_weights_that_sum_to_one(count, size):
    rows, weights = [], []
    for rank in range(size):
        mine, weight = distributed.shard_rows(count, rank, size)
        assert mine and (weight > 0 or mine == [0])
        if weight > 0:
            rows += mine
            assert weight == len(mine) / count
        weights.append(weight)
    assert rows == list(range(count))
    assert sum(weights) == pytest.approx(1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gfnem(*args, ranks: int = 1, check: bool = True, device: str = "cpu"
          ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                 "--master-addr=127.0.0.1", f"--master-port={free_port()}"] if ranks > 1
                else [sys.executable])
    done = subprocess.run([*launcher, "-m", "gfnem_cli", *map(str, args), "-q",
                           "--device", device] if args[0] == "train" else
                          [*launcher, "-m", "gfnem_cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done



def test_an_error_on_a_rank_other_than_0_is_heard_and_names_the_rank(tmp_path):
    """torchrun stops every rank once one exits, so a rank's error may be the only one said
    (CI once saw rank 1 refuse first and rank 0 stopped before its line): each rank says it."""
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "1"}
    for rank, prefix in (("1", "rank 1: "), ("0", "")):
        env["RANK"] = rank
        done = subprocess.run([sys.executable, "-m", "gfnem_cli", "parse", str(tmp_path / "none"),
                               "--input", str(tmp_path), "--out", str(tmp_path / "out.txt")],
                              capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: {prefix}"), lines[0]
        assert not (tmp_path / "out.txt").exists()

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    gfnem("prepare", "synthetic", "--out", root / "corpus", "--num-sentences", 120,
          "--max-length", 10)
    gfnem("prepare", "shapes", "--out", root / "shapes", "--train", 30, "--valid", 8,
          "--test", 8, "--seed", 3)
    return {"corpus": root / "corpus", "shapes": root / "shapes"}


def tensors(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["method"]
    modules = state["modules"] if "modules" in state else {"model": state["model"]}
    return {f"{m}.{k}": v for m, sd in modules.items() for k, v in sd.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point()}


def assert_close(a: Path, b: Path, shift_invariant: tuple[str, ...] = ()) -> None:
    """Every float tensor of the two runs' last checkpoints equal within rounding. A name in
    `shift_invariant` is a bias whose gradient is zero by a softmax's shift invariance (the
    position logits' bias, an attention layer's key bias: its middle third): Adam turns the
    rounding noise of a zero gradient into steps of ±lr, so those entries are left out."""
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        x, y = ta[key], tb[key]
        if any(key.endswith(name) for name in shift_invariant):
            if key.endswith("in_proj_bias"):
                third = x.shape[0] // 3
                x, y = torch.cat([x[:third], x[2 * third:]]), torch.cat([y[:third], y[2 * third:]])
            else:
                continue
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=key)


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_exact_marginal_two_ranks_equal_one_process_and_resume_across_world_sizes(
        data, tmp_path):
    recipe = REPO / "recipes" / "synthetic-npcfg.yaml"
    common = ["--set", f"data.path={data['corpus']}", *GRAMMAR]
    one, two, mixed = tmp_path / "one", tmp_path / "two", tmp_path / "mixed"
    gfnem("train", recipe, "--out", one, *common, "--set", "train.steps=6")
    gfnem("train", recipe, "--out", two, *common, "--set", "train.steps=6", ranks=2)
    assert_close(one, two)
    assert [r["step"] for r in records(two, "train")] == list(range(1, 7))   # rank 0 alone
    for a, b in zip(records(one, "train"), records(two, "train")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)               # global figures
    info = json.loads((two / "run_info.json").read_text())
    assert info["started"]["world_size"] == 2
    # two ranks for 3 steps, then one process to 6: the straight run's parameters
    gfnem("train", recipe, "--out", mixed, *common, "--set", "train.steps=3", ranks=2)
    gfnem("train", recipe, "--out", mixed, *common, "--set", "train.steps=6", "--resume")
    assert_close(one, mixed)


def test_vqvae_two_ranks_equal_one_process(data, tmp_path):
    recipe = REPO / "recipes" / "shapes-gumbel.yaml"
    common = ["--set", "method=vqvae", "--set", f"data.path={data['shapes']}", *IMAGES,
              "--set", "train.steps=4"]
    gfnem("train", recipe, "--out", tmp_path / "one", *common)
    gfnem("train", recipe, "--out", tmp_path / "two", *common, ranks=2)
    assert_close(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("family", ["grammar", "images"])
def test_gfnem_ranks_never_diverge_and_gate_alike(data, tmp_path, family):
    if family == "grammar":
        recipe, common = REPO / "recipes" / "synthetic-npcfg-gfnem.yaml", [
            "--set", f"data.path={data['corpus']}", *GRAMMAR, "--set", "train.steps=6",
            "--set", "em.threshold_max=40", "--set", "em.threshold_min=40"]
    else:
        recipe, common = REPO / "recipes" / "shapes-dvae-gfnem.yaml", [
            "--set", f"data.path={data['shapes']}", *IMAGES, "--set", "train.steps=4"]
    run = tmp_path / "two"
    # every step ends in a checkpoint, where each rank's whole method state (parameters,
    # optimizer moments, EM counters and moving average) must equal rank 0's
    gfnem("train", recipe, "--out", run, *common, ranks=2)
    steps = records(run, "train")
    assert len(steps) == len(set(r["step"] for r in steps))
    report = json.loads((run / "report.json").read_text())
    assert report["model_updates"] == sum(int(r.get("mstep", 1)) for r in steps)


@pytest.mark.parametrize("family", ["grammar", "images", "gumbel"])
def test_row_noise_makes_stochastic_methods_two_ranks_equal_one_process(data, tmp_path, family):
    noise = ["--set", "train.row_noise=true"]
    if family == "grammar":       # an M-step every step, two local-search rounds, k ~ U{1, 2}
        recipe, common = REPO / "recipes" / "synthetic-npcfg-gfnem.yaml", [
            "--set", f"data.path={data['corpus']}", *GRAMMAR, "--set", "train.steps=6",
            "--set", "em.threshold_max=1e9", "--set", "em.threshold_min=1e9",
            "--set", "sampler.local_search_rounds=2", "--set", "sampler.local_search_steps=2",
            "--set", "sampler.local_search_k=uniform"]
    else:
        recipe = REPO / "recipes" / ("shapes-dvae-gfnem.yaml" if family == "images"
                                     else "shapes-gumbel.yaml")
        common = ["--set", f"data.path={data['shapes']}", *IMAGES, "--set", "train.steps=4"]
    gfnem("train", recipe, "--out", tmp_path / "one", *common, *noise)
    gfnem("train", recipe, "--out", tmp_path / "two", *common, *noise, ranks=2)
    assert_close(tmp_path / "one", tmp_path / "two",
                 shift_invariant=("heads.position.bias", "self_attn.in_proj_bias"))
    for a, b in zip(records(tmp_path / "one", "train"), records(tmp_path / "two", "train")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    if family == "grammar":       # two ranks for 3 steps, one process to the end: the same
        half = ["train.steps=3" if arg == "train.steps=6" else arg for arg in common]
        gfnem("train", recipe, "--out", tmp_path / "mixed", *half, *noise, ranks=2)
        gfnem("train", recipe, "--out", tmp_path / "mixed", *common, *noise, "--resume")
        assert_close(tmp_path / "one", tmp_path / "mixed",
                     shift_invariant=("heads.position.bias", "self_attn.in_proj_bias"))
    # without row noise the two runs differ: the test can tell
    gfnem("train", recipe, "--out", tmp_path / "own", *common, ranks=2)
    with pytest.raises(AssertionError):
        assert_close(tmp_path / "one", tmp_path / "own",
                     shift_invariant=("heads.position.bias", "self_attn.in_proj_bias"))


def leave_gloo() -> None:
    """End a spawned gloo rank as `app.main` ends a torchrun rank: after a barrier, without
    the interpreter's teardown, where gloo's threads can abort the process (SIGABRT was seen
    once in a full run, under load)."""
    import torch.distributed as dist

    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _diverging(rank: int, size: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    distributed._world = distributed.World(rank, size)
    state = {"model": {"w": torch.ones(3)}, "em": {"model_updates": 2},
             "generator": torch.tensor([rank])}            # generators may differ
    same = distributed.first_divergence(state)
    state["model"]["w"][1] += 1e-7 * rank                  # one ulp-sized step on rank 1
    found = distributed.first_divergence(state)
    if rank == 0:
        Path(out).write_text(json.dumps([same, found]))
    leave_gloo()


def test_first_divergence_names_the_entry_that_differs(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "found.json"
    mp.spawn(_diverging, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2)
    same, found = json.loads(out.read_text())
    assert same is None
    assert found == "model.w.sum (rank 1)"


def test_sigterm_under_torchrun_checkpoints_once_and_resumes_exactly(data, tmp_path):
    import signal
    import time

    recipe = REPO / "recipes" / "synthetic-npcfg.yaml"
    common = ["--set", f"data.path={data['corpus']}", *GRAMMAR, "--set", "train.eval_every=500",
              "--set", "train.checkpoint_every=500"]
    run = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                            "--master-addr=127.0.0.1", f"--master-port={free_port()}",
                            "-m", "gfnem_cli", "train", str(recipe), "--out", str(run),
                            *common, "--set", "train.steps=5000", "-q", "--device", "cpu"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           cwd=REPO)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists()
                                      or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)          # torchrun forwards it to every rank
    _, err = job.communicate(timeout=120)
    assert "interrupted at step" in err and err.count("interrupted at step") == 1, err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    stopped = state["step"]
    assert [r["step"] for r in records(run, "train")] == list(range(1, stopped + 1))
    gfnem("train", recipe, "--out", run, *common, "--set", f"train.steps={stopped + 3}",
          "--resume")
    straight = tmp_path / "straight"
    gfnem("train", recipe, "--out", straight, *common, "--set", f"train.steps={stopped + 3}")
    assert_close(straight, run)


def _nan_on_one_rank(rank: int, size: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from gfnem_cli.engine.optimizer_step import NonFiniteLoss, checked_step

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    distributed._world = distributed.World(rank, size)
    distributed._rows, distributed._total = 1, 2
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w], lr=0.1)
    outcomes = []
    for bad in (False, True):                 # a finite step, then rank 1's loss is NaN
        loss = (w * (float("nan") if bad and rank == 1 else 1.0)).sum()
        try:
            checked_step(loss, optimizer, [w], 1.0)
            outcomes.append(w.detach().tolist())
        except NonFiniteLoss:
            outcomes.append("skipped")
    Path(f"{out}.{rank}").write_text(json.dumps(outcomes))
    leave_gloo()


def test_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "outcome"
    mp.spawn(_nan_on_one_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)),
             nprocs=2)
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    assert ranks[0][1] == "skipped"
    assert ranks[0][0] == pytest.approx([1 - 0.1 / 2 ** 0.5] * 2)   # clipped to norm 1


def test_image_nll_under_torchrun_is_the_one_process_figure(data, tmp_path):
    run = tmp_path / "run"
    gfnem("train", REPO / "recipes" / "shapes-dvae-gfnem.yaml", "--out", run,
          "--set", f"data.path={data['shapes']}", *IMAGES, "--set", "train.steps=2")
    figures = {}
    for ranks in (1, 2):
        out = tmp_path / f"nll{ranks}.json"
        done = gfnem("evaluate", run, "--data", data["shapes"], "--samples", 20,
                     "--batch-size", 3, "--device", "cpu", "--json", out, ranks=ranks)
        reports = [line for line in done.stdout.splitlines() if line.startswith("NLL ")]
        assert len(reports) == 1, done.stdout                      # rank 0 alone reports
        figures[ranks] = json.loads(out.read_text())
    for key in ("nll_nats", "nll_stderr", "nll_nats_m1", "num_images"):
        assert figures[2][key] == pytest.approx(figures[1][key], rel=1e-12), key
    assert figures[1]["num_images"] == 8
    codes = []
    for ranks in (1, 2):                        # 8 images in batches of 3: ranks take 1 and 2
        out = tmp_path / f"codes{ranks}.jsonl"
        done = gfnem("parse", run, "--input", data["shapes"], "--out", out, "--samples", 3,
                     "--batch-size", 3, "--device", "cpu", ranks=ranks)
        assert done.stdout.count("wrote ") == 1, done.stdout         # rank 0 alone
        codes.append(out.read_text())
    assert codes[0] == codes[1] and codes[0].count("\n") == 8
    refused = gfnem("sample", run, "-n", 4, "--out", tmp_path / "grid.png", ranks=2,
                    check=False)
    assert refused.returncode != 0 and "runs as one process" in refused.stderr
    assert not (tmp_path / "grid.png").exists()


def test_grammar_parse_score_and_evaluate_under_torchrun_are_the_one_process_outputs(
        data, tmp_path):
    run = tmp_path / "run"
    gfnem("train", REPO / "recipes" / "synthetic-npcfg-gfnem.yaml", "--out", run,
          "--set", f"data.path={data['corpus']}", *GRAMMAR, "--set", "train.steps=2")
    for decode in ("viterbi", "sample"):        # sample: the sampler's draws, batch-seeded
        texts = []
        for ranks in (1, 2):
            out = tmp_path / f"{decode}{ranks}.txt"
            done = gfnem("parse", run, "--input", data["corpus"], "--split", "test",
                         "--out", out, "--decode", decode, "--samples", 4, "--batch-size", 3,
                         "--device", "cpu", ranks=ranks)
            assert done.stdout.count("wrote ") == 1, done.stdout         # rank 0 alone
            texts.append(out.read_text())
        assert texts[0] == texts[1] and texts[0].count("\n") == 12
    figures = []
    for ranks in (1, 2):
        out = tmp_path / f"eval{ranks}.json"
        gfnem("evaluate", run, "--data", data["corpus"], "--samples", 8, "--batch-size", 3,
              "--decode", "sample", "--device", "cpu", "--json", out, ranks=ranks)
        figures.append(json.loads(out.read_text()))
    for key in ("sentence_f1", "corpus_f1", "nll_per_token", "is_nll_per_token",
                "is_nll_std_error", "nll_sentences"):
        assert figures[1][key] == pytest.approx(figures[0][key], rel=1e-12), key
    scores = []                                 # exact log p(x) and the M = 8 bound beside it
    for ranks in (1, 2):
        out = tmp_path / f"scores{ranks}.jsonl"
        done = gfnem("score", run, "--input", data["corpus"], "--split", "test", "--out", out,
                     "--samples", 8, "--batch-size", 3, "--device", "cpu", ranks=ranks)
        assert done.stdout.count("wrote ") == 1, done.stdout
        scores.append(out.read_text())
    assert scores[0] == scores[1] and scores[0].count("\n") == 12
    rows = [json.loads(line) for line in scores[0].splitlines()]
    scored = [r for r in rows if r["log_p"] is not None]
    assert len(scored) == figures[0]["nll_sentences"]
    assert sum(r["nll"] for r in scored) / sum(r["nll_tokens"] for r in scored) == \
        pytest.approx(figures[0]["nll_per_token"], rel=1e-9)
    assert all("is_log_p" in r for r in scored)
