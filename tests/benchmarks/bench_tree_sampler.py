"""Benchmark the tree GFlowNet sampler and one full GFlowNet-EM step (no timed assertions).

Measures, on CPU and on CUDA when present (or the --device given), for B sentences × N
trajectories of a fixed length (default: the paper's size, 32 × 4, 20 words, sampler d=512,
6 layers, 4 heads; N-PCFG with 30 nonterminals, 60 preterminals, symbol_dim 256, vocab 10000):

  sample      trajectories per second of `TreeSampler.sample` under no_grad
  reference   the same sampling done naively, one sentence per call (batch 1, N per input),
              under no_grad; only K = --reference-sentences of the B sentences are timed and the
              time is scaled by B/K, so the batched-vs-loop speed-up stays cheap to measure
  train step  seconds per sample (with grad) + TB loss + backward with a cheap stand-in reward:
              the sampler's cost alone
  EM step     seconds per `EMLoop.train_step` of method gfnem built as `gfnem train` builds it
              (GRAMMAR_DEFAULTS, TB, M-step at every step: threshold +inf): E-step sample with
              the real reward log p_θ(x, z) (preterminals summed out) + TB loss + backward,
              M-step draw (B × 1 trees) + log_joint + backward, and both optimizer steps

Timing follows the shared protocol (`harness.py`): threads pinned (--threads, default 1: the
OpenMP/MKL variables are set before torch loads, then intra- and inter-op threads), one
warm-up call each, then --repeats (≥ 3) rounds in which the four measurements above are
interleaved; median and min of each (rates from the median), load before/after with a
warning above the cores in use, and a `BENCH-ROW` JSON line for `run_all.py`.

`--profile` prints a torch.profiler table, `--cprofile` a cProfile summary (Python side), of one
train step and/or one EM step (`--profile-step`). In the sampler, time should sit in tensor ops
(linear / attention / their backward) and the only Python loop is over the n-1 steps, never over
sentences. GFNEM_BENCH_QUICK=1 (`run_all.py --quick`) shrinks the defaults (d=64, 2 layers,
batch 8 of 10 words, vocab 1000, symbol_dim 64) so the run takes seconds; flags still override.

    python tests/benchmarks/bench_tree_sampler.py [--device cpu] [--batch 32] [--per-input 4]
        [--length 20] [--d-model 512] [--layers 6] [--heads 4] [--repeats 3] [--threads 1]
        [--reference-sentences 8] [--profile] [--profile-step train|em|both]
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import json
import math
import os
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_thread_env(harness.threads_from_argv())
CODE = Path(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--code=")),
                 harness.REPO)).resolve()      # the checkout whose code a worker imports
sys.path.insert(0, str(CODE))

import torch  # noqa: E402

from grammars.data.batching import make_batch  # noqa: E402
from grammars.training.em_methods import build_em_method  # noqa: E402
from grammars.gflownet import TreeSampler  # noqa: E402
from grammars.recipe import GRAMMAR_DEFAULTS  # noqa: E402
from grammars.run import build_model, inside_backend  # noqa: E402

QUICK_DEFAULTS = dict(batch=8, length=10, d_model=64, layers=2, vocab=1000, symbol_dim=64,
                      repeats=3)


class ChainReward:
    """A cheap stand-in reward, so that the benchmark times the sampler alone."""

    def log_joint(self, ids, lengths, trees):
        width = (trees.spans[..., 1] - trees.spans[..., 0]).clamp(min=0).float()
        return -0.1 * width.sum(1) - 0.01 * (trees.labels.clamp(min=0).float()).sum(1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sentence_batch(args):
    """B random sentences of `length` words (ids ≥ 1: 0 is <unk>), as the trainer batches them."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, args.vocab, (args.batch, args.length), generator=g)
    return make_batch(ids.tolist(), list(range(args.batch)))


def em_loop(args, device: torch.device):
    """The gfnem `EMLoop` from the project's own builders, M-step forced at every step."""
    config = copy.deepcopy(GRAMMAR_DEFAULTS)
    config["method"] = "gfnem"
    config["model"].update(kind="npcfg", nonterminals=args.nonterminals,
                           preterminals=args.preterminals, symbol_dim=args.symbol_dim)
    config["sampler"].update(d_model=args.d_model, num_layers=args.layers, num_heads=args.heads,
                             learn_backward=args.learn_backward,
                             samples_per_input=args.per_input)
    config["objective"]["name"] = "tb"
    config["em"].update(threshold_max=math.inf, threshold_min=math.inf)
    torch.manual_seed(config["train"]["seed"])
    model = build_model(config, args.vocab).to(device)
    loop = build_em_method(config, model, [], device, inside_backend(config["inside"]))
    return loop, config["em"]["mstep_samples"]


