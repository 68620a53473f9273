"""What a trained run reads to parse: raw text, a bracketed treebank, or a corpus split.

Which one is told by the input itself, whatever its name: a folder is a prepared corpus (a
folder of `.mrg` files is refused with the `prepare ptb` command that makes one); a file is a
treebank when its content is bracketed trees (`looks_like_treebank`), raw text otherwise.

Raw text is tokenized (`raw_text`, PTB-style by default, punctuation dropped), then
normalized exactly as the run's training corpus was (the options recorded in its manifest);
a treebank is cleaned with the run's own tag filter and normalized the same way. Both give
one row per line (text) or per tree (treebank), empty rows included, so the output can
answer line for line. Everything is encoded with the run's own vocabulary, so unknown words
become `<unk>` inside the model only; the original words are kept for the output, and
`unknown_words` counts what the model cannot see. A corpus that is not the run's own (another
fingerprint, or another vocabulary) is said to be so, with its `<unk>` rate: a perplexity over
a split that is 90% `<unk>` is exact, and meaningless. Rows keep where they came from and,
but for raw text, their original trees and the filter that made their words, for the gold
file written beside the parses (`gold_trees`).
"""
from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from gfnem_cli.engine.errors import GfnemError
from grammars.data.corpus import PrepareOptions, load_corpus
from grammars.data.raw_text import TextOptions, text_lines
from grammars.data.tag_filter import PTB_PUNCT_TAGS, LeafCounts, TagFilter
from grammars.data.treebank import clean_tree, parse_bracketed, read_text, split_lines
from grammars.data.vocabulary import Vocabulary, normalize_word

UNK_WARN_RATE = 0.05             # above this share of <unk> words, `parse` warns


@dataclass
class ParseInput:
    words: list[list[str]]                           # one row per output line; [] is `()`
    ids: list[list[int]]
    gold_spans: list[list[tuple[int, int]]] | None   # None for raw text
    source: str
    kind: str = "corpus"                             # corpus | treebank | text
    tokens: list[list[str]] | None = None            # normalized forms, as the model sees
    notes: list[str] = field(default_factory=list)
    sources: list[str] | None = None                 # `file:line` of each row
    trees: list[str] | None = None                   # each row's original tree; None: text
    tag_filter: TagFilter | None = None              # what made `words` of `trees`

    @property
    def empty_rows(self) -> int:
        return sum(1 for row in self.words if not row)


def run_manifest(run_dir: Path) -> dict:
    """The run's copy of its training corpus's manifest ({} for runs that have none)."""
    path = Path(run_dir) / "corpus_manifest.json"
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise GfnemError(f"unreadable run file: {str(exc).splitlines()[0]}", path,
                         hint="copy the training corpus's manifest.json here again") from None
    if not isinstance(manifest, dict):
        raise GfnemError("unreadable run file: not a JSON object", path)
    return manifest


def run_prepare_options(run_dir: Path):
    options = run_manifest(run_dir).get("options", {})
    if not isinstance(options, dict):
        options = {}
    kinds = {f.name: type(f.default) for f in fields(PrepareOptions)}
    return PrepareOptions(**{k: v for k, v in options.items()
                             if k in kinds and isinstance(v, kinds[k])})


