"""`gfnem evaluate`: unlabeled F1 of baseline trees or a file of parses against a corpus split.

The flow is gold → predictions → `grammars.evaluation.f1.score_spans` → render. Predictions are plain
span lists, so a trained model plugs in as one more source in `predictions` (its decoded
`BinaryTrees.span_lists()`), with no change to scoring or rendering. With a RUN, its NLL per
token and perplexity too; on a corpus prepared from raw text (no gold trees) only those.
`--export-gold` writes the split's gold trees as `grammars.data.gold_trees` filters them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from gfnem_cli.commands.checks import at_least, checkpoint_name
from gfnem_cli.commands.grammar_report import render_likelihood, render_report, report_unknown
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
    from rich.markup import escape

    from grammars.data.predicted_trees import read_predicted_trees
    from grammars.data.tag_filter import TagFilter

    tag_filter = TagFilter.from_manifest(corpus.manifest.get("tag_filter"))
    read = read_predicted_trees(pred, words, corpus.column(split, "tokens"), split,
                                corpus.column(split, "source"), warn, tag_filter)
    if read.filtered or read.skipped:
        trees = f"tree{'' if read.skipped == 1 else 's'}"
        console.print(f"[dim]note:[/] {escape(str(pred))}: {read.filtered:,} of the "
                      f"{len(read.spans):,} trees read through the corpus's tag filter "
                      f"({escape(tag_filter.describe())}), their non-word leaves (punctuation, "
                      "traces) dropped" + (f"; {read.skipped:,} {trees} with no word it keeps "
                                           "skipped, as `gfnem prepare` dropped them"
                                           if read.skipped else ""), highlight=False)
    return read.spans, {"decoding": "pred-file", "pred": str(pred),
                        "pred_filtered": read.filtered, "pred_skipped": read.skipped}


@friendly_errors
def evaluate(
    run: Optional[Path] = typer.Argument(None, help="A run directory written by `gfnem train`: "
                                         "its parses are scored, and its NLL per token, "
                                         "perplexity and the split's <unk> rate reported. Omit "
                                         "it to score --baseline or --pred."),
    data: Path = typer.Option(..., "--data", "-d", help="A corpus directory written by "
                              "`gfnem prepare`: a treebank's (gold trees, F1), or, with a RUN, "
                              "one prepared from raw text (NLL and perplexity, no F1)."),
    split: str = typer.Option("test", "--split", help="Which split of the corpus to score."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Score reference trees: "
                                           "right / left branching, random (uniform over "
                                           "binary trees, see --seed), or oracle (the gold "
                                           "tree binarized: the best any binary tree scores)."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="A file of predicted trees, one "
                                        "bracketed tree per sentence in the split's order; its "
                                        "words must be the split's words (or its tokens), as "
                                        "they stand or once the corpus's own tag filter drops "
                                        "punctuation and `-NONE-` leaves (so the split's "
                                        "original PTB trees are accepted; trees it leaves with "
                                        "no word are skipped when that makes the count)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as "
                                            "JSON: sentence_f1, corpus_f1 (percent; null "
                                            "without gold trees), num_sentences, buckets, "
                                            "length filter, decoding, with a RUN nll_per_token, "
                                            "perplexity, nll_is_bound and unk_rate, and the "
                                            "gfnem version and source commit."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random baseline, of a RUN's "
                             "importance-sampled bound and of its sampled decoding: batch b "
                             "draws with seed (seed, b), so the same seed and --batch-size "
                             "give `gfnem score`'s figures, and the same under torchrun."),
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
    export_gold: Optional[Path] = typer.Option(None, "--export-gold", help="Also write the "
                                               "split's gold trees to this file, one per "
                                               "sentence in the split's order (line k beside "
                                               "line k of a --pred file or of `gfnem parse RUN "
                                               "--input DATA --split SPLIT`), for EVALB and "
                                               "other scorers: each tree filtered as its words "
                                               "were (punctuation and `-NONE-` leaves removed, "
                                               "function tags dropped); every sentence, "
                                               "whatever --max-length. Refused for a corpus "
                                               "prepared from raw text."),
) -> None:
    """Unlabeled bracketing F1 (DESIGN §6): width-1 and whole-sentence spans dropped, 1-word
    sentences skipped, sentence F1 (mean per sentence) and corpus F1 (pooled counts).

    With a RUN, also its NLL per token and perplexity, and the split's `<unk>` rate under the
    run's vocabulary (a warning when the corpus or its vocabulary is not the run's). A corpus
    prepared from raw text (`gfnem prepare text`) has no gold trees: with a RUN, NLL and
    perplexity only. A --pred file may carry punctuation, traces and PTB tags: the corpus's
    own tag filter is applied to trees whose leaves are not the split's words as they stand.
    --export-gold writes the split's gold trees for EVALB.

    For an image run or image set: the importance-sampled test NLL (--samples M, 0 = 5000),
    also at M = 1 and M = 100, with the true NLL of a shapes set.
    """
    from gfnem_cli.commands import images
    from gfnem_cli.commands.checks import grammar_options_unused

    if images.is_image_run(run) or images.is_image_data(data):   # test NLL of an image run
        grammar_options_unused(baseline=(baseline, None), pred=(pred, None),
                               max_length=(max_length, 0), decode=(decode, "auto"),
                               decode_samples=(decode_samples, 16),
                               export_gold=(export_gold, None))
        images.evaluate_images(run, data, split, samples, json_out, seed, checkpoint,
                               batch_size, device, max_images)
        return
    from gfnem_cli.engine import distributed
    from gfnem_cli.engine.runs import resolve_device
    from gfnem_cli.engine.errors import GfnemError
    from gfnem_cli.engine.files import check_output_file, write_text_atomic
    from gfnem_cli.engine.provenance import provenance
    from rich.markup import escape
    from grammars.data.corpus import load_corpus
    from grammars.data.gold_trees import split_gold_lines
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
    outputs = [path for path in (json_out, export_gold) if path is not None]
    if len(outputs) == 2 and json_out.resolve() == export_gold.resolve():
        raise GfnemError("--export-gold names the --json file", export_gold,
                         hint="give the gold trees a file of their own")
    for path in outputs:
        check_output_file(path)
    world = distributed.join_if_launched(resolve_device(device))  # torchrun: batches shared
    corpus = load_corpus(data)
    has_gold = corpus.manifest.get("kind") != "text"
    if not has_gold:
        _check_text_corpus(run, data, export_gold, decode, decode_samples)
    corpus.split(split)          # exists and holds sentences, else one line with every size
    gold = corpus.column(split, "gold_spans")
    words = corpus.column(split, "words")
    gold_lines = split_gold_lines(corpus, split) if export_gold is not None else None
    likelihood: dict = {}
    if run is not None:
        spans, how, likelihood = _run_report(run, corpus, split, decode, samples, checkpoint,
                                             batch_size, device, seed, max_length,
                                             decode_samples, has_gold)
    else:
        spans, how = predictions(corpus, split, gold, words, baseline, pred, seed)
    if not world.is_main:                  # rank 0 reports and writes
        return
    if spans is not None:
        report = score_spans(gold, spans, [len(w) for w in words], max_length or None)
        render_report(report, f"{how['decoding']} on {data} [{split}]")
        figures = report.to_dict()
    else:
        console.print(f"{escape(str(data))} [{escape(split)}]: no gold trees (a corpus "
                      "prepared from raw text), so no F1; NLL and perplexity only",
                      highlight=False)
        scored = likelihood.get("nll_sentences", 0)
        figures = {"sentence_f1": None, "corpus_f1": None, "num_sentences": scored,
                   "num_skipped": len(words) - scored,
                   "length_filter": {"min_length": 2, "max_length": max_length or None}}
    if likelihood:
        render_likelihood(likelihood)
    if json_out is not None:
        payload = {**figures, **how, **likelihood, "data": str(data), "split": split,
                   "gold_trees": has_gold, "fingerprint": corpus.manifest.get("fingerprint"),
                   **provenance()}
        write_text_atomic(json_out, json.dumps(payload, indent=2) + "\n")
    if gold_lines is not None:
        write_text_atomic(export_gold, "".join(line + "\n" for line in gold_lines))
        console.print(f"wrote the {len(gold_lines):,} gold trees of split {split!r}, filtered "
                      f"as the words were, to {escape(str(export_gold))}", highlight=False)


def _check_text_corpus(run, data, export_gold, decode: str, decode_samples: int) -> None:
    """A corpus with no gold trees: a RUN's NLL and perplexity, and no option about trees."""
    from gfnem_cli.engine.errors import GfnemError

    if run is None:
        raise GfnemError("this corpus was prepared from raw text and has no gold trees", data,
                         hint="give a RUN: `gfnem evaluate RUN --data DIR` reports its NLL "
                              "per token and perplexity")
    unused = [name for name, given in (("--export-gold", export_gold is not None),
                                       ("--decode", decode != "auto"),
                                       ("--decode-samples", decode_samples != 16)) if given]
    if unused:
        raise GfnemError(f"{', '.join(unused)}: this corpus was prepared from raw text and has "
                         "no gold trees, so nothing is decoded or exported (NLL and perplexity "
                         "only)", data, hint="drop " + ", ".join(unused))


