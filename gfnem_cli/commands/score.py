"""`gfnem score RUN --input FILE|DIR --out scores.jsonl`: log p(x) of every sentence.

The input is read as `gfnem parse` reads it (raw text, a treebank file, a corpus split), and
answers row for row: one JSON object per input line, tree or sentence. The figures are the
ones `evaluate` sums (`grammars.inference.run_scores`): with the same sentences, --batch-size
and --seed, Σ −log p(x) over the rows is `evaluate`'s NLL per token times its token count.
Under torchrun the batches are shared over the ranks as `evaluate` shares them, and rank 0
writes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from gfnem_cli.commands.checks import at_least, checkpoint_name
from gfnem_cli.console import console, friendly_errors, warn, work_progress


@friendly_errors
def score(
    run: Path = typer.Argument(..., help="A grammar run directory written by `gfnem train`. "
                               "An image run is refused: its importance-sampled NLL per image "
                               "is `gfnem evaluate RUN --data DIR`."),
    input: Path = typer.Option(..., "--input", "-i", help="What to score, read exactly as "
                               "`gfnem parse` reads it, told by its content: raw text (one "
                               "sentence per line, see --tokenize; blank, `#` and "
                               "punctuation-only lines give a row with no score), a bracketed "
                               "treebank (`.mrg` or one tree per line, read with the run's own "
                               "tag filter and normalization), or a corpus folder written by "
                               "`gfnem prepare`, with or without gold trees (see --split)."),
    out: Path = typer.Option(..., "--out", "-o", help="scores.jsonl: one JSON object per "
                             "input line, tree or sentence, in order: row, source, words, "
                             "length, nll_tokens (length + 1: one </s>), unk (words the "
                             "model sees as <unk>), log_p (natural log), nll = −log_p, "
                             "nll_per_token, bound (true for a bound: the compound PCFG's "
                             "ELBO or an importance-sampled estimate), method, and for an "
                             "importance-sampled figure samples (M) and std_error (of log_p); "
                             "beside an exact figure, with --samples, is_log_p, "
                             "is_std_error and is_method. Rows that are not scored (no word, "
                             "or one word, which a binary grammar cannot derive and the "
                             "corpus NLL leaves out too) have log_p null and say why in "
                             "`skipped`."),
    split: str = typer.Option("test", "--split", help="Which split of a corpus folder to score."),
    tokenize: Optional[str] = typer.Option(None, "--tokenize", help="Raw text only: ptb (the "
                                           "default: Penn-Treebank-style splitting of "
                                           "punctuation, quotes, contractions and currency) "
                                           "or whitespace (text tokenized already), as "
                                           "`gfnem parse --tokenize`."),
    keep_punct: bool = typer.Option(False, "--keep-punct", help="Raw text only: keep "
                                    "punctuation tokens (dropped by default, as the treebank's "
                                    "word tags drop punctuation leaves)."),
    samples: int = typer.Option(0, "--samples", help="M samples per sentence for the "
                                "importance-sampled bound of the run's GFlowNet sampler, with "
                                "its standard error; 0 = the exact log p(x) where the grammar "
                                "has one (else M=1000). Given with an exact grammar, the bound "
                                "is written beside the exact figure."),
    seed: int = typer.Option(0, "--seed", help="Seed of the importance-sampled bound (the "
                             "same as `evaluate --seed` gives the same figures)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sentences scored together (>= 1; "
                                   "the bound's draws depend on it, as in `evaluate`)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (lowest validation NLL) or last."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Per-sentence log p(x) and NLL per token of a trained grammar, as JSON lines.

    Exact by the inside algorithm for PCFGs, the ELBO for the compound PCFG, an
    importance-sampled bound with M and its standard error otherwise (DESIGN §6); bounds are
    labelled. Prints the `<unk>` rate under the run's vocabulary (a warning above 5%) and the
    totals: NLL per token and perplexity over the scored sentences, as `evaluate` prints them
    (the same sentences, --batch-size and --seed give the same figures). Grammar runs only;
    an image run's NLL per image is `gfnem evaluate RUN --data DIR`.
    """
    from gfnem_cli import families
    from gfnem_cli.commands import images
    from gfnem_cli.commands.grammar_report import print_notes, render_likelihood, report_unknown
    from gfnem_cli.engine import distributed
    from gfnem_cli.engine.errors import GfnemError
    from gfnem_cli.engine.files import check_output_file, write_text_atomic
    from gfnem_cli.engine.runs import resolve_device
    from rich.markup import escape
    from grammars.data.inputs import read_parse_input
    from grammars.data.raw_text import TextOptions
    from grammars.inference.run_scores import (likelihood_estimators, sentence_likelihoods,
                                               summed_likelihood)
    from grammars.models.capabilities import has_sampler

    # every check before the model is loaded or a sentence scored
    if images.is_image_run(run):
        raise GfnemError("`gfnem score` scores sentences, and this is an image run", run,
                         hint="its importance-sampled NLL per image is `gfnem evaluate RUN "
                              "--data DIR --json FILE`")
    at_least("--samples", samples, 0, "0 means the exact log p(x) where there is one")
    at_least("--batch-size", batch_size, 1)
    checkpoint_name(checkpoint)
    text_options = None
    if tokenize is not None or keep_punct:
        text_options = TextOptions(tokenize or "ptb", keep_punct).check()
    if input.is_file() and out.resolve() == input.resolve():
        raise GfnemError("--out names the --input file", out,
                         hint="write the scores to a file of their own")
    check_output_file(out)
    world = distributed.join_if_launched(resolve_device(device))  # torchrun: batches shared
    trained = families.for_run(run).load_run(run, device, checkpoint)
    if samples > 0 and not has_sampler(trained):
        raise GfnemError("--samples needs a run trained with a GFlowNet sampler", run,
                         hint="drop --samples: this grammar's log p(x) is exact")
    exact, m = likelihood_estimators(trained, samples)
    if not exact and not m:
        raise GfnemError("this run has no exact likelihood and no GFlowNet sampler for an "
                         "importance-sampled bound: nothing to score", run)
    data = read_parse_input(input, run, trained.vocab, split, on_warning=warn,
                            text_options=text_options)
    if not any(data.words):
        raise GfnemError("no sentences to score", input)
    print_notes(data)
    report_unknown(data, len(trained.vocab))
    rows = [k for k, ids in enumerate(data.ids) if ids]
    passes = int(exact) + int(m > 0)
    with work_progress("scoring", passes * sum(len(data.ids[k]) >= 2 for k in rows)) as tell:
        figures = sentence_likelihoods(trained, [data.ids[k] for k in rows], batch_size,
                                       samples, seed, progress=tell)
    if not world.is_main:                  # rank 0 writes
        return
    scores = [None] * len(data.ids)
    for k, value in zip(rows, figures):
        scores[k] = value
    lines = [json.dumps(_record(data, k, scores[k], m), ensure_ascii=False) + "\n"
             for k in range(len(data.ids))]
    write_text_atomic(out, "".join(lines))
    totals = summed_likelihood(scores)
    count = totals.get("nll_sentences", 0)
    console.print(f"wrote {len(lines):,} rows to {escape(str(out))}: {count:,} sentences "
                  f"scored, {len(lines) - count:,} not (no word, or one)", highlight=False)
    if totals:
        render_likelihood(totals)


def _record(data, k: int, value, m: int) -> dict:
    """The JSON object of row k: its figures, or why it has none."""
    words = data.words[k]
    record = {"row": k + 1, "source": data.sources[k] if data.sources else data.source,
              "words": words, "length": len(words), "nll_tokens": len(words) + 1 if words
              else 0, "unk": data.ids[k].count(0)}
    if value is None:
        why = "no word" if not words else "one word: a binary grammar derives none"
        return {**record, "log_p": None, "nll": None, "nll_per_token": None, "skipped": why}
    record.update(log_p=_finite(value.log_p), nll=_finite(-value.log_p),
                  nll_per_token=_finite(value.nll_per_token), bound=value.is_bound,
                  method=value.method)
    if value.variance is not None:
        record.update(samples=m, std_error=_finite(value.std_error))
    if value.is_method is not None:
        record.update(is_log_p=_finite(value.is_log_p),
                      is_std_error=_finite(math.sqrt(value.is_variance)),
                      is_method=value.is_method)
    return record


def _finite(x: float | None) -> float | None:
    """A number strict JSON can hold; null for an infinite or NaN one."""
    return x if x is not None and math.isfinite(x) else None
