"""What a trained run reads to parse: raw text files or a split of a prepared corpus.

Raw text is normalized exactly as the run's training corpus was (the options recorded in its
manifest) and encoded with the run's own vocabulary, so unknown words become `<unk>` inside
the model only; the original words are kept for the output. A corpus that is not the run's
own is said to be so, with the share of its words the run cannot see (`<unk>`): a perplexity
over a split that is 90% `<unk>` is exact, and meaningless.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from gfnem_cli.engine.errors import GfnemError
from grammars.data.corpus import PrepareOptions, load_corpus, prepare_text
from grammars.data.vocabulary import Vocabulary, normalize_word


@dataclass
class ParseInput:
    words: list[list[str]]
    ids: list[list[int]]
    gold_spans: list[list[tuple[int, int]]] | None   # None for raw text
    source: str
    skipped_lines: int = 0                           # blank and `#` lines of raw text


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
                     on_warning=None) -> ParseInput:
    """Raw text, or (a directory) one split of a prepared corpus."""
    path = Path(path)
    if path.is_dir():
        return corpus_parse_input(load_corpus(path), run_dir, vocab, split, on_warning)
    if not path.exists():
        raise GfnemError("input not found", path)
    prepared = prepare_text(path, run_prepare_options(run_dir), vocab, on_warning)
    words = [s.words for s in prepared.splits["test"]]
    lines = prepared.manifest["inputs"].get("line_count", len(words))
    return ParseInput(words, prepared.ids["test"], None, str(path), lines - len(words))


def corpus_parse_input(corpus, run_dir: Path, vocab: Vocabulary, split: str,
                       on_warning: Callable[[str], None] | None = None) -> ParseInput:
    """One split encoded with the run's vocabulary; a warning when the corpus is not the
    one the run was trained on, with the split's `<unk>` rate under the run's vocabulary."""
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
        ids = [vocab.encode([normalize_word(w, options.lowercase, options.replace_digits)
                             for w in row]) for row in words]
    spans = [[tuple(s) for s in row] for row in corpus.column(split, "gold_spans")]
    trained_on = run_manifest(run_dir).get("fingerprint")
    if trained_on is not None and trained_on != corpus.manifest.get("fingerprint"):
        tokens = sum(len(row) for row in ids)
        unknown = sum(row.count(0) for row in ids)
        rate = 100 * unknown / tokens if tokens else 0.0
        how = ("its vocabulary is the run's" if same_vocab else
               "its vocabulary is not the run's, so its words were encoded with the run's")
        (on_warning or _ignore)(
            f"{corpus.path} is not the corpus {run_dir} was trained on (another "
            f"fingerprint); {how}: {rate:.2f}% of the {tokens:,} words of split {split!r} "
            "are <unk> to the model")
    return ParseInput(words, ids, spans, f"{corpus.path}[{split}]")


def _ignore(_: str) -> None:
    pass
