"""`gfnem evaluate`: unlabeled F1 of baseline trees or a file of parses against a corpus split.

The flow is gold → predictions → `grammars.evaluation.f1.score_spans` → render. Predictions are plain
span lists, so a trained model plugs in as one more source in `predictions` (its decoded
`BinaryTrees.span_lists()`), with no change to scoring or rendering.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from gfnem_cli.commands.checks import at_least, checkpoint_name
from gfnem_cli.console import console, friendly_errors, warn, work_progress


def predictions(corpus, split: str, gold: list, words: list, baseline: Optional[str],
                pred: Optional[Path], seed: int) -> tuple[list, dict]:
    """Predicted span lists for the split and a description of how they were made."""
    from gfnem_cli.engine.errors import GfnemError

    if (baseline is None) == (pred is None):
        raise GfnemError("give exactly one of --baseline or --pred")
    lengths = [len(w) for w in words]
    if baseline is not None:
        from grammars.evaluation.baselines import baseline_spans

        spans = baseline_spans(baseline, lengths, gold, seed)
        return spans, {"decoding": f"baseline:{baseline}", "baseline": baseline,
                       "seed": seed if baseline == "random" else None}
    from grammars.data.treebank import read_predicted_spans

    spans = read_predicted_spans(pred, words, corpus.column(split, "tokens"), split,
                                 corpus.column(split, "source"), on_warning=warn)
    return spans, {"decoding": "pred-file", "pred": str(pred)}


def render_report(report, title: str) -> None:
    """The headline figures and the length-bucket table."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    for column in ("length", "sentences", "sentence F1", "corpus F1"):
        table.add_column(column, justify="left" if column == "length" else "right")
    for bucket in report.buckets:
        label = "all" if bucket.max_length is None else f"≤{bucket.max_length}"
        table.add_row(label, f"{bucket.num_sentences:,}", f"{bucket.sentence_f1:.2f}",
                      f"{bucket.corpus_f1:.2f}")
    console.print(table)
    cap = report.length_filter.get("max_length")
    console.print(f"sentence F1 {report.sentence_f1:.2f}  corpus F1 {report.corpus_f1:.2f}  "
                  f"(precision {report.precision:.2f}, recall {report.recall:.2f}) over "
                  f"{report.num_sentences:,} sentences of 2{f'–{cap}' if cap else '+'} words; "
                  f"{report.num_skipped:,} skipped", highlight=False)


