"""The benchmarks' quick paths end to end (`run_all.py --quick`), and the shared timing
protocol (`tests/benchmarks/harness.py`). Nothing here asserts on a time: timed assertions
do not belong in tests; these check that the protocol is followed and recorded."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tests" / "benchmarks"
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402


def test_interleaved_rotates_and_records_median_min_and_load(capsys):
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    out = harness.interleaved(fns, repeats=3, warmup=1, cores_in_use=10 ** 6)
    assert calls[:3] == ["a", "b", "c"]                       # one warm-up each
    assert calls[3:] == list("abc") + list("bca") + list("cab")  # rotated rounds
    for s in out["stats"].values():
        assert len(s["wall_s"]) == 3 and s["min_s"] <= s["median_s"]
    assert len(out["load_before"]) == 3 and len(out["load_after"]) == 3
    assert out["load_warnings"] == [] and "WARNING" not in capsys.readouterr().out
    with pytest.raises(ValueError):
        harness.interleaved(fns, repeats=2)


def test_a_fast_candidate_is_repeated_within_its_turn_and_ratios_are_paired():
    """min_round_s: a 5 ms candidate is called until its turn lasts 30 ms, a 40 ms one once;
    the paired speed-up is the median of the per-round ratios of the recorded samples."""
    import statistics
    import time
    fns = {"fast": lambda: time.sleep(0.005), "slow": lambda: time.sleep(0.04)}
    out = harness.interleaved(fns, repeats=3, warmup=0, cores_in_use=10 ** 6, min_round_s=0.03)
    fast, slow = out["stats"]["fast"], out["stats"]["slow"]
    assert all(c >= 2 for c in fast["calls_per_round"]) and slow["calls_per_round"] == [1] * 3
    assert len(fast["wall_s"]) == len(fast["cpu_s"]) == 3 and out["min_round_s"] == 0.03
    r = harness.ratio(out["stats"], "slow", "fast")
    want = statistics.median(a / b for a, b in zip(slow["wall_s"], fast["wall_s"]))
    assert abs(r["speedup_paired"] - want) < 1e-9 and r["speedup_paired"] > 1
    with pytest.raises(ValueError):
        harness.interleaved(fns, repeats=3, min_round_s=-1)


def test_load_warning_is_printed_above_the_cores_in_use(capsys):
    assert harness.load_warning([3.5, 1.0, 1.0], 2, "before x")
    assert "WARNING: load average 3.50 before x" in capsys.readouterr().out
    assert harness.load_warning([1.5, 9.0, 9.0], 2, "before x") is None


def test_worker_env_pins_every_thread_pool():
    env = harness.worker_env(1, base={"OMP_NUM_THREADS": "8"})
    assert all(env[k] == "1" for k in harness.THREAD_VARS)


def test_quick_benchmarks_end_to_end(tmp_path):
    """inside, training, tree sampler and images in quick mode through run_all.py: exit 0, one
    results file with the machine, commit, load, pinned threads and interleaved timings of
    every candidate (ours and each reference)."""
    done = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "inside",
                           "training", "tree_sampler", "images", "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = tmp_path.glob("*cores-*.json")
    record = json.loads(path.read_text())
    assert record["machine"]["cpu_count"] >= 1 and record["machine"]["torch"]
    assert record["machine"]["commit"] in path.name
    assert len(record["load_before"]) == 3 and len(record["load_after"]) == 3
    assert [b["exit"] for b in record["benchmarks"]] == [0, 0, 0, 0]
    rows = {r["bench"]: r for r in record["rows"]}
    inside = rows["inside"]
    assert set(inside["stats"]) == {"ours", "torch-struct", "matmul2048"}
    assert inside["intra_op_threads"] == inside["inter_op_threads"] == 1
    assert inside["omp_num_threads"] == inside["mkl_num_threads"] == "1"
    assert inside["speedup_vs_torch_struct"]["speedup_median"] > 0
    assert all(len(s["wall_s"]) >= 3 for s in inside["stats"].values())
    if not rows["training"].get("skipped"):
        assert set(rows["training"]["stats"]) == {"ours", "torch-struct"}
    assert set(rows["tree_sampler"]["stats"]) == {"sample", "reference_loop", "train_step",
                                                  "em_step"}
    assert rows["tree_sampler"]["intra_op_threads"] == 1
    images = [r for r in record["rows"] if r["bench"] == "images"]
    assert [(r["size"], r["part"]) for r in images] == [("small", "training"), ("small", "nll")]
    assert {"gfnem-raster estep", "gfnem-raster mstep", "gfnem-any step", "vqvae step",
            "gumbel step", "reinforce step"} <= set(images[0]["stats"])
    for row in images:
        assert row["intra_op_threads"] == 1
        assert all(len(s["wall_s"]) >= 3 for s in row["stats"].values())
        assert all(f["x_reference_median"] > 0 for f in row["figures"].values()
                   if "reference" in f)


@pytest.mark.parametrize("bad", ["0", "-2", "abc", "1.5"])
def test_a_bad_thread_count_is_refused_by_argparse_not_a_traceback(bad):
    """threads_from_argv leaves a bad --threads to argparse, whose type refuses it (exit 2)."""
    assert harness.threads_from_argv(default=1, argv=["--threads", bad]) == 1
    assert harness.threads_from_argv(default=1, argv=[f"--threads={bad}"]) == 1
    assert harness.threads_from_argv(default=1, argv=["--threads", "3"]) == 3
    done = subprocess.run([sys.executable, str(BENCH / "bench_inside.py"), "--quick",
                           "--threads", bad], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "not a thread count" in done.stderr
    assert "Traceback" not in done.stderr