def read_parse_input(path: Path, run_dir: Path, vocab: Vocabulary, split: str = "test",
                     on_warning=None, text_options: TextOptions | None = None) -> ParseInput:
    """A corpus split (a folder), a treebank or raw text (a file, told by its content).

    `text_options` None means the defaults, not given: given ones are refused for inputs
    that are not raw text, as is a `split` other than `test` for a file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "manifest.json").exists() and any(path.rglob("*.mrg")):
            raise GfnemError("a folder of .mrg files, not a prepared corpus; prepare it with "
                             "the run's preprocessing, then parse the prepared folder: "
                             + prepare_command(path, run_dir), path)
        _only_raw_text(text_options, path, "a corpus folder")
        return corpus_parse_input(load_corpus(path), run_dir, vocab, split, on_warning)
    if not path.exists():
        raise GfnemError("input not found", path)
    if split != "test":
        raise GfnemError(f"--split {split}: names a split of a corpus folder, but this is a "
                         "file", path, hint="drop --split")
    text = read_text(path, on_warning)
    if looks_like_treebank(text):
        _only_raw_text(text_options, path, "a bracketed treebank")
        return treebank_parse_input(text, path, run_dir, vocab, on_warning)
    return text_parse_input(text, path, run_dir, vocab, text_options or TextOptions())


def _only_raw_text(text_options: TextOptions | None, path: Path, what: str) -> None:
    if text_options is not None:
        raise GfnemError(f"--tokenize and --keep-punct apply to raw text, but this is {what} "
                         "(read with the run's own preprocessing)", path,
                         hint="drop them")


_TREE_START = re.compile(r"\(\s*(?:[^\s()]+\s*)?\(")


def looks_like_treebank(text: str) -> bool:
    """Bracketed trees rather than sentences: the first line that is not blank or a `#`
    comment opens a tree with a subtree (`( (S ...`, `(S (NP ...`, `(ROOT (S ...`), or the
    whole text reads as trees (`(NN dog)` lines). Raw text that merely starts with a
    bracket (`(Reuters) The company ...`) is neither."""
    for line in split_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not stripped.startswith("("):
            return False
        if _TREE_START.match(stripped):
            return True
        try:
            return bool(parse_bracketed(text)[0])
        except GfnemError:
            return False
    return False


def prepare_command(path: Path, run_dir: Path) -> str:
    """The `gfnem prepare ptb` command that prepares `path` as `run_dir`'s corpus was."""
    options = run_prepare_options(run_dir)
    tag_filter = TagFilter.from_manifest(run_manifest(run_dir).get("tag_filter"))
    out = path.with_name((path.stem if path.is_file() else path.name) + "-prepared")
    args = ["gfnem", "prepare", "ptb", str(path), "--out", str(out), "--split", "none",
            "--vocab-from", str(run_dir), *tag_filter.cli_args()]
    args += [] if options.lowercase else ["--no-lowercase"]
    args += [] if options.replace_digits else ["--no-replace-digits"]
    return f"`{shlex.join(args)}`"


def treebank_parse_input(text: str, path: Path, run_dir: Path, vocab: Vocabulary,
                         on_warning: Callable[[str], None] | None = None) -> ParseInput:
    """Every tree of a treebank file, cleaned by the run's tag filter and normalized as its
    corpus was; a tree left with no word is an empty row. A run that records no corpus
    manifest cannot say what its preprocessing was: refused, with the command to run."""
    manifest = run_manifest(run_dir)
    if not isinstance(manifest.get("options"), dict):
        raise GfnemError("a bracketed treebank, but the run records no corpus manifest, so "
                         "its preprocessing is unknown; prepare the treebank with the options "
                         "the run was trained with, then parse the prepared folder, e.g. "
                         + prepare_command(path, run_dir), path)
    trees, _ = parse_bracketed(text, path)
    tag_filter = TagFilter.from_manifest(manifest.get("tag_filter"))
    options = run_prepare_options(run_dir)
    counts = LeafCounts()
    words, spans = [], []
    for item in trees:
        kept, tree_spans = clean_tree(item.tree, tag_filter)
        counts.add(item.tree, tag_filter)
        words.append(kept)
        spans.append(tree_spans)
    if not any(words):
        raise GfnemError(f"none of the {len(trees):,} trees has a word the run's tag filter "
                         f"keeps ({tag_filter.describe()}; leaf tags seen: "
                         f"{', '.join(t for t, _ in counts.dropped.most_common(6))})", path,
                         hint="parse trees tagged as the run's training treebank was")
    too_many = counts.warning(tag_filter)
    if too_many:
        (on_warning or _ignore)(f"{path}: {too_many}")
    tokens = _normalize(words, options)
    data = ParseInput(words, [vocab.encode(row) for row in tokens], spans, str(path),
                      "treebank", tokens, sources=[item.source for item in trees],
                      trees=[item.tree.to_string() for item in trees], tag_filter=tag_filter)
    data.notes.append(f"{path} is a bracketed treebank: {len(trees):,} trees read with the "
                      f"run's preprocessing ({tag_filter.describe()}, {_describe(options)}); "
                      "one output line per tree")
    if data.empty_rows:
        data.notes.append(f"{_count(data.empty_rows, 'tree')} with no word the tag filter "
                          "keeps: written as ()")
    return data


def text_parse_input(text: str, path: Path, run_dir: Path, vocab: Vocabulary,
                     text_options: TextOptions) -> ParseInput:
    """One row per line of raw text: blank, `#` and punctuation-only lines give empty rows
    (a file with no sentence at all is refused)."""
    read = text_lines(text, path, text_options)
    if not read.sentences:
        raise read.nothing_to_read()
    words = [line.words for line in read.lines]
    tokens = _normalize(words, run_prepare_options(run_dir))
    data = ParseInput(words, [vocab.encode(row) for row in tokens], None, str(path), "text",
                      tokens, sources=[f"{path}:{line.number}" for line in read.lines])
    if read.punct_dropped:
        data.notes.append(f"{_count(read.punct_dropped, 'punctuation token')} dropped, as the "
                          "treebank's word tags drop them (--keep-punct keeps them)")
        tag_filter = TagFilter.from_manifest(run_manifest(run_dir).get("tag_filter"))
        kept = sorted(tag for tag in PTB_PUNCT_TAGS if tag in tag_filter)
        if kept:
            data.notes.append(f"but the run's corpus kept punctuation leaves (tags "
                              f"{' '.join(kept)}, {tag_filter.describe()}): --keep-punct "
                              "reads the text as it was trained")
    if data.empty_rows:
        data.notes.append(f"{_count(data.empty_rows, 'blank, `#` or punctuation-only line')}: "
                          "written as () (output line k is input line k)")
    return data


