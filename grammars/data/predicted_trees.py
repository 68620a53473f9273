"""A file of predicted trees (`evaluate --pred`) read as span lists aligned with a split.

One tree per sentence, in the split's order; each tree's leaves must be the sentence's words
(or, when given, their normalized forms), since silently misaligned predictions give a
meaningless F1, so every mismatch is an error naming the file and the line.

Trees that still carry what the corpus's preprocessing removed (punctuation leaves, `-NONE-`
traces, PTB tags and function tags: the split's own original trees, another parser's output
over the treebank's tokens) are accepted by applying the corpus's own tag filter to a tree
whose leaves are not the sentence's as they stand; and trees that filter leaves with no word
at all (prepare dropped them) are skipped when that makes the count right. Labels never
matter: F1 is unlabeled.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gfnem_cli.engine.errors import GfnemError
from grammars.data.tag_filter import TagFilter
from grammars.data.treebank import (Span, SourcedTree, clean_tree, escape_word, parse_bracketed,
                                    read_text, split_lines)


@dataclass
class PredictedSpans:
    spans: list[list[Span]]          # one list per sentence of the split
    filtered: int = 0                # trees read through the corpus's tag filter
    skipped: int = 0                 # trees the filter leaves with no word, skipped


def read_predicted_spans(path: Path, reference: Sequence[Sequence[str]],
                         alternative: Sequence[Sequence[str]] | None = None,
                         split: str = "test", sources: Sequence[str] | None = None,
                         on_warning: Callable[[str], None] | None = None,
                         tag_filter: TagFilter | None = None) -> list[list[Span]]:
    """Spans of a file of predicted trees aligned one-to-one with `reference` sentences."""
    return read_predicted_trees(path, reference, alternative, split, sources, on_warning,
                                tag_filter).spans


def read_predicted_trees(path: Path, reference: Sequence[Sequence[str]],
                         alternative: Sequence[Sequence[str]] | None = None,
                         split: str = "test", sources: Sequence[str] | None = None,
                         on_warning: Callable[[str], None] | None = None,
                         tag_filter: TagFilter | None = None) -> PredictedSpans:
    """As `read_predicted_spans`, saying how many trees needed `tag_filter` (the corpus's)."""
    text = read_text(Path(path), on_warning)
    trees, _ = parse_bracketed(text, path)
    skipped = 0
    if tag_filter is not None and len(trees) > len(reference):
        worded = [t for t in trees if clean_tree(t.tree, tag_filter)[0]]
        if len(worded) == len(reference):
            skipped, trees = len(trees) - len(worded), worded
    if len(trees) != len(reference):
        raise _count_mismatch(text, trees, reference, split, path)
    result = PredictedSpans([], 0, skipped)
    for index, item in enumerate(trees):
        words, spans = clean_tree(item.tree, keep_tags=None)
        if _matches(words, index, reference, alternative):
            result.spans.append(spans)
            continue
        note = ""
        if tag_filter is not None:
            kept, kept_spans = clean_tree(item.tree, tag_filter)
            if _matches(kept, index, reference, alternative):
                result.spans.append(kept_spans)
                result.filtered += 1
                continue
            if 0 < len(kept) < len(words):   # tagged as the corpus: say what it kept
                words, note = kept, (f" (its words as the corpus's tag filter, "
                                     f"{tag_filter.describe()}, keeps them)")
        expected = [escape_word(w) for w in reference[index]]
        raise GfnemError(_word_mismatch(words, expected, index, split, sources) + note,
                         path, item.line)
    return result


def _matches(words: list[str], index: int, reference: Sequence[Sequence[str]],
             alternative: Sequence[Sequence[str]] | None) -> bool:
    if words == [escape_word(w) for w in reference[index]]:
        return True
    return alternative is not None and words == [escape_word(w) for w in alternative[index]]


def _count_mismatch(text: str, trees: list[SourcedTree], reference: Sequence[Sequence[str]],
                    split: str, path: Path) -> GfnemError:
    message = (f"{len(trees):,} trees for the {len(reference):,} sentences of split "
               f"{split!r}")
    where = trees[len(reference)].line if len(trees) > len(reference) else (
        trees[-1].line if trees else None)
    blank = next((k for k, line in enumerate(split_lines(text), start=1)
                  if not line.strip()), None)
    if blank is not None and len(trees) < len(reference):
        # the likely cause: a parser wrote a blank line for a sentence it could not parse
        message += (f"; line {blank} is blank (blank and `#` lines between trees are "
                    "skipped, never read as a parse)")
        where = blank
    return GfnemError(message, path, where,
                      hint="write one tree per sentence, in the split's order")


def _word_mismatch(words: list[str], expected: list[str], index: int, split: str,
                   sources: Sequence[str] | None) -> str:
    origin = f" ({sources[index]})" if sources else ""
    sentence = f"sentence {index + 1} of split {split!r}{origin}"
    if len(words) != len(expected):
        return f"tree has {len(words)} words but {sentence} has {len(expected)}"
    at = next(i for i, (a, b) in enumerate(zip(words, expected)) if a != b)
    return f"word {at + 1} is `{words[at]}` but {sentence} has `{expected[at]}`"