def bench_device(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    sampler = TreeSampler(args.vocab, args.nonterminals, d_model=args.d_model,
                          num_layers=args.layers, num_heads=args.heads,
                          learn_backward=args.learn_backward).to(device)
    opt = torch.optim.Adam(sampler.parameters(), lr=1e-4)
    batch = sentence_batch(args)
    ids, lengths = batch.ids.to(device), batch.lengths.to(device)
    reward = ChainReward()
    rows = args.batch * args.per_input
    k_ref = max(1, min(args.reference_sentences, args.batch))
    loop, mstep_samples = em_loop(args, device)
    em_rows = {"estep": rows, "mstep": args.batch * mstep_samples}

    def sample_only():
        with torch.no_grad():
            sampler.sample(ids, lengths, num_per_input=args.per_input)

    def sample_one_by_one():
        with torch.no_grad():
            for b in range(k_ref):
                sampler.sample(ids[b:b + 1], lengths[b:b + 1], num_per_input=args.per_input)

    def train_step():
        tr = sampler.sample(ids, lengths, num_per_input=args.per_input, reward=reward)
        resid = tr.log_z.repeat_interleave(args.per_input) + tr.log_pf - tr.log_pb - tr.log_reward
        opt.zero_grad(set_to_none=True)
        (resid ** 2).mean().backward()
        opt.step()

    def em_step():
        metrics = loop.train_step(batch)
        if metrics["mstep"] != 1.0:    # a sanity check on the set-up, not on the timing
            raise RuntimeError("the EM step skipped its M-step despite threshold +inf")

    def synced(fn):
        def run():
            fn()
            sync(device)
        return run

    timing = harness.interleaved(
        {"sample": synced(sample_only), "reference_loop": synced(sample_one_by_one),
         "train_step": synced(train_step), "em_step": synced(em_step)},
        args.repeats, warmup=1, cores_in_use=args.threads, label=f"tree sampler {device}")
    st = timing["stats"]
    sample_s = st["sample"]["median_s"]
    loop_s = st["reference_loop"]["median_s"] * args.batch / k_ref
    train_s = st["train_step"]["median_s"]
    em_s = st["em_step"]["median_s"]
    result = {
        "bench": "tree_sampler", **harness.thread_info(), **timing,
        "device": str(device), "threads": torch.get_num_threads(),
        "quick": args.quick,
        "batch": args.batch, "per_input": args.per_input, "length": args.length,
        "d_model": args.d_model, "layers": args.layers, "heads": args.heads,
        "vocab": args.vocab, "nonterminals": args.nonterminals,
        "preterminals": args.preterminals, "symbol_dim": args.symbol_dim,
        "learn_backward": args.learn_backward,
        "sample_seconds": round(sample_s, 4),
        "trajectories_per_second": round(rows / sample_s, 1),
        "reference_loop_sentences_timed": k_ref,
        "reference_loop_sample_seconds_scaled_to_batch": round(loop_s, 4),
        "batched_speedup_vs_loop": round(loop_s / sample_s, 2),
        "batched_speedup_vs_loop_min": round(
            st["reference_loop"]["min_s"] * args.batch / k_ref / st["sample"]["min_s"], 2),
        "train_step_seconds": round(train_s, 4),
        "train_trajectories_per_second": round(rows / train_s, 1),
        "em_step_seconds": round(em_s, 4),
        "em_estep_trajectories": em_rows["estep"],
        "em_mstep_trajectories": em_rows["mstep"],
        "em_step_trajectories_per_second": round(sum(em_rows.values()) / em_s, 1),
    }
    steps = {"train": train_step, "em": em_step}
    chosen = list(steps) if args.profile_step == "both" else [args.profile_step]
    for name in chosen if args.profile else []:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            steps[name]()
            sync(device)
        key = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"=== torch.profiler: one {name} step on {device}")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    for name in chosen if args.cprofile else []:
        prof = cProfile.Profile()
        prof.enable()
        steps[name]()
        sync(device)
        prof.disable()
        print(f"=== cProfile: one {name} step on {device}")
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.rows)
    return result


def main(argv=None) -> list[dict]:
    if any(a.startswith("--code=") or a in ("--breakdown", "--worker") for a in
           (argv or sys.argv[1:])):
        import em_breakdown
        return em_breakdown.main(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", action="append", help="cpu, cuda, cuda:1 ... (repeatable; "
                   "default: cpu, plus cuda when available)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--per-input", type=int, default=4)
    p.add_argument("--length", type=int, default=20)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--nonterminals", type=int, default=30)
    p.add_argument("--preterminals", type=int, default=60, help="N-PCFG of the EM step")
    p.add_argument("--symbol-dim", type=int, default=256, help="N-PCFG of the EM step")
    p.add_argument("--learn-backward", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference-sentences", type=int, default=8,
                   help="sentences timed in the one-by-one reference loop (scaled to --batch)")
    p.add_argument("--threads", type=harness.thread_count, default=harness.default_threads(), help="every CPU thread pool")
    p.add_argument("--json", help="append the rows to this JSON-lines file")
    p.add_argument("--profile", action="store_true", help="torch.profiler table(s)")
    p.add_argument("--cprofile", action="store_true", help="cProfile summary(ies)")
    p.add_argument("--profile-step", choices=("train", "em", "both"), default="both",
                   help="what --profile / --cprofile run once: the stand-in-reward train step, "
                        "the full EM step, or both")
    p.add_argument("--rows", type=int, default=20, help="rows in the profile tables")
    quick = os.environ.get("GFNEM_BENCH_QUICK") == "1"
    if quick:
        p.set_defaults(**QUICK_DEFAULTS)
    args = p.parse_args(argv)
    args.quick = quick
    harness.pin_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    for name in devices:
        result = bench_device(args, torch.device(name))
        print(json.dumps({k: v for k, v in result.items()
                          if k not in ("stats", "load_warnings")}))
        for k, v in result["stats"].items():
            print(f"  {k:15s} median {v['median_s']:.4f} s  min {v['min_s']:.4f} s  "
                  f"samples {v['wall_s']}")
        harness.emit(result, args.json)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