def _normalize(words: list[list[str]], options: PrepareOptions) -> list[list[str]]:
    return [[normalize_word(w, options.lowercase, options.replace_digits) for w in row]
            for row in words]


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _describe(options: PrepareOptions) -> str:
    return ", ".join(["lowercased" if options.lowercase else "case kept",
                      "digits -> N" if options.replace_digits else "digits kept"])


@dataclass
class UnknownWords:
    """The share of words that are `<unk>` under the run's vocabulary, and which."""

    words: int
    unknown: Counter

    @property
    def rate(self) -> float:
        return sum(self.unknown.values()) / self.words if self.words else 0.0

    def line(self, vocab_size: int) -> str:
        return (f"<unk>: {100 * self.rate:.2f}% of the {self.words:,} words are not in the "
                f"run's vocabulary ({vocab_size:,} tokens)")

    def warning(self) -> str | None:
        """Above 5%, with the ten most frequent unknown words (as the model looks them up)."""
        if self.rate <= UNK_WARN_RATE:
            return None
        most = ", ".join(f"{token} ({count:,})" for token, count
                         in sorted(self.unknown.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
        return (f"{100 * self.rate:.1f}% of the words are <unk> to the model (above "
                f"{100 * UNK_WARN_RATE:.0f}%); the most frequent unknown words: {most}")


def unknown_words(data: ParseInput) -> UnknownWords:
    tokens = data.tokens if data.tokens is not None else data.words
    unknown = Counter(token for row_ids, row in zip(data.ids, tokens)
                      for i, token in zip(row_ids, row) if i == 0)
    return UnknownWords(sum(len(row) for row in data.ids), unknown)


def corpus_parse_input(corpus, run_dir: Path, vocab: Vocabulary, split: str,
                       on_warning: Callable[[str], None] | None = None) -> ParseInput:
    """One split encoded with the run's vocabulary; a warning when the corpus is not the
    one the run was trained on or its vocabulary not the run's, with the split's `<unk>`
    rate under the run's vocabulary."""
    corpus.split(split)          # exists and holds sentences, else one line with every size
    words = corpus.column(split, "words")
    options = run_prepare_options(run_dir)
    same_vocab = corpus.vocab.tokens == vocab.tokens
    same_options = corpus.manifest.get("options", {}) == asdict(options)
    if same_vocab:
        ids = corpus.column(split, "ids")
    elif same_options:   # another vocabulary: re-encode its normalized tokens with the run's
        ids = [vocab.encode(t) for t in corpus.column(split, "tokens")]
    else:                # other normalization too: normalize the words as the run's corpus was
        ids = [vocab.encode(row) for row in _normalize(words, options)]
    spans = [[tuple(s) for s in row] for row in corpus.column(split, "gold_spans")]
    trained_on = run_manifest(run_dir).get("fingerprint")
    other_corpus = trained_on is not None and trained_on != corpus.manifest.get("fingerprint")
    if other_corpus or not same_vocab:
        tokens = sum(len(row) for row in ids)
        unknown = sum(row.count(0) for row in ids)
        rate = (f"{100 * unknown / tokens if tokens else 0.0:.2f}% of the {tokens:,} words of "
                f"split {split!r} are <unk> to the model")
        if other_corpus:
            how = ("its vocabulary is the run's" if same_vocab else
                   "its vocabulary is not the run's, so its words were encoded with the run's")
            message = (f"{corpus.path} is not the corpus {run_dir} was trained on (another "
                       f"fingerprint); {how}: {rate}")
        else:
            message = (f"the vocabulary of {corpus.path} is not the one {run_dir} was trained "
                       f"with, so its words were encoded with the run's: {rate}")
        (on_warning or _ignore)(message)
    has_trees = corpus.manifest.get("kind") != "text"
    return ParseInput(words, ids, spans, f"{corpus.path}[{split}]", "corpus",
                      _normalize(words, options), sources=corpus.column(split, "source"),
                      trees=corpus.column(split, "tree") if has_trees else None,
                      tag_filter=TagFilter.from_manifest(corpus.manifest.get("tag_filter")))


def _ignore(_: str) -> None:
    pass
