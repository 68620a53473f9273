"""`gfnem parse RUN --input FILE|DIR --out FILE`: bracketed parses, one per line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gfnem_cli.commands.checks import at_least, checkpoint_name
from gfnem_cli.console import console, friendly_errors, warn, work_progress


@friendly_errors
def parse(
    run: Path = typer.Argument(..., help="A run directory written by `gfnem train`."),
    input: Path = typer.Option(..., "--input", "-i", help="What to parse, told by its "
                               "content, whatever its name: raw text (one sentence per line; "
                               "see --tokenize; blank, `#` and punctuation-only lines give an "
                               "empty tree `()`, so output line k answers input line k); a "
                               "bracketed treebank (`.mrg` or one tree per line: each tree's "
                               "words kept by the run's own tag filter and normalization, one "
                               "output line per tree); or a corpus folder written by `gfnem "
                               "prepare` (see --split). A folder of `.mrg` files is refused "
                               "with the `gfnem prepare ptb` command that prepares it."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: one bracketed tree per "
                             "line of raw text, tree of a treebank or sentence of a corpus "
                             "split, with the input's original words (kept ones)."),
    decode: str = typer.Option("auto", "--decode", help="auto: viterbi for context-free "
                               "grammars, mbr for the others; viterbi: the most probable labeled "
                               "tree; mbr: the tree maximizing expected correct spans (CKY over "
                               "span marginals); sample: the best of --samples sampled trees by "
                               "log p(x, z) (GFlowNet runs)."),
    split: str = typer.Option("test", "--split", help="Which split of a corpus folder to parse."),
    tokenize: Optional[str] = typer.Option(None, "--tokenize", help="Raw text only: ptb (the "
                                           "default: Penn-Treebank-style splitting of "
                                           "punctuation, quotes, contractions and currency: "
                                           "`don't` -> `do n't`, `$1.5` -> `$ 1.5`, `1990.` -> "
                                           "`1990 .`) or whitespace (split on spaces only, "
                                           "for text tokenized already). Lowercasing and "
                                           "digit mapping follow the run's training corpus."),
    keep_punct: bool = typer.Option(False, "--keep-punct", help="Raw text only: keep "
                                    "punctuation tokens (`, . `` '' -LRB- $ #`...). By "
                                    "default they are dropped, as the evaluation protocol's "
                                    "36 word tags drop punctuation leaves from treebanks."),
    samples: int = typer.Option(16, "--samples", help="Trees sampled per sentence for "
                                "--decode sample (>= 1)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sentences decoded together "
                                   "(>= 1)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled decoders (--decode "
                             "sample, mbr on a grammar without a dynamic program, an image "
                             "run's sampled grids): batch b draws with seed (seed, b), so "
                             "the same seed and --batch-size give the same trees and grids, "
                             "under torchrun too."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (lowest validation NLL) or last."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    gold_out: Optional[Path] = typer.Option(None, "--gold-out", help="Also write the gold "
                                            "trees of a treebank file or corpus split to this "
                                            "file, line k beside --out's line k, for EVALB "
                                            "(`evalb -p COLLINS.prm GOLD OUT`) and other "
                                            "scorers: each tree filtered as its words were "
                                            "(punctuation and `-NONE-` leaves removed, "
                                            "function tags dropped, `NP-SBJ` -> `NP`), so its "
                                            "leaves are the prediction's words; `()` where "
                                            "the prediction is `()`. Refused for raw text, "
                                            "which has no gold trees."),
) -> None:
    """Parse sentences with a trained grammar and write bracketed trees; for an image run
    (--input a prepared image set), write codes.jsonl: each image's most probable of
    --samples sampled code grids with log p(x, z) and log q(z | x).

    Nonterminals are written NT-k, preterminals T-k (Viterbi) or T; unknown words map to
    <unk> inside the model only, and the share of them is printed (a warning above 5%, with
    the ten most frequent). The output of a corpus split reads back with `gfnem evaluate
    --pred`; with --gold-out, the gold trees are written beside it for EVALB.
    """
    from gfnem_cli.commands import images
    from gfnem_cli.commands.checks import grammar_options_unused
    from gfnem_cli.engine import distributed
    from gfnem_cli.engine.runs import resolve_device

    if images.is_image_run(run):        # an image run: each image's best sampled code grid
        # (under torchrun the images' batches are shared as a grammar run's sentences are)
        grammar_options_unused(decode=(decode, "auto"), tokenize=(tokenize, None),
                               keep_punct=(keep_punct, False), gold_out=(gold_out, None))
        images.parse_images(run, input, split, out, samples, batch_size, seed, checkpoint,
                            device)
        return
    from gfnem_cli import families
    from gfnem_cli.commands.grammar_report import gold_lines, print_notes, report_unknown
    from gfnem_cli.engine.errors import GfnemError
    from gfnem_cli.engine.files import check_output_file, write_text_atomic
    from rich.markup import escape
    from grammars.data.inputs import read_parse_input
    from grammars.data.raw_text import TextOptions
    from grammars.inference.parsing import DECODERS, parse_sentences, resolve_decode

    # every check before the model is loaded or a sentence decoded
    if decode not in DECODERS:
        raise GfnemError(f"unknown --decode '{decode}'", hint="use " + ", ".join(DECODERS))
    at_least("--batch-size", batch_size, 1)
    at_least("--samples", samples, 1)
    checkpoint_name(checkpoint)
    text_options = None
    if tokenize is not None or keep_punct:
        text_options = TextOptions(tokenize or "ptb", keep_punct).check()
    check_output_file(out)
    if gold_out is not None:
        if gold_out.resolve() == out.resolve():
            raise GfnemError("--gold-out names the --out file", gold_out,
                             hint="give the gold trees a file of their own")
        check_output_file(gold_out)
    world = distributed.join_if_launched(resolve_device(device))  # torchrun: batches shared
    trained = families.for_run(run).load_run(run, device, checkpoint)
    decode = resolve_decode(trained, decode)
    data = read_parse_input(input, run, trained.vocab, split, on_warning=warn,
                            text_options=text_options)
    if not any(data.words):
        raise GfnemError("no sentences to parse", input)
    gold = gold_lines(data, "--gold-out") if gold_out is not None else None
    print_notes(data)
    report_unknown(data, len(trained.vocab))
    rows = [k for k, ids in enumerate(data.ids) if ids]
    with work_progress("parsing", len(rows)) as advance:
        trees = parse_sentences(trained, [data.ids[k] for k in rows], decode, batch_size,
                                samples, progress=advance, seed=seed)
    if not world.is_main:                  # rank 0 writes
        return
    lines = ["()"] * len(data.ids)
    for k, tree in zip(rows, trees):
        lines[k] = tree.to_brackets([data.words[k]])[0]
    write_text_atomic(out, "".join(line + "\n" for line in lines))
    empty = len(lines) - len(rows)
    console.print(f"wrote {_count(len(lines), 'line')} ({_count(len(rows), 'tree')}"
                  + (f", {empty:,} empty `()`" if empty else "") + f"; {decode}) to "
                  f"{escape(str(out))}", highlight=False)
    if gold is not None:
        write_text_atomic(gold_out, "".join(line + "\n" for line in gold))
        console.print(f"wrote the {_count(len(gold), 'gold tree')}, filtered as the words "
                      f"were, line for line, to {escape(str(gold_out))}", highlight=False)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
