"""Training throughput of the exact-marginal N-PCFG (sentences/s) on the PTB sample.

Kim et al. (2019)'s sizes (NT=30, T=60, embeddings 256, batch 4, training sentences of at
most 40 words), fused Adam, the same batches for both inside backends, measured in the same
process: ours against torch-struct's `SentCFG`. Skips with a reason when the shared PTB
sample is absent. Never a timed test.

    python3 tests/benchmarks/bench_training.py [--steps 40] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PTB = REPO.parent / "shared" / "data" / "ptb-sample"


def throughput(backend_name: str, batches, vocab_size: int) -> tuple[float, float]:
    from grammars.training.exact_marginal import make_adam
    from grammars.charts.backends import get_backend
    from grammars.models import build_grammar

    model = build_grammar("npcfg", vocab_size, seed=0)
    backend = get_backend(backend_name)
    optimizer = make_adam(model.parameters(), 1e-3, (0.75, 0.999))
    sentences = 0
    start = time.perf_counter()
    for batch in batches:
        loss = -model.log_marginal(batch.ids, batch.lengths, backend).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        optimizer.step()
        sentences += len(batch)
    seconds = time.perf_counter() - start
    return sentences / seconds, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not PTB.is_dir():
        print(f"skipped: the PTB sample is not at {PTB}")
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
    steps = 10 if os.environ.get("GFNEM_BENCH_QUICK") else args.steps
    batches = BucketedSchedule(train_ids, 4, seed=0, max_length=40).epoch_batches(0)[:steps]
    words = sum(int(b.lengths.sum()) for b in batches)
    print(f"N-PCFG NT=30 T=60 V={vocab_size}, batch 4, {steps} steps ({words} words), "
          f"{torch.get_num_threads()} threads")
    throughput("ours", batches[:2], vocab_size)  # warm-up
    ours, ours_s = throughput("ours", batches, vocab_size)
    print(f"  ours:         {ours:7.2f} sentences/s ({ours_s:.1f} s)")
    if os.environ.get("GFNEM_BENCH_QUICK"):
        print("  torch-struct: skipped in quick mode")
        return 0
    ref, ref_s = throughput("torch-struct", batches, vocab_size)
    print(f"  torch-struct: {ref:7.2f} sentences/s ({ref_s:.1f} s)")
    print(f"  ratio ours / torch-struct: {ours / ref:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
