"""`gfnem prepare ptb|text|synthetic|shapes|mnist`: corpora from trees or raw text, image sets.

Options and rendering only; reading, cleaning, splitting and encoding live in
`grammars.data.corpus`. Heavy imports (datasets) happen inside the commands.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from gfnem_cli.commands.checks import at_least
from gfnem_cli.console import console, friendly_errors, warn

app = typer.Typer(
    help="Prepare corpora (PTB-style treebanks, raw text, a synthetic treebank) or binary image sets (shapes, MNIST).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

OUT = typer.Option(..., "--out", "-o", help="Output directory for the corpus (a datasets "
                   "DatasetDict plus vocab.json and manifest.json). An existing prepared "
                   "corpus there is replaced; any other non-empty directory is refused.")
LOWERCASE = typer.Option(True, "--lowercase/--no-lowercase",
                         help="Lowercase every word before building tokens.")
DIGITS = typer.Option(True, "--replace-digits/--no-replace-digits",
                      help="Replace each run of digits by `N` (`1,000` → `N,N`).")
VOCAB_SIZE = typer.Option(10000, "--vocab-size",
                          help="Keep the most frequent training tokens, plus `<unk>` at index "
                               "0; 0 keeps all (>= 0).")
VOCAB_FROM = typer.Option(None, "--vocab-from", help="Reuse the vocabulary of a corpus "
                          "prepared earlier (its directory), e.g. to evaluate a model on new "
                          "data; the vocabulary options are then ignored.")


def _options(lowercase: bool, replace_digits: bool, vocab_size: int, max_train_len: int):
    from grammars.data.corpus import PrepareOptions

    at_least("--vocab-size", vocab_size, 0, "0 keeps every token")
    at_least("--max-train-len", max_train_len, 0, "0 means no cap")
    return PrepareOptions(lowercase, replace_digits, vocab_size, max_train_len)


def _load_vocab(vocab_from: Optional[Path]):
    if vocab_from is None:
        return None
    from grammars.data.vocabulary import Vocabulary

    return Vocabulary.load(vocab_from)


def _finish(corpus, out: Path, extra_files: dict | None = None) -> None:
    """Save, then print the notes and a summary table."""
    from rich.markup import escape
    from rich.table import Table

    from grammars.data.corpus import save_corpus

    save_corpus(corpus, out, extra_files)
    for note in corpus.notes:
        console.print(f"[dim]note:[/] {escape(note)}", highlight=False)
    manifest = corpus.manifest
    table = Table(title=escape(f"{corpus.kind} corpus → {out}"), title_justify="left")
    for column in ("split", "sentences", "mean len", "max len", "unk rate", "over length"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, stats in manifest["splits"].items():
        table.add_row(name, f"{stats['sentences']:,}", f"{stats['mean_length']:.1f}",
                      str(stats["max_length"]), f"{100 * stats['unk_rate']:.2f}%",
                      f"{stats['over_length']:,}")
    console.print(table)
    console.print(f"vocabulary: {len(corpus.vocab):,} tokens including <unk> "
                  f"(from {manifest['vocab_source']}); dropped with no words left: "
                  f"{manifest['dropped_empty']:,}; skipped malformed: "
                  f"{manifest['skipped_bad']:,}", highlight=False)
    leaves = manifest.get("leaves")
    if leaves:
        from grammars.data.tag_filter import TagFilter

        total = leaves["kept"] + leaves["dropped"]
        console.print(f"tag filter: {TagFilter.from_manifest(manifest['tag_filter']).describe()}"
                      f" kept {leaves['kept']:,} of {total:,} leaves "
                      f"({100 * leaves['kept'] / max(total, 1):.1f}%)", highlight=False)
    text = manifest.get("text")
    if text:
        console.print(f"tokenized: {text['tokenize']}; punctuation tokens "
                      + ("kept" if text["keep_punct"] else f"dropped: {text['punct_dropped']:,}")
                      , highlight=False)
    console.print(f"fingerprint: {manifest['fingerprint']}", highlight=False)


@app.command("ptb")
@friendly_errors
def ptb(
    paths: List[Path] = typer.Argument(..., help="`.mrg` files, directories (searched "
                                       "recursively for `.mrg`), or files with one bracketed "
                                       "tree per line. `#` lines between trees are comments."),
    out: Path = OUT,
    split: str = typer.Option("auto", "--split", help="auto: wsj when §02–21 and §23 are "
                              "visible (folders `02/`… or `wsj_SSxx` names), else ratio. "
                              "wsj: §02–21 train, §22 valid, §23 test (refused when no file "
                              "is in §02–21). ratio: by file, files sorted by name (see "
                              "--ratios); when there are too few files for every split with "
                              "a non-zero ratio to get one (e.g. a single file), the "
                              "sentences are split in file order instead, said in a note and "
                              "recorded in the manifest (split.by: sentence). none: every "
                              "tree in one split named `test`."),
    ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="train,valid,test fractions "
                               "of the FILES for --split ratio (cut points rounded); a 0 "
                               "makes that split empty."),
    lowercase: bool = LOWERCASE,
    replace_digits: bool = DIGITS,
    vocab_size: int = VOCAB_SIZE,
    max_train_len: int = typer.Option(40, "--max-train-len",
                                      help="Drop training sentences longer than this (after "
                                           "filtering); eval splits are never capped; 0 = "
                                           "no cap."),
    vocab_from: Optional[Path] = VOCAB_FROM,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip malformed trees (warning "
                                  "for each, count in the summary) instead of stopping."),
    keep_tags: str = typer.Option("ptb", "--keep-tags", help="Which leaves are words, by "
                                  "their tag: ptb (the 36 PTB word tags of Kim et al. 2019; "
                                  "drops punctuation, `$`, `#` and `-NONE-` traces), "
                                  "all-but-punct (every leaf whose tag is not punctuation, "
                                  "see --punct-tags, or the trace tag -NONE-: for treebanks "
                                  "of other languages, e.g. the Chinese Treebank), a "
                                  "comma-separated LIST of tags to keep (NN,NR,VV,AD,...) or "
                                  "a FILE of them (one or more a line, `#` comments). Tags "
                                  "are compared exactly; a filter that drops more than half "
                                  "the leaves is warned about, naming the tags it dropped "
                                  "most."),
    punct_tags: Optional[str] = typer.Option(None, "--punct-tags", help="With --keep-tags "
                                             "all-but-punct: the tags that are punctuation, "
                                             "a LIST or FILE replacing the default (the "
                                             "PTB's `` '' , . : -LRB- -RRB- # $, and PU, "
                                             "PUNCT, $( $, $. and PONCT of the Chinese, "
                                             "Universal Dependencies, German and French "
                                             "treebanks)."),
) -> None:
    """Read PTB-style treebanks and keep the words (by default the 36 PTB word tags, Kim
    et al. 2019 preprocessing; --keep-tags for treebanks tagged otherwise).

    Drops punctuation, `-NONE-` traces and constituents left empty; strips nothing else
    from the gold trees (function tags and unary chains do not change spans). Sentences with
    no word left are dropped and counted.
    """
    from grammars.data.corpus import check_output_dir, parse_ratios, prepare_ptb
    from grammars.data.tag_filter import resolve_tag_filter

    options = _options(lowercase, replace_digits, vocab_size, max_train_len)
    parsed_ratios = parse_ratios(ratios)
    tag_filter = resolve_tag_filter(keep_tags, punct_tags)
    check_output_dir(out)           # before any input is read: a refusal changes nothing
    corpus = prepare_ptb(paths, options, split=split, ratios=parsed_ratios,
                         vocab=_load_vocab(vocab_from), skip_bad=skip_bad, on_warning=warn,
                         tag_filter=tag_filter)
    corpus.manifest["vocab_from"] = None if vocab_from is None else str(vocab_from)
    _finish(corpus, out)


@app.command("text")
@friendly_errors
def text(
    file: Path = typer.Argument(..., help="Raw sentences, one per line (see --tokenize); "
                                "blank lines, lines starting with `#` and lines of "
                                "punctuation only are skipped (each sentence's `source` "
                                "keeps its line number)."),
    out: Path = OUT,
    vocab_from: Optional[Path] = VOCAB_FROM,
    lowercase: bool = LOWERCASE,
    replace_digits: bool = DIGITS,
    vocab_size: int = VOCAB_SIZE,
    tokenize: str = typer.Option("ptb", "--tokenize", help="ptb: Penn-Treebank-style "
                                 "splitting of punctuation, quotes, contractions and currency "
                                 "(`don't` -> `do n't`, `$1.5` -> `$ 1.5`, `1990.` -> `1990 "
                                 ".`); whitespace: split on spaces only, for text tokenized "
                                 "already."),
    keep_punct: bool = typer.Option(False, "--keep-punct", help="Keep punctuation tokens "
                                    "(`, . `` '' -LRB- $ #`...); by default they are dropped, "
                                    "as the 36 word tags drop punctuation leaves from "
                                    "treebanks."),
) -> None:
    """Prepare raw text for parsing with a trained model: one split `test`, no gold trees.

    Without --vocab-from the vocabulary is built from the file itself.
    """
    from gfnem_cli.engine.errors import GfnemError
    from grammars.data.corpus import check_output_dir, prepare_text
    from grammars.data.raw_text import TextOptions

    options = _options(lowercase, replace_digits, vocab_size, 0)
    text_options = TextOptions(tokenize, keep_punct).check()
    if file.is_dir():
        raise GfnemError("is a directory, not a text file", file,
                         hint="give one file of sentences, one per line")
    if not file.is_file():
        raise GfnemError("no such file", file)
    check_output_dir(out)
    corpus = prepare_text(file, options, vocab=_load_vocab(vocab_from), on_warning=warn,
                          text_options=text_options)
    corpus.manifest["vocab_from"] = None if vocab_from is None else str(vocab_from)
    _finish(corpus, out)


@app.command("synthetic")
@friendly_errors
def synthetic(
    out: Path = OUT,
    num_sentences: int = typer.Option(2000, "--num-sentences",
                                      help="How many trees to sample from the known grammar "
                                           "(>= 1)."),
    max_length: int = typer.Option(20, "--max-length",
                                   help="Longest sentence the sampler may produce (>= 2)."),
    seed: int = typer.Option(0, "--seed", help="Sampler seed: same seed, same corpus."),
    ratios: str = typer.Option("0.8,0.1,0.1", "--ratios",
                               help="train,valid,test fractions, split by sentence order; "
                                    "a 0 makes that split empty."),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="Draw from this grammar "
                                           "instead of the embedded one: a JSON file in the "
                                           "format every synthetic corpus stores as "
                                           "`grammar.json` (a CNF PCFG: `nonterminals`, "
                                           "`preterminals` among the 36 PTB word tags, "
                                           "`roots` {NT: p}, `rules` [[NT, LEFT, RIGHT, p]], "
                                           "`emissions` [[TAG, WORD, p]]; optional `name`, "
                                           "`description`, `version` 1). The format and a "
                                           "worked example: examples/grammars/README.md. "
                                           "Checked whole before anything is written: each "
                                           "defect (bad JSON, an unknown symbol, a sum not "
                                           "1, an unreachable or non-terminating symbol, "
                                           "unbounded recursion) is a one-line error."),
) -> None:
    """Sample a treebank from a known grammar (with gold trees) and prepare it.

    Words are kept as sampled (no lowercasing, no digit replacement, every training word in
    the vocabulary) so the corpus matches the true grammar, written to `grammar.json`; the
    embedded English-like grammar unless --grammar names another.
    """
    from grammars.data import synthetic as sampler
    from grammars.data.corpus import PrepareOptions, check_output_dir, parse_ratios, prepare_trees

    at_least("--num-sentences", num_sentences, 1)
    at_least("--max-length", max_length, 2, "a grammar in normal form needs two words")
    parsed_ratios = parse_ratios(ratios)
    check_output_dir(out)
    recorded = {"num_sentences": num_sentences, "max_length": max_length, "seed": seed}
    if grammar is None:
        trees = sampler.sample_treebank(num_sentences=num_sentences, seed=seed,
                                        max_length=max_length)
        stored = sampler.true_grammar_json()
    else:
        from grammars.data.grammar_file import read_grammar_file

        source = read_grammar_file(grammar)          # every check, before any write
        trees = source.true_grammar().sample(num_sentences, seed, max_length)
        for warning in source.warnings:
            warn(warning)
        console.print(source.describe(max_length), highlight=False)
        stored = source.grammar
        recorded["grammar"] = {"file": str(grammar), "name": stored["name"],
                               "sha256": source.sha256}
    options = PrepareOptions(lowercase=False, replace_digits=False, vocab_size=0,
                             max_train_len=0)
    corpus = prepare_trees(trees, options, parsed_ratios, kind="synthetic",
                           name="synthetic", on_warning=warn)
    corpus.manifest["synthetic"] = recorded
    _finish(corpus, out, {"grammar.json": stored})


IMAGE_OUT = typer.Option(..., "--out", "-o", help="Output directory for the image set (a "
                         "datasets DatasetDict plus manifest.json with checksums). An existing "
                         "prepared set there is replaced; any other non-empty directory is "
                         "refused.")


def _image_summary(manifest: dict, out: Path) -> None:
    from rich.markup import escape

    sizes = ", ".join(f"{name} {s['images']:,}" for name, s in manifest["splits"].items())
    line = (f"[bold green]prepared[/] {manifest['kind']} ({manifest['protocol']}) "
            f"{manifest['image_shape'][0]}x{manifest['image_shape'][1]} images: {sizes} "
            f"-> {escape(str(out))}")
    if manifest.get("true_nll", {}).get("test") is not None:
        line += f"; true test NLL {manifest['true_nll']['test']:.3f} nats/image"
    console.print(line, highlight=False, soft_wrap=True)
    for note in manifest.get("notes", []):
        console.print(f"[dim]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


@app.command("shapes")
@friendly_errors
def shapes(
    out: Path = IMAGE_OUT,
    train: int = typer.Option(10000, "--train", help="Training images (>= 0)."),
    valid: int = typer.Option(1000, "--valid", help="Validation images (>= 0)."),
    test: int = typer.Option(1000, "--test", help="Test images (>= 0)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same images."),
) -> None:
    """Binary 28x28 images from a known discrete-latent model (a 4x4 grid of K = 4 stroke
    codes with a Markov-chain prior, pixel noise); the exact NLL is stored as the floor."""
    from vae.data import prepare_shapes
    from vae.data.disk import check_output_dir

    for option, value in (("--train", train), ("--valid", valid), ("--test", test)):
        at_least(option, value, 0)
    at_least("--seed", seed, 0)
    check_output_dir(out)
    manifest = prepare_shapes(out, {"train": train, "valid": valid, "test": test}, seed)
    _image_summary(manifest, out)


@app.command("mnist")
@friendly_errors
def mnist(
    path: Path = typer.Argument(..., help="threshold: the folder of the four gzipped IDX "
                                "files; static: binarized_mnist_uint8.npz or its folder."),
    out: Path = IMAGE_OUT,
    protocol: str = typer.Option("threshold", "--protocol", help="threshold (grey/255 > 0.5, "
                                 "60k/10k, the paper's) or static (Larochelle & Murray, "
                                 "50k/10k/10k, checksums checked)."),
    valid_size: int = typer.Option(5000, "--valid-size", help="threshold: training images "
                                   "held out for validation (fixed seed); 0 keeps the paper's "
                                   "60k."),
) -> None:
    """Binary MNIST, every defect of the input a one-line error before anything is written."""
    from vae.data import prepare_mnist
    from vae.data.disk import check_output_dir
    from vae.data.mnist import PROTOCOLS

    if protocol not in PROTOCOLS:
        from gfnem_cli.engine.errors import GfnemError

        raise GfnemError(f"unknown --protocol {protocol!r}", hint="use threshold or static")
    at_least("--valid-size", valid_size, 0, "0 keeps every training image")
    check_output_dir(out)
    manifest = prepare_mnist(path, out, protocol, valid_size)
    _image_summary(manifest, out)