@friendly_errors
def evaluate(
    run: Optional[Path] = typer.Argument(None, help="A run directory written by `gfnem train`: "
                                         "its parses are scored, and its NLL per token and "
                                         "perplexity reported. Omit it to score --baseline or "
                                         "--pred."),
    data: Path = typer.Option(..., "--data", "-d", help="A corpus directory written by "
                              "`gfnem prepare` (with gold trees)."),
    split: str = typer.Option("test", "--split", help="Which split of the corpus to score."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Score reference trees: "
                                           "right / left branching, random (uniform over "
                                           "binary trees, see --seed), or oracle (the gold "
                                           "tree binarized: the best any binary tree scores)."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="A file of predicted trees, one "
                                        "bracketed tree per line in the split's order; its "
                                        "words must be the split's words (or its tokens)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as "
                                            "JSON: sentence_f1, corpus_f1 (percent), "
                                            "num_sentences, buckets, length filter, decoding, "
                                            "and the gfnem version and source commit."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random baseline."),
    max_length: int = typer.Option(0, "--max-length", help="Score only sentences of "
                                   "at most this many words (e.g. 10 for WSJ10); 0 = all."),
    decode: str = typer.Option("auto", "--decode", help="With RUN: auto (viterbi for "
                               "context-free grammars, mbr for the others), viterbi, mbr, or "
                               "sample (best of --samples sampled trees; GFlowNet runs)."),
    samples: int = typer.Option(0, "--samples", help="With RUN: M samples per sentence "
                                "for the importance-sampled NLL bound of the run's GFlowNet "
                                "sampler (DESIGN §6), reported with its standard error; 0 = "
                                "exact NLL only where the grammar has one (else M=1000). "
                                "Like F1, the NLL obeys --max-length."),
    decode_samples: int = typer.Option(16, "--decode-samples", help="With RUN and "
                                       "--decode sample or a grammar without a dynamic "
                                       "program: trees sampled per sentence for decoding "
                                       "(>= 1)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="With RUN: best or last."),
    batch_size: int = typer.Option(16, "--batch-size", help="With RUN: sentences per batch "
                                   "(>= 1)."),
    device: str = typer.Option("auto", "--device", help="With RUN: auto, cpu or cuda."),
    max_images: int = typer.Option(0, "--max-images", help="Image runs: the NLL of the "
                                   "split's first this many images only (a quick look; the "
                                   "report says how many of how many); 0 = all."),
) -> None:
    """Unlabeled bracketing F1 (DESIGN §6): width-1 and whole-sentence spans dropped, 1-word
    sentences skipped, sentence F1 (mean per sentence) and corpus F1 (pooled counts).

    For an image run or image set: the importance-sampled test NLL (--samples M, 0 = 5000),
    also at M = 1 and M = 100, with the true NLL of a shapes set.
    """
    from gfnem_cli.commands import images
    from gfnem_cli.commands.checks import grammar_options_unused

    if images.is_image_run(run) or images.is_image_data(data):   # test NLL of an image run
        grammar_options_unused(baseline=(baseline, None), pred=(pred, None),
                               max_length=(max_length, 0), decode=(decode, "auto"),
                               decode_samples=(decode_samples, 16))
        images.evaluate_images(run, data, split, samples, json_out, seed, checkpoint,
                               batch_size, device, max_images)
        return
    from gfnem_cli.engine.errors import GfnemError
    from gfnem_cli.engine.files import check_output_file, write_text_atomic
    from gfnem_cli.engine.provenance import provenance
    from grammars.data.corpus import load_corpus
    from grammars.evaluation.f1 import score_spans

    # every check before the corpus is read or a sentence decoded: a refusal changes nothing
    if baseline is not None and baseline not in ("right", "left", "random", "oracle"):
        raise GfnemError(f"unknown baseline {baseline!r}", hint="use right, left, random or oracle")
    if run is not None and (baseline is not None or pred is not None):
        raise GfnemError("give a RUN, or --baseline, or --pred: one source of trees")
    if run is None and (baseline is None) == (pred is None):
        raise GfnemError("give exactly one of --baseline or --pred (or a RUN)")
    if max_images:
        raise GfnemError("--max-images limits an image run's NLL; sentences are selected by "
                         "--max-length", hint="drop --max-images")
    at_least("--max-length", max_length, 0, "0 scores every length")
    at_least("--samples", samples, 0, "0 means the exact NLL where there is one")
    at_least("--decode-samples", decode_samples, 1)
    at_least("--batch-size", batch_size, 1)
    checkpoint_name(checkpoint)
    if run is not None:
        from grammars.inference.parsing import DECODERS

        if decode not in DECODERS:
            raise GfnemError(f"unknown --decode '{decode}'", hint="use " + ", ".join(DECODERS))
    if pred is not None and not pred.is_file():
        raise GfnemError("is a directory, not a file of trees" if pred.is_dir()
                         else "no such file", pred)
    if json_out is not None:
        check_output_file(json_out)
    corpus = load_corpus(data)
    if corpus.manifest.get("kind") == "text":
        raise GfnemError("this corpus was prepared from raw text and has no gold trees", data)
    corpus.split(split)          # exists and holds sentences, else one line with every size
    gold = corpus.column(split, "gold_spans")
    words = corpus.column(split, "words")
    likelihood: dict = {}
    if run is not None:
        spans, how, likelihood = _run_report(run, corpus, split, words, decode, samples,
                                             checkpoint, batch_size, device, seed, max_length,
                                             decode_samples)
    else:
        spans, how = predictions(corpus, split, gold, words, baseline, pred, seed)
    report = score_spans(gold, spans, [len(w) for w in words], max_length or None)
    render_report(report, f"{how['decoding']} on {data} [{split}]")
    if likelihood:
        _render_likelihood(likelihood)
    if json_out is not None:
        payload = {**report.to_dict(), **how, **likelihood, "data": str(data), "split": split,
                   "fingerprint": corpus.manifest.get("fingerprint"), **provenance()}
        write_text_atomic(json_out, json.dumps(payload, indent=2) + "\n")


def _run_report(run, corpus, split, words, decode, samples, checkpoint, batch_size, device,
                seed, max_length, decode_samples):
    """A trained run's span predictions and likelihood figures on the split."""
    from gfnem_cli.engine.errors import GfnemError
    from grammars.evaluation.likelihood import true_grammar_likelihood
    from grammars.inference.run_scores import run_likelihood, run_predictions
    from grammars.models.capabilities import has_sampler
    from grammars.data.inputs import corpus_parse_input
    from grammars.inference.parsing import resolve_decode
    from gfnem_cli import families

    trained = families.for_run(run).load_run(run, device, checkpoint)
    decode = resolve_decode(trained, decode)
    data = corpus_parse_input(corpus, run, trained.vocab, split, on_warning=warn)
    if samples > 0 and not has_sampler(trained):
        raise GfnemError("--samples needs a run trained with a GFlowNet sampler", run)
    with work_progress("parsing", len(data.ids)) as advance:
        spans = run_predictions(trained, data.ids, decode, batch_size, decode_samples,
                                progress=advance)
    # the likelihood obeys the same length filter as F1
    scored = [ids for ids in data.ids if not max_length or len(ids) <= max_length]
    likelihood = run_likelihood(trained, scored, batch_size, samples, seed)
    if not likelihood:
        warn("this run has no exact likelihood and no GFlowNet sampler for an importance-"
             "sampled bound: F1 only")
    likelihood.update(true_grammar_likelihood(corpus.path, trained.vocab.tokens, scored))
    tokens = sum(len(ids) for ids in data.ids)
    how = {"decoding": decode, "run": str(run), "checkpoint_step": trained.step,
           "unk_rate": sum(ids.count(0) for ids in data.ids) / tokens if tokens else 0.0}
    return spans, how, likelihood


def _render_likelihood(figures: dict) -> None:
    kind = "bound" if figures.get("nll_is_bound") else "exact"
    text = (f"NLL/token {figures['nll_per_token']:.4f} ({kind}, {figures['nll_method']}"
            + (f", s.e. {figures['nll_std_error']:.4f}" if figures.get("nll_std_error") else "")
            + f")  perplexity {figures['perplexity']:.2f}")
    if "is_nll_per_token" in figures:
        text += (f"\nimportance-sampled bound: NLL/token {figures['is_nll_per_token']:.4f} "
                 f"(s.e. {figures['is_nll_std_error']:.4f}, {figures['is_nll_method']})")
    if "true_nll_per_token" in figures:
        text += f"\ntrue grammar: NLL/token {figures['true_nll_per_token']:.4f}"
    console.print(text, highlight=False)
