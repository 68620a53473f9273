"""Prepared corpora: from trees or raw text to a saved `datasets.DatasetDict` and back.

A prepared corpus directory holds the DatasetDict (one row per sentence: `words`, `tokens`,
`ids`, `gold_spans`, `tree`, `source`), `vocab.json` and `manifest.json` (kind, options,
counts per split and a content fingerprint, so a checkpoint can refuse another data set).
Every split decision is recorded in the manifest, because a ratio split of a PTB sample is
not the standard WSJ split and reports must say which one was used. An empty result is an
error that gives the counts of what was read, skipped and dropped, so the cause is visible.
Splitting lives in `corpus_splits`, the files on disk in `corpus_disk`, the choice of which
leaves are words in `tag_filter`, the reading of raw lines in `raw_text`.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from gfnem_cli.engine.errors import GfnemError
from grammars.data.corpus_disk import (MANIFEST_FORMAT, Corpus, check_output_dir,  # noqa: F401
                                  load_corpus, save_corpus, to_dataset_dict)
from grammars.data.corpus_splits import (SPLITS, WSJ_SECTIONS, check_ratios,  # noqa: F401
                                    choose_split, parse_ratios, ratio_bounds, split_files,
                                    starved_splits)
from grammars.data.raw_text import TextOptions, read_text_lines
from grammars.data.tag_filter import PTB, LeafCounts, TagFilter
from grammars.data.treebank import (SourcedTree, Span, clean_tree, collect_files,
                               parse_bracketed, read_text)
from grammars.data.vocabulary import Vocabulary, normalize_word

Warn = Callable[[str], None]


@dataclass
class Sentence:
    """One kept sentence before encoding: original words, gold spans, where it came from."""

    words: list[str]
    gold_spans: list[Span]
    tree: str
    source: str


@dataclass
class PrepareOptions:
    """The normalization steps of DESIGN §6, each switchable and recorded in the manifest."""

    lowercase: bool = True
    replace_digits: bool = True
    vocab_size: int = 10000          # top-k training tokens, plus <unk>; 0 keeps all
    max_train_len: int = 40          # cap on the training split only; 0 = none


@dataclass
class SplitStats:
    sentences: int
    tokens: int
    mean_length: float
    max_length: int
    unk_rate: float
    over_length: int = 0             # training sentences dropped by --max-train-len


@dataclass
class PreparedCorpus:
    """Sentences per split, encoded with `vocab`; `notes` are decisions worth telling the user."""

    kind: str
    splits: dict[str, list[Sentence]]
    ids: dict[str, list[list[int]]]
    tokens: dict[str, list[list[str]]]
    vocab: Vocabulary
    manifest: dict
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- from trees

@dataclass
class TreeCounts:
    """What reading a treebank did, for the manifest and for an empty corpus's message."""

    files: int = 0
    trees: int = 0
    bad: int = 0
    dropped: int = 0
    dropped_tags: Counter = field(default_factory=Counter)   # leaf tags of dropped trees
    leaves: LeafCounts = field(default_factory=LeafCounts)    # every leaf, kept or dropped


def sentences_from_trees(trees: Sequence[SourcedTree], counts: TreeCounts | None = None,
                         tag_filter: TagFilter = PTB) -> tuple[list[Sentence], int]:
    """Clean each tree (the filter's tags only); sentences left with no words are dropped
    and counted."""
    kept: list[Sentence] = []
    for item in trees:
        words, spans = clean_tree(item.tree, tag_filter)
        if counts is not None:
            counts.leaves.add(item.tree, tag_filter)
        if words:
            kept.append(Sentence(words, spans, item.tree.to_string(), item.source))
        elif counts is not None:
            counts.dropped_tags.update(tag for tag, _ in item.tree.leaves())
    if counts is not None:
        counts.trees += len(trees)
        counts.dropped += len(trees) - len(kept)
    return kept, len(trees) - len(kept)


def _read_treebank(files: Sequence[Path], skip_bad: bool, warn: Warn, counts: TreeCounts,
                   tag_filter: TagFilter = PTB) -> list[list[Sentence]]:
    """Kept sentences per file, in file order; malformed trees skipped (warned) or raised."""
    per_file = []
    for path in files:
        trees, errors = parse_bracketed(read_text(path, warn), path, skip_bad)
        for error in errors:
            warn(f"skipped: {error}")
        counts.files += 1
        counts.bad += len(errors)
        per_file.append(sentences_from_trees(trees, counts, tag_filter)[0])
    return per_file


