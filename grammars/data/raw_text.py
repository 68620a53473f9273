"""Raw text, one sentence per line, as `prepare text` and `parse` read it.

Every line gives a `TextLine`, blank ones and `#` comments included (with no words), so a
reader that must answer line for line (`parse` writes `()` for them) can, and one that keeps
sentences only (`prepare text`) drops them. Words come from `tokenize` (`ptb` by default)
with punctuation tokens dropped unless `keep_punct`, as the treebank's 36 word tags drop
punctuation leaves; a line of punctuation only is left with no words, and counted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from gfnem_cli.engine.errors import GfnemError
from grammars.data.tokenize import TOKENIZERS, words
from grammars.data.treebank import read_text, split_lines


@dataclass(frozen=True)
class TextOptions:
    """How raw lines become words; recorded in a text corpus's manifest."""

    tokenize: str = "ptb"            # ptb | whitespace
    keep_punct: bool = False

    def check(self) -> "TextOptions":
        if self.tokenize not in TOKENIZERS:
            raise GfnemError(f"unknown --tokenize {self.tokenize!r}",
                             hint="use " + " or ".join(TOKENIZERS))
        return self

    def to_manifest(self) -> dict:
        return asdict(self)


@dataclass
class TextLine:
    number: int                      # 1-based, as an editor counts
    words: list[str]                 # empty: blank, a `#` comment, or punctuation only
    comment: bool = False
    punct_dropped: int = 0


@dataclass
class TextLines:
    path: Path
    lines: list[TextLine]

    @property
    def sentences(self) -> list[TextLine]:
        return [line for line in self.lines if line.words]

    @property
    def punct_dropped(self) -> int:
        return sum(line.punct_dropped for line in self.lines)

    @property
    def punct_only(self) -> int:
        """Lines with tokens that were all punctuation (left with no words)."""
        return sum(1 for line in self.lines if not line.words and line.punct_dropped)

    def nothing_to_read(self) -> GfnemError:
        count = len(self.lines)
        what = (f"all {count:,} lines are blank or `#` comments" if count else
                "the file is empty")
        if self.punct_only:
            what = (f"all {count:,} lines are blank, `#` comments or punctuation only "
                    f"({self.punct_only:,} of punctuation, dropped as the treebank's word "
                    "tags drop it)")
        return GfnemError(f"no sentence to read: {what}", self.path,
                          hint="write one sentence per line" + (
                              "; --keep-punct keeps punctuation" if self.punct_only else ""))


def read_text_lines(path: Path, options: TextOptions = TextOptions(),
                    on_warning: Callable[[str], None] | None = None) -> TextLines:
    """Every line of a text file, tokenized (`text_lines`)."""
    return text_lines(read_text(Path(path), on_warning), path, options)


def text_lines(text: str, path: Path, options: TextOptions = TextOptions()) -> TextLines:
    """Every line of decoded text, tokenized; a line whose first non-blank character is `#`
    is a comment."""
    options.check()
    lines = []
    for number, line in enumerate(split_lines(text), start=1):
        if line.lstrip().startswith("#"):
            lines.append(TextLine(number, [], comment=True))
            continue
        kept, dropped = words(line, options.tokenize, options.keep_punct)
        lines.append(TextLine(number, kept, punct_dropped=dropped))
    return TextLines(Path(path), lines)
