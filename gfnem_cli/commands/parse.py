"""`gfnem parse RUN --input FILE|DIR --out FILE`: bracketed parses, one per line."""
from __future__ import annotations

from pathlib import Path

import typer

from gfnem_cli.commands.checks import at_least, checkpoint_name
from gfnem_cli.console import console, friendly_errors, warn, work_progress


@friendly_errors
def parse(
    run: Path = typer.Argument(..., help="A run directory written by `gfnem train`."),
    input: Path = typer.Option(..., "--input", "-i", help="Raw text (one sentence per line, "
                               "whitespace-tokenized; blank and `#` lines are skipped, so "
                               "output line k is the k-th sentence, not input line k) or a "
                               "corpus folder written by `gfnem prepare` (see --split)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: one bracketed tree per "
                             "input sentence, with the input's original words."),
    decode: str = typer.Option("auto", "--decode", help="auto: viterbi for context-free "
                               "grammars, mbr for the others; viterbi: the most probable labeled "
                               "tree; mbr: the tree maximizing expected correct spans (CKY over "
                               "span marginals); sample: the best of --samples sampled trees by "
                               "log p(x, z) (GFlowNet runs)."),
    split: str = typer.Option("test", "--split", help="Which split of a corpus folder to parse."),
    samples: int = typer.Option(16, "--samples", help="Trees sampled per sentence for "
                                "--decode sample (>= 1)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Sentences decoded together "
                                   "(>= 1)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (lowest validation NLL) or last."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Parse sentences with a trained grammar and write bracketed trees; for an image run
    (--input a prepared image set), write codes.jsonl: each image's most probable of
    --samples sampled code grids with log p(x, z) and log q(z | x).

    Nonterminals are written NT-k, preterminals T-k (Viterbi) or T; unknown words map to
    <unk> inside the model only. The output reads back with `gfnem evaluate --pred`.
    """
    from gfnem_cli.commands import images
    from gfnem_cli.commands.checks import grammar_options_unused

    if images.is_image_run(run):        # an image run: each image's best sampled code grid
        grammar_options_unused(decode=(decode, "auto"))
        images.parse_images(run, input, split, out, samples, batch_size, 0, checkpoint,
                            device)
        return
    from gfnem_cli import families
    from gfnem_cli.engine.errors import GfnemError
    from gfnem_cli.engine.files import check_output_file, write_text_atomic
    from grammars.data.inputs import read_parse_input
    from grammars.inference.parsing import DECODERS, parse_sentences, resolve_decode

    # every check before the model is loaded or a sentence decoded
    if decode not in DECODERS:
        raise GfnemError(f"unknown --decode '{decode}'", hint="use " + ", ".join(DECODERS))
    at_least("--batch-size", batch_size, 1)
    at_least("--samples", samples, 1)
    checkpoint_name(checkpoint)
    check_output_file(out)
    trained = families.for_run(run).load_run(run, device, checkpoint)
    decode = resolve_decode(trained, decode)
    data = read_parse_input(input, run, trained.vocab, split, on_warning=warn)
    if not data.words:
        raise GfnemError("no sentences to parse", input)
    if data.skipped_lines:
        console.print(f"[dim]note:[/] {data.skipped_lines:,} blank or `#` lines of the input "
                      "were skipped: output line k is the k-th sentence", highlight=False)
    with work_progress("parsing", len(data.ids)) as advance:
        trees = parse_sentences(trained, data.ids, decode, batch_size, samples,
                                progress=advance)
    lines = [t.to_brackets([w])[0] for t, w in zip(trees, data.words)]
    write_text_atomic(out, "".join(line + "\n" for line in lines))
    console.print(f"wrote {len(lines)} trees ({decode}) to {out}")