def prepare_ptb(paths: Sequence[object], options: PrepareOptions, split: str = "auto",
                ratios: Sequence[float] = (0.8, 0.1, 0.1), vocab: Vocabulary | None = None,
                skip_bad: bool = False, on_warning: Warn | None = None,
                tag_filter: TagFilter = PTB) -> PreparedCorpus:
    """Read bracketed trees from files/directories, clean (keeping `tag_filter`'s leaves),
    split by file, encode; a filter that drops more than half the leaves is warned about.

    A ratio split that would leave an asked-for split with no file (one file, or two for
    three splits) splits the sentences in file order instead, said in a note and recorded
    as `split.by: sentence` in the manifest.
    """
    warn = on_warning or _ignore
    ratios = check_ratios(ratios)
    files = collect_files(paths)
    mode, note = choose_split(split, files)
    notes = [note] if note else []
    counts = TreeCounts()
    starved = starved_splits(len(files), ratios) if mode == "ratio" else []
    if starved:
        per_file = _read_treebank(files, skip_bad, warn, counts, tag_filter)
        kept = [s for sentences in per_file for s in sentences]
        cuts = ratio_bounds(len(kept), ratios)
        splits = {name: kept[cuts[i]:cuts[i + 1]] for i, name in enumerate(SPLITS)}
        reason = (f"{len(files)} file{'s' if len(files) != 1 else ''} cannot be split "
                  f"{','.join(f'{r:g}' for r in ratios)} by file without leaving "
                  f"{' and '.join(starved)} empty")
        notes.append(f"{reason}: splitting the {len(kept):,} sentences in file order instead")
        split_record = {"mode": mode, "ratios": list(ratios), "by": "sentence",
                        "fallback": reason,
                        "sentences": {n: [cuts[i], cuts[i + 1]] for i, n in enumerate(SPLITS)}}
        outside: list[Path] = []
    else:
        by_split, outside = split_files(mode, files, ratios)
        splits = {name: [s for sentences in _read_treebank(members, skip_bad, warn, counts,
                                                           tag_filter)
                         for s in sentences] for name, members in by_split.items()}
        split_record = {"mode": mode, "ratios": list(ratios) if mode == "ratio" else None,
                        "by": "file",
                        "files": {name: _file_range(m) for name, m in by_split.items()}}
    if outside:
        notes.append(f"{len(outside)} files outside §02–23 are not in any split")
    extra = {"inputs": {"paths": [str(p) for p in paths], "files": len(files),
                        "trees": counts.trees, "files_outside_splits": len(outside)},
             "split": split_record, "skipped_bad": counts.bad, "dropped_empty": counts.dropped,
             "tag_filter": tag_filter.to_manifest(), "leaves": counts.leaves.to_manifest()}
    intended = {n for i, n in enumerate(SPLITS) if ratios[i] == 0} if mode == "ratio" else set()
    too_many = counts.leaves.warning(tag_filter)
    if too_many:
        warn(too_many)
    corpus = assemble("ptb", splits, options, vocab, extra, on_warning, intended,
                      lambda over: _empty_treebank(counts, over, options, paths, tag_filter))
    corpus.notes[:0] = notes
    return corpus


def _empty_treebank(counts: TreeCounts, over: int, options: PrepareOptions,
                    paths: Sequence[object], tag_filter: TagFilter = PTB) -> GfnemError:
    """Why nothing is left, in numbers, and the likeliest fix."""
    message = (f"empty corpus: no sentence with words is left ({counts.trees:,} trees read "
               f"from {counts.files:,} file{'s' if counts.files != 1 else ''}; "
               f"{counts.bad:,} skipped as malformed; {counts.dropped:,} left with no word "
               f"once non-word leaves were dropped; {over:,} training sentences over "
               f"--max-train-len {options.max_train_len})")
    hint = "check the input paths"
    if counts.dropped and not any(tag in tag_filter for tag in counts.dropped_tags):
        seen = ", ".join(tag for tag, _ in counts.dropped_tags.most_common(6))
        if tag_filter is PTB:
            message += (f"; the leaf tags seen ({seen}) are not PTB word tags (only the 36 "
                        "word tags of Kim et al. 2019, NN, VBD, ..., are kept)")
        else:
            message += f"; the leaf tags seen ({seen}) are none of {tag_filter.describe()}"
        hint = ("name this treebank's word tags with --keep-tags LIST|FILE, or use "
                "--keep-tags all-but-punct")
    elif over:
        hint = "raise --max-train-len, or 0 for no cap"
    elif counts.bad:
        hint = "fix the malformed trees"
    where = paths[0] if len(paths) == 1 else None
    return GfnemError(message, where, hint=hint)


def prepare_trees(trees: Sequence[str], options: PrepareOptions, ratios: Sequence[float],
                  kind: str, name: str, on_warning: Warn | None = None) -> PreparedCorpus:
    """Tree strings with no files (the synthetic sampler): ratio split by sentence order."""
    ratios = check_ratios(ratios)
    text = "\n".join(" ".join(tree.split()) for tree in trees)
    counts = TreeCounts(files=1)
    parsed, _ = parse_bracketed(text, name)
    kept, dropped = sentences_from_trees(parsed, counts)
    cuts = ratio_bounds(len(kept), ratios)
    splits = {split: kept[cuts[i]:cuts[i + 1]] for i, split in enumerate(SPLITS)}
    extra = {"inputs": {"trees": len(parsed)},
             "split": {"mode": "ratio", "ratios": list(ratios), "by": "sentence"},
             "skipped_bad": 0, "dropped_empty": dropped}
    intended = {n for i, n in enumerate(SPLITS) if ratios[i] == 0}
    return assemble(kind, splits, options, None, extra, on_warning, intended,
                    lambda over: _empty_treebank(counts, over, options, [name]))


