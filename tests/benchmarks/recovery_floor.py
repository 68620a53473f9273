"""What the synthetic corpus allows: the likelihood a PCFG reaches when started at the truth.

The recovery study (recovery_study.py) measures how far the neural PCFG stops from the true
grammar's test NLL. This script separates the two reasons a learner can stop there:

* finite data: a grammar fitted to the 1,600 training sentences cannot match the true
  grammar on held-out sentences exactly. `start=truth` fits a plain (tabular) PCFG of the
  true grammar's size, started at the true probabilities (mixed with 2% uniform so that
  every rule can move), by exact marginal likelihood on the training split, and keeps the
  checkpoint of best validation NLL: its test NLL is what maximum likelihood on these data
  gives near the right answer, i.e. a floor no learner should be expected to beat.
* optimization (local optima): `start=random` fits the same tabular PCFG (and, with
  --sizes, larger ones) from random logits: the EM-style local optima of plain PCFGs
  (Carroll & Charniak 1992; Kim et al. 2019 §5).

Full-batch Adam on the summed log-likelihood of the training split (our inside pass,
float32); Viterbi sentence F1 against the gold trees at the selected checkpoint.

    python tests/benchmarks/recovery_floor.py --data data/synthetic [--steps 400]
        [--seeds 4] [--sizes 14x18 40x60] [--csv floor.csv]
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (pins the thread pools before torch loads, when run as a script)

REPO = harness.REPO
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def tabular_params(logits: dict, ids, lengths):
    """PCFGParams of a tabular PCFG from free logits (normalized here)."""
    import torch
    from grammars.charts.pcfg_params import PCFGParams
    NT, S = logits["rules"].shape[0], logits["rules"].shape[1]
    B = ids.shape[0]
    rules = torch.log_softmax(logits["rules"].reshape(NT, -1), -1).reshape(NT, S, S)
    emit = torch.log_softmax(logits["emissions"], -1)                        # (T, V)
    return PCFGParams(roots=torch.log_softmax(logits["roots"], -1).expand(B, -1),
                      rules=rules.expand(B, -1, -1, -1), terms=emit.t()[ids.clamp(min=0)],
                      lengths=lengths)


def split_batches(corpus, split: str, size: int = 256):
    from grammars.data.batching import in_order_batches
    ids = corpus.column(split, "ids")
    keep = [i for i, s in enumerate(ids) if len(s) >= 2]
    batches = in_order_batches([ids[i] for i in keep], size)
    spans = corpus.column(split, "gold_spans")
    return batches, [spans[i] for i in keep], [len(ids[i]) for i in keep]


def nll(logits, batches):
    """(summed -log p over sentences, tokens (words + 1 a sentence, as every NLL/token
    in gfnem)); differentiable."""
    from grammars.charts.inside import log_partition
    from grammars.evaluation.likelihood import tokens_in      # the project's per-token convention
    total, tokens = 0.0, 0
    for b in batches:
        total = total - log_partition(tabular_params(logits, b.ids, b.lengths)).sum()
        tokens += tokens_in(b.lengths)
    return total, tokens


def sentence_f1(logits, batches, gold, lengths) -> float:
    import torch
    from grammars.charts.viterbi import viterbi
    from grammars.evaluation.f1 import score_spans
    pred = [None] * len(gold)
    with torch.no_grad():
        for b in batches:           # length-sorted; b.index gives each row's place
            trees = viterbi(tabular_params(logits, b.ids, b.lengths))[1].span_lists()
            for i, spans in zip(b.index, trees):
                pred[i] = spans
    return score_spans(gold, pred, lengths).sentence_f1


def initial_logits(truth, start: str, NT: int, T: int, V: int, seed: int):
    import torch
    g = torch.Generator().manual_seed(seed)
    if start == "truth":
        def mix(p):
            p = p.double().reshape(p.shape[0], -1) if p.dim() > 1 else p.double()
            return torch.log(0.98 * p + 0.02 / p.shape[-1]).float()
        emis = truth.emission_table(torch.float64).exp()
        return {"roots": mix(truth.root_probs), "rules": mix(truth.rule_probs).reshape(
            NT, NT + T, NT + T), "emissions": mix(emis)}
    S = NT + T
    return {"roots": torch.randn(NT, generator=g), "rules": torch.randn(NT, S, S, generator=g),
            "emissions": torch.randn(T, V, generator=g)}


def fit(truth, data, start, NT, T, seed, steps, lr, eval_every):
    import torch
    torch.manual_seed(seed)
    V = len(truth.itos)
    logits = {k: v.clone().requires_grad_(True)
              for k, v in initial_logits(truth, start, NT, T, V, seed).items()}
    opt = torch.optim.Adam(logits.values(), lr=lr)
    best = (float("inf"), None, 0)
    t0 = time.process_time()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                v, vt = nll(logits, data["valid"][0])
            if float(v) / vt < best[0]:
                best = (float(v) / vt, {k: x.detach().clone() for k, x in logits.items()}, step)
            if step % (10 * eval_every) == 0:          # a timestamped line a log can show
                print(f"{time.strftime('%H:%M:%S')} {start} {NT}x{T} seed {seed} step {step}/"
                      f"{steps}: validation NLL/token {float(v) / vt:.4f} (best {best[0]:.4f} "
                      f"at step {best[2]})", flush=True)
        if step == steps:
            break
        opt.zero_grad()
        loss, tokens = nll(logits, data["train"][0])
        (loss / tokens).backward()
        opt.step()
    chosen = best[1]
    with torch.no_grad():
        t, tt = nll(chosen, data["test"][0])
        tr, trt = nll(chosen, data["train"][0])
    return {"start": start, "size": f"{NT}x{T}", "seed": seed, "steps": steps,
            "best_step": best[2], "train_nll": float(tr) / trt, "valid_nll": best[0],
            "test_nll": float(t) / tt, "test_f1": sentence_f1(chosen, *data["test"]),
            "cpu_s": round(time.process_time() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a synthetic corpus (gfnem prepare synthetic)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--sizes", nargs="*", default=[], help="extra NTxT sizes from random logits")
    p.add_argument("--threads", type=harness.thread_count, default=harness.default_threads(),
                   help="every thread pool (default 1)")
    p.add_argument("--csv", help="write the rows here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.seeds < 1 or args.eval_every < 1 or not 0 < args.lr < float("inf"):
        p.error("--steps, --seeds and --eval-every must be >= 1 and --lr a finite number > 0")
    if args.csv and not Path(args.csv).resolve().parent.is_dir():
        p.error(f"--csv {args.csv}: its folder does not exist (the rows are written there)")
    sizes = []
    for s in args.sizes:
        try:
            a, b = (int(x) for x in s.lower().split("x"))
        except ValueError:
            p.error(f"--sizes: {s!r} is not NTxT (e.g. 40x60)")
        if a < 1 or b < 1:
            p.error(f"--sizes: {s!r} needs at least one nonterminal and one preterminal")
        sizes.append((a, b))
    import torch
    torch.set_num_threads(args.threads)     # as a script, harness.pin_threads set the rest
    from gfnem_cli.engine.errors import GfnemError
    from grammars.data.corpus_disk import load_corpus
    from grammars.data.true_grammar import TrueGrammar
    from grammars.evaluation.likelihood import true_grammar_likelihood
    try:
        corpus = load_corpus(Path(args.data))
    except GfnemError as exc:
        p.error(str(exc))
    gfile = Path(args.data) / "grammar.json"
    if not gfile.is_file():
        p.error(f"{gfile}: not a synthetic corpus (no grammar.json)")
    truth = TrueGrammar.from_json(json.loads(gfile.read_text()), corpus.vocab.tokens)
    data = {s: split_batches(corpus, s) for s in ("train", "valid", "test")}
    for name, (batches, _, _) in data.items():
        if not batches:
            p.error(f"{args.data}: the {name} split has no sentence of 2+ words (prepare the "
                    "corpus with --ratios that give every split sentences)")
    true_test = true_grammar_likelihood(Path(args.data), corpus.vocab.tokens,
                                        corpus.column("test", "ids"))["true_nll_per_token"]
    print(f"true grammar test NLL/token {true_test:.4f}", flush=True)
    NT, T = truth.num_nonterminals, truth.num_preterminals
    runs = [("truth", NT, T, 0)] + [("random", NT, T, s) for s in range(args.seeds)] + \
        [("random", a, b, s) for a, b in sizes for s in range(args.seeds)]
    rows = []
    for start, a, b, seed in runs:
        row = fit(truth, data, start, a, b, seed, args.steps, args.lr, args.eval_every)
        row["test_gap_pct"] = 100 * (row["test_nll"] / true_test - 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.csv:                    # rewritten after every fit: a stopped study keeps its rows
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    for key in sorted({(r["start"], r["size"]) for r in rows}):
        sel = [r for r in rows if (r["start"], r["size"]) == key]
        gaps, f1s = [r["test_gap_pct"] for r in sel], [r["test_f1"] for r in sel]
        sd = (lambda x: statistics.stdev(x) if len(x) > 1 else 0.0)
        print(f"{key[0]:6s} {key[1]:6s} runs {len(sel)}  test gap {statistics.mean(gaps):.2f} "
              f"± {sd(gaps):.2f}%  sentence F1 {statistics.mean(f1s):.2f} ± {sd(f1s):.2f}")
    return 0


if __name__ == "__main__":
    harness.pin_threads(harness.threads_from_argv())
    sys.exit(main())
