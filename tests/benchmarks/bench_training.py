"""Training throughput of the exact-marginal N-PCFG (sentences/s) on the PTB sample.

Kim et al. (2019)'s sizes (NT=30, T=60, embeddings 256, batch 4, training sentences of at
most 40 words), fused Adam, the same batches for both inside backends. The shared protocol
(`harness.py`): threads pinned (--threads, default 1, OpenMP/MKL variables set before torch
loads), one warm-up of two steps per backend, then --repeats (≥ 3) rounds interleaved in one
process, each round training a fresh model (seed 0) over the same --steps batches with ours
and with torch-struct's `SentCFG`; median and min of each, the ratio from medians. Skips with
a reason when the shared PTB sample is absent. Never a timed test. Our chart passes set glibc's
mmap/trim thresholds process-wide (grammars/charts/allocator.py), so every candidate runs
under them; GFNEM_MALLOC_TUNING=0 measures glibc's defaults.

    python3 tests/benchmarks/bench_training.py [--steps 10] [--repeats 3] [--threads 1]
        [--max-length 40] [--quick] [--against REV] [--json rows.jsonl]

--quick (or GFNEM_BENCH_QUICK=1): 3 steps of sentences ≤ 12 words, seconds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_thread_env(harness.threads_from_argv())
REPO = harness.REPO
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PTB = REPO.parent / "shared" / "data" / "ptb-sample"
QUICK = dict(steps=3, max_length=12)


def trainer(backend_name: str, batches, vocab_size: int):
    """A call that trains a fresh model (seed 0) over `batches`; returns the sentence count."""
    import torch
    from grammars.charts.backends import get_backend
    from grammars.models import build_grammar
    from grammars.training.exact_marginal import make_adam

    if "@" in backend_name:                   # ours at an older revision: --against REV
        from bench_inside import inside_at
        from grammars.charts.backends import InsideBackend
        old = inside_at(backend_name.split("@", 1)[1])
        backend = InsideBackend(old.log_partition, old.span_marginals, None)
    else:
        backend = get_backend(backend_name)

    def run() -> int:
        model = build_grammar("npcfg", vocab_size, seed=0)
        optimizer = make_adam(model.parameters(), 1e-3, (0.75, 0.999))
        for batch in batches:
            loss = -model.log_marginal(batch.ids, batch.lengths, backend).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            optimizer.step()
        return sum(len(b) for b in batches)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--threads", type=harness.thread_count, default=harness.default_threads(), help="every thread pool")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-torch-struct", action="store_true")
    parser.add_argument("--against", help="also train with grammars/charts/inside.py at this "
                        "git revision (before/after of a change, interleaved)")
    parser.add_argument("--json", help="append the row to this JSON-lines file")
    args = parser.parse_args(argv)
    if harness.quick_mode(args.quick):
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    threads = harness.pin_threads(args.threads)
    if not PTB.is_dir():
        print(f"skipped: the PTB sample is not at {PTB}")
        harness.emit({"bench": "training", "skipped": f"no PTB sample at {PTB}"}, args.json)
        return 0
    import warnings

    warnings.filterwarnings("ignore")
    from grammars.data.batching import BucketedSchedule
    from grammars.data.corpus import PrepareOptions, load_corpus, prepare_ptb, save_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = prepare_ptb([PTB], PrepareOptions(), split="ratio", ratios=(0.8, 0.1, 0.1))
        save_corpus(corpus, Path(tmp) / "ptb")
        loaded = load_corpus(Path(tmp) / "ptb")
        train_ids = loaded.column("train", "ids")
        vocab_size = len(loaded.vocab)
    schedule = BucketedSchedule(train_ids, 4, seed=0, max_length=args.max_length)
    batches = schedule.epoch_batches(0)[:args.steps]
    words = sum(int(b.lengths.sum()) for b in batches)
    sentences = sum(len(b) for b in batches)
    print(f"N-PCFG NT=30 T=60 V={vocab_size}, batch 4, {len(batches)} steps ({sentences} "
          f"sentences, {words} words, length ≤ {args.max_length}), threads {threads}, "
          f"{args.repeats} interleaved repeats; load {harness.load()}", flush=True)
    names = ["ours"] + ([f"ours@{args.against}"] if args.against else []) \
        + ([] if args.no_torch_struct else ["torch-struct"])
    fns = {k: trainer(k, batches, vocab_size) for k in names}
    warm = {k: trainer(k, batches[:2], vocab_size) for k in names}
    timing = harness.interleaved(fns, args.repeats, warmup=1, cores_in_use=args.threads,
                                 label="training", warm=warm)
    from grammars.charts.allocator import retain_freed_memory
    row = {"bench": "training", "steps": len(batches), "sentences": sentences, "words": words,
           "max_length": args.max_length, "vocab": vocab_size, **threads, **timing,
           "malloc_retained": retain_freed_memory()}
    for name, s in timing["stats"].items():
        row[f"{name}_sentences_per_s_median"] = sentences / s["median_s"]
        row[f"{name}_sentences_per_s_best"] = sentences / s["min_s"]
        print(f"  {name:13s} {sentences / s['median_s']:8.2f} sentences/s from the median "
              f"{s['median_s']:.2f} s (min {s['min_s']:.2f} s: {sentences / s['min_s']:.2f}/s); "
              f"samples {s['wall_s']}")
    if "torch-struct" in timing["stats"]:
        row["speedup_vs_torch_struct"] = harness.ratio(timing["stats"], "torch-struct", "ours")
        r = row["speedup_vs_torch_struct"]
        print(f"  ours / torch-struct: {r['speedup_median']:.1f}x (medians), "
              f"{r['speedup_min']:.1f}x (mins)")
    if args.against:
        row["speedup_vs_against"] = harness.ratio(timing["stats"], f"ours@{args.against}", "ours")
        r = row["speedup_vs_against"]
        print(f"  ours / ours@{args.against}: {r['speedup_median']:.2f}x (medians), "
              f"{r['speedup_min']:.2f}x (mins)")
    malloc = "retained (allocator.py)" if row["malloc_retained"] else "glibc defaults"
    print(f"  load {timing['load_before']} before, {timing['load_after']} after; malloc {malloc}")
    harness.emit(row, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
