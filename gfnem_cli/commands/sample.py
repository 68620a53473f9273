"""`gfnem sample RUN`: sentences with trees from the grammar, or trees for given sentences."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gfnem_cli.commands.checks import at_least, checkpoint_name
from gfnem_cli.console import console, friendly_errors, warn


def rich_tree(bracketed: str):
    """A rich Tree view of one bracketed string, for reading parses in the terminal; the string
    is read by the treebank's reader (`grammars.data.treebank.parse_bracketed`)."""
    from rich.markup import escape
    from rich.tree import Tree

    from grammars.data.treebank import parse_bracketed

    (root,), _ = parse_bracketed(bracketed)

    def view(node):
        if node.word is not None:              # a leaf: (TAG word)
            return Tree(f"[dim]{escape(node.label)}[/] [bold]{escape(node.word)}[/]")
        return Tree(f"[cyan]{escape(node.label)}[/]")

    top = view(root.tree)
    stack = [(root.tree, top)]                 # iterative: trees may nest deeply
    while stack:
        node, shown = stack.pop()
        for child in node.children:
            branch = view(child)
            shown.add(branch)
            stack.append((child, branch))
    return top


@friendly_errors
def sample(
    run: Path = typer.Argument(..., help="A run directory written by `gfnem train`."),
    sentence: Optional[str] = typer.Option(None, "--sentence", "-s", help="Draw trees for this "
                                           "sentence (whitespace-tokenized)."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Draw trees for every "
                                         "sentence of this text file (one per line)."),
    n: int = typer.Option(10, "-n", help="Number of samples (per sentence; >= 1)."),
    from_model: bool = typer.Option(False, "--from-model", help="Draw sentences together with "
                                    "their trees from the grammar itself."),
    max_length: int = typer.Option(30, "--max-length", help="With --from-model: redraw "
                                   "sentences longer than this (>= 2)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    show_trees: bool = typer.Option(True, "--show-trees/--brackets-only", help="Render each "
                                    "tree in the terminal as well as its bracketed string."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Image runs: the PNG to "
                                       "write (prior samples, or with --input DIR inputs "
                                       "beside reconstructions)."),
    split: str = typer.Option("test", "--split", help="Image runs with --input DIR: which "
                              "split of the prepared image set."),
    per_image: int = typer.Option(4, "--per-image", help="Image runs with --input: posterior "
                                  "samples reconstructed per image (>= 1)."),
) -> None:
    """Draw samples from a trained model.

    Image runs: `-n 64 --out grid.png` writes decoder means of prior samples;
    `--input DIR --split test -n 16 --out recon.png` each input beside reconstructions from
    posterior samples.

    With --from-model: sentences and their trees from the grammar. With --sentence or --input:
    parse trees from the posterior p(z | x) (exact for context-free grammars, the trained
    GFlowNet sampler otherwise), each with log q(z | x) and log p(x, z).
    """
    from gfnem_cli.engine.distributed import refuse_under_torchrun

    refuse_under_torchrun("sample")

    import torch
    from rich.markup import escape

    from gfnem_cli.commands import images
    from gfnem_cli.commands.checks import grammar_options_unused
    from gfnem_cli.engine.errors import GfnemError

    if images.is_image_run(run):
        if sentence is not None or from_model:
            raise GfnemError("an image run draws prior samples (no option) or reconstructions "
                             "(--input DIR); --sentence and --from-model are for grammars")
        grammar_options_unused(max_length=(max_length, 30), brackets_only=(not show_trees, False))
        images.sample_images(run, n, input, split, out, per_image, seed, checkpoint, device)
        return
    if out is not None:
        raise GfnemError("--out writes the PNG of an image run; a grammar run prints its "
                         "samples", hint="drop --out")
    from grammars.data.batching import make_batch
    from grammars.data.inputs import run_prepare_options
    from gfnem_cli import families
    from grammars.inference.tree_draws import draw_trees
    from grammars.data.vocabulary import normalize_word

    at_least("-n", n, 1)
    at_least("--max-length", max_length, 2, "a grammar in normal form needs two words")
    checkpoint_name(checkpoint)
    if from_model == bool(sentence is not None or input is not None):
        raise GfnemError("give either --from-model, or --sentence / --input",
                         hint="see `gfnem sample --help`")
    if sentence is not None and input is not None:
        raise GfnemError("give --sentence or --input, not both")
    if sentence is not None and len(sentence.split()) < 2:
        count = len(sentence.split())
        raise GfnemError(f"--sentence has {count} word{'' if count == 1 else 's'}; a grammar "
                         "in normal form needs two or more")
    texts = None if input is None else _input_sentences(input)
    trained = families.for_run(run).load_run(run, device, checkpoint)
    torch.manual_seed(seed)

    def show(bracketed: str, caption: str) -> None:
        console.print(caption, highlight=False)
        console.print(escape(bracketed), highlight=False, soft_wrap=True)
        if show_trees:
            console.print(rich_tree(bracketed))

    if from_model:
        generator = torch.Generator().manual_seed(seed)
        ids, trees, _ = trained.model.sample(n, max_length, generator)
        words = [trained.vocab.decode(row) for row in ids]
        for k, (line, w) in enumerate(zip(trees.to_brackets(words), words)):
            show(line, f"[bold]sample {k + 1}[/]: {escape(' '.join(w))}")
        return
    if sentence is not None:
        texts = [sentence.split()]
    options = run_prepare_options(run)
    for words in texts:
        tokens = [normalize_word(w, options.lowercase, options.replace_digits) for w in words]
        batch = make_batch([trained.vocab.encode(tokens)], [0])
        draws = draw_trees(trained, batch.ids.to(trained.device),
                           batch.lengths.to(trained.device), n)
        lines = draws.trees.to_brackets([words] * n)
        kind = "exact posterior" if draws.exact_posterior else "GFlowNet sampler"
        console.print(f"[bold]{escape(' '.join(words))}[/] — {n} trees from the {kind}")
        for k, line in enumerate(lines):
            show(line, f"  #{k + 1}  log q = {float(draws.log_q[k]):.3f}   "
                       f"log p(x,z) = {float(draws.log_joint[k]):.3f}")


def _input_sentences(path: Path) -> list[list[str]]:
    """The sentences of an --input file (read as `prepare text` reads), 1-word ones skipped
    with a warning; a file with nothing to draw trees for is an error, not a silent exit."""
    from gfnem_cli.engine.errors import GfnemError
    from grammars.data.treebank import read_text, split_lines

    sentences = [line.split() for line in split_lines(read_text(path, warn))
                 if line.split() and not line.split()[0].startswith("#")]
    for words in sentences:
        if len(words) < 2:
            warn(f"{path}: skipping {words[0]!r}: a grammar in normal form needs two words")
    kept = [words for words in sentences if len(words) >= 2]
    if not kept:
        raise GfnemError("no sentence of two or more words to draw trees for"
                         + (f" ({len(sentences)} one-word lines)" if sentences else ""), path,
                         hint="write one whitespace-tokenized sentence per line")
    return kept