def prepare_text(path: Path, options: PrepareOptions, vocab: Vocabulary | None = None,
                 on_warning: Warn | None = None,
                 text_options: TextOptions = TextOptions()) -> PreparedCorpus:
    """Raw sentences, one per line, tokenized as `text_options` say (`raw_text`); blank,
    `#` and punctuation-only lines skipped, each sentence's `source` its own line."""
    read = read_text_lines(Path(path), text_options, on_warning)
    sentences = [Sentence(line.words, [], "", f"{path}:{line.number}")
                 for line in read.sentences]
    extra = {"inputs": {"paths": [str(path)], "lines": len(sentences),
                        "line_count": len(read.lines)},
             "text": {**text_options.to_manifest(), "punct_dropped": read.punct_dropped,
                      "punct_only_lines": read.punct_only},
             "split": {"mode": "none"}, "skipped_bad": 0, "dropped_empty": read.punct_only}
    return assemble("text", {"test": sentences}, options, vocab, extra, on_warning, set(),
                    lambda _: read.nothing_to_read())


def _file_range(files: Sequence[Path]) -> dict:
    return {"count": len(files), "first": str(files[0]) if files else None,
            "last": str(files[-1]) if files else None}


def _ignore(_: str) -> None:
    pass


# --------------------------------------------------------------------------- assembling

def assemble(kind: str, splits: dict[str, list[Sentence]], options: PrepareOptions,
             vocab: Vocabulary | None, extra: dict, on_warning: Warn | None = None,
             intended_empty: set[str] = frozenset(),
             empty_error: Callable[[int], GfnemError] | None = None) -> PreparedCorpus:
    """Cap the training split, normalize, build or reuse the vocabulary, encode, fingerprint.

    Nothing left is `empty_error(over_length)`, the reader's own account of why; a split
    left empty that was not asked to be (ratio 0) is a warning.
    """
    warn = on_warning or _ignore
    over = 0
    if "train" in splits and options.max_train_len > 0:
        capped = [s for s in splits["train"] if len(s.words) <= options.max_train_len]
        over = len(splits["train"]) - len(capped)
        splits = {**splits, "train": capped}
    if not any(splits.values()):
        raise (empty_error(over) if empty_error is not None
               else GfnemError("empty corpus: no sentence with words is left"))
    for name, sentences in splits.items():
        if not sentences and name not in intended_empty:
            warn(f"split {name!r} is empty: commands that name it will refuse it")
    tokens = {name: [[normalize_word(w, options.lowercase, options.replace_digits)
                      for w in s.words] for s in sentences]
              for name, sentences in splits.items()}
    vocab_source = "vocab-from" if vocab is not None else (
        "train" if tokens.get("train") else "all")
    if vocab is None:
        pool = tokens["train"] if tokens.get("train") else [t for ts in tokens.values() for t in ts]
        vocab = Vocabulary.build(pool, options.vocab_size)
    ids = {name: [vocab.encode(t) for t in ts] for name, ts in tokens.items()}
    stats = {name: asdict(_stats(ids[name], over if name == "train" else 0)) for name in splits}
    manifest = {"format": MANIFEST_FORMAT, "kind": kind, "options": asdict(options),
                **extra, "splits": stats, "vocab_size": len(vocab), "vocab_source": vocab_source,
                "fingerprint": fingerprint(ids, {n: [s.gold_spans for s in ss]
                                                 for n, ss in splits.items()})}
    return PreparedCorpus(kind, splits, ids, tokens, vocab, manifest)


def _stats(ids: list[list[int]], over_length: int) -> SplitStats:
    lengths = [len(row) for row in ids]
    total = sum(lengths)
    unknown = sum(row.count(0) for row in ids)
    return SplitStats(len(ids), total, round(total / len(ids), 3) if ids else 0.0,
                      max(lengths, default=0), round(unknown / total, 6) if total else 0.0,
                      over_length)


def fingerprint(ids: dict[str, list[list[int]]], spans: dict[str, list[list[Span]]]) -> str:
    """sha256 over every split's token ids and gold spans: equal content ⇔ equal digest."""
    digest = hashlib.sha256()
    for name in sorted(ids):
        payload = {"split": name, "ids": ids[name], "spans": [[list(s) for s in row]
                                                               for row in spans[name]]}
        digest.update(json.dumps(payload, separators=(",", ":")).encode())
    return "sha256:" + digest.hexdigest()