def _run_report(run, corpus, split, decode, samples, checkpoint, batch_size, device, seed,
                max_length, decode_samples, has_gold):
    """A trained run's span predictions (None without gold trees) and likelihood figures."""
    from gfnem_cli.engine.errors import GfnemError
    from grammars.evaluation.likelihood import true_grammar_likelihood
    from grammars.inference.run_scores import (likelihood_estimators, run_likelihood,
                                               run_predictions)
    from grammars.models.capabilities import has_sampler
    from grammars.data.inputs import corpus_parse_input
    from grammars.inference.parsing import resolve_decode
    from gfnem_cli import families

    trained = families.for_run(run).load_run(run, device, checkpoint)
    decode = resolve_decode(trained, decode)
    if samples > 0 and not has_sampler(trained):
        raise GfnemError("--samples needs a run trained with a GFlowNet sampler", run)
    if not has_gold and likelihood_estimators(trained, samples) == (False, 0):
        raise GfnemError("this run has no exact likelihood and no GFlowNet sampler for an "
                         "importance-sampled bound, and the corpus has no gold trees for F1: "
                         "nothing to report", run)
    data = corpus_parse_input(corpus, run, trained.vocab, split, on_warning=warn)
    unk_rate = report_unknown(data, len(trained.vocab), warn_above=False)
    spans = None
    if has_gold:
        with work_progress("parsing", len(data.ids)) as advance:
            spans = run_predictions(trained, data.ids, decode, batch_size, decode_samples,
                                    progress=advance, seed=seed)
    # the likelihood obeys the same length filter as F1
    scored = [ids for ids in data.ids if not max_length or len(ids) <= max_length]
    likelihood = run_likelihood(trained, scored, batch_size, samples, seed)
    if not likelihood:
        warn("this run has no exact likelihood and no GFlowNet sampler for an importance-"
             "sampled bound: F1 only")
    likelihood.update(true_grammar_likelihood(corpus.path, trained.vocab.tokens, scored))
    how = {"decoding": decode if has_gold else "none (no gold trees)", "run": str(run),
           "checkpoint_step": trained.step, "unk_rate": unk_rate}
    return spans, how, likelihood
