"""Reading Penn-Treebank-style bracketed trees and cleaning them per the evaluation protocol.

One reader serves every place trees come from: `.mrg` files (a tree spans many lines, wrapped
in an empty outer bracket `( (S ...) )`), files with one tree per line, `--pred` files (aligned
with a split by `predicted_trees`) and the synthetic sampler's strings. Errors name the file
and the line, so a user can fix the input. Cleaning (DESIGN §6, Kim et al. 2019) keeps only
leaves tagged with one of the 36 PTB word tags, which drops punctuation, currency symbols and
`-NONE-` traces; a constituent left with no words disappears with them. Other treebanks name
their word tags otherwise: `clean_tree` takes any set of tags (`tag_filter.TagFilter`).
"""
from __future__ import annotations

import codecs
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Container, Iterable

from gfnem_cli.engine.errors import GfnemError

Span = tuple[int, int]

WORD_TAGS = frozenset(
    "CC CD DT EX FW IN JJ JJR JJS LS MD NN NNS NNP NNPS PDT POS PRP PRP$ RB RBR RBS RP SYM "
    "TO UH VB VBD VBG VBN VBP VBZ WDT WP WP$ WRB".split()
)

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_SECTION_DIR = re.compile(r"^\d\d$")
_SECTION_FILE = re.compile(r"^wsj_(\d\d)\d\d", re.IGNORECASE)


@dataclass(slots=True)
class Tree:
    """A bracketed tree node: a preterminal has `word` and no children."""

    label: str
    children: list["Tree"] = field(default_factory=list)
    word: str | None = None

    def to_string(self) -> str:
        """One-line canonical bracketing (the outer empty bracket kept as `( ...)`).

        Iterative, like every walk here: a treebank may nest deeper than Python's recursion
        limit, and that must not become a traceback."""
        parts: list[str] = []
        stack: list[Tree | str] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                parts.append(node)
            elif node.word is not None:
                parts.append(f"({node.label} {node.word})")
            else:
                parts.append(f"({node.label} " if node.label else "( ")
                stack.append(")")
                for k in range(len(node.children) - 1, -1, -1):
                    stack.append(node.children[k])
                    if k:
                        stack.append(" ")
        return "".join(parts)

    def leaves(self) -> list[tuple[str, str]]:
        """(tag, word) pairs left to right."""
        out: list[tuple[str, str]] = []
        stack: list[Tree] = [self]
        while stack:
            node = stack.pop()
            if node.word is not None:
                out.append((node.label, node.word))
            else:
                stack.extend(reversed(node.children))
        return out


@dataclass(slots=True)
class SourcedTree:
    """A parsed tree and where its first line is, for error messages and the `source` column."""

    tree: Tree
    path: str
    line: int

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"


def base_label(label: str) -> str:
    """`NP-SBJ-1` → `NP`, `NP=2` → `NP`; labels that start with `-` (`-NONE-`, `-LRB-`) stay."""
    if label.startswith("-"):
        return label
    return re.split(r"[-=]", label, maxsplit=1)[0] or label


_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def decode_bytes(data: bytes, path: object,
                 on_warning: Callable[[str], None] | None = None) -> str:
    """The one decoding function of every reader: a byte-order mark is removed (UTF-8 or
    UTF-16, which Windows editors write), else UTF-8, else latin-1 with a warning (old
    treebank copies are often latin-1)."""
    warn = on_warning or warnings.warn
    codec = "utf-8"
    for bom, name in _BOMS:
        if data.startswith(bom):
            data, codec = data[len(bom):], name
            break
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        if codec != "utf-8":
            line = data[:exc.start].decode(codec, errors="replace").count("\n") + 1
            raise GfnemError(f"starts with a {codec[:6].upper()} byte-order mark but is not "
                             f"valid {codec[:6].upper()} (byte offset {exc.start + 2})", path, line,
                             hint="save the file as UTF-8") from None
        line = data.count(b"\n", 0, exc.start) + 1
        warn(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); "
             "reading the file as latin-1")
        text = data.decode("latin-1")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        warn(f"{path}:{line}: contains NUL characters (UTF-16 text without a byte-order "
             "mark?); save the file as UTF-8")
    return text


def split_lines(text: str) -> list[str]:
    """Lines as an editor numbers them: broken at \\n, \\r\\n or \\r only (`str.splitlines`
    also breaks at form feeds, U+0085 and U+2028, which would shift every line number)."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_text(path: Path, on_warning: Callable[[str], None] | None = None) -> str:
    """A text file decoded by `decode_bytes`; a directory or unreadable file is a user error."""
    path = Path(path)
    if path.is_dir():
        raise GfnemError("is a directory, not a text file", path,
                         hint="name a file with one item per line")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GfnemError("no such file", path) from None
    except OSError as exc:
        raise GfnemError(f"cannot read: {exc.strerror or exc}", path) from None
    return decode_bytes(data, path, on_warning)


class _Builder:
    """Stack machine over bracket tokens; one instance per file."""

    def __init__(self, path: str):
        self.path = path
        self.stack: list[Tree] = []
        self.expect_label = False
        self.start_line = 0

    def reset(self) -> None:
        self.stack.clear()
        self.expect_label = False

    def error(self, message: str, line: int) -> GfnemError:
        return GfnemError(message, self.path, line)

    def feed(self, token: str, line: int) -> Tree | None:
        """Consume one token; return a tree when its last bracket closes."""
        if self.expect_label:
            self.expect_label = False
            if token not in ("(", ")"):
                self.stack[-1].label = token
                return None
        if token == "(":
            if not self.stack:
                self.start_line = line
            elif self.stack[-1].word is not None:
                raise self.error(f"malformed tree: constituent `{self.stack[-1].label}` has both "
                                 "a word and subtrees", line)
            node = Tree("")
            if self.stack:
                self.stack[-1].children.append(node)
            self.stack.append(node)
            self.expect_label = True
            return None
        if token == ")":
            if not self.stack:
                raise self.error("unbalanced brackets: `)` with no matching `(`", line)
            node = self.stack.pop()
            if node.word is None and not node.children:
                what = f"`({node.label})`" if node.label else "`()`"
                if not self.stack:
                    raise self.error(f"malformed tree: {what} is a tree with no words", line)
                raise self.error(f"malformed tree: empty constituent {what}", line)
            return None if self.stack else node
        # a word
        if not self.stack:
            raise self.error(f"text outside brackets: `{token}`", line)
        node = self.stack[-1]
        if node.children or node.word is not None:
            raise self.error(f"malformed tree: unexpected word `{token}` in `{node.label}`", line)
        if not node.label:
            raise self.error(f"malformed tree: word `{token}` has no tag", line)
        node.word = token
        return None


def parse_bracketed(text: str, path: object = "<string>", skip_bad: bool = False
                    ) -> tuple[list[SourcedTree], list[GfnemError]]:
    """All trees in `text`; with `skip_bad`, malformed trees are returned as errors instead.

    Lines whose first non-blank character is `#` outside a tree are comments. Recovery after a
    bad tree resumes at the next line that starts with `(` in column 0, where `.mrg` files and
    one-tree-per-line files begin their trees.
    """
    lines = split_lines(text)
    builder = _Builder(str(path))
    trees: list[SourcedTree] = []
    bad: list[GfnemError] = []
    number, last_end = 0, 0
    while True:
        try:
            if number == len(lines):
                if not builder.stack:
                    break
                number = builder.start_line  # report the unclosed tree where it starts
                raise builder.error(f"unbalanced brackets: {len(builder.stack)} `(` never "
                                    "closed in the tree starting here", number)
            line = lines[number]
            number += 1
            if not builder.stack and line.lstrip().startswith("#"):
                continue
            for token in _TOKEN.findall(line):
                tree = builder.feed(token, number)
                if tree is not None:
                    trees.append(SourcedTree(tree, builder.path, builder.start_line))
                    last_end = number
        except GfnemError as exc:
            if not skip_bad:
                raise
            if not builder.stack and last_end == number and trees:
                trees.pop()  # a stray `)` on the line a tree ended makes that tree suspect
            bad.append(exc)
            number = _next_tree_line(lines, builder.start_line if builder.stack else number)
            builder.reset()
    return trees, bad


def _next_tree_line(lines: list[str], after: int) -> int:
    """0-based index of the first line after 1-based line `after` that starts with `(`."""
    for index in range(after, len(lines)):
        if lines[index].startswith("("):
            return index
    return len(lines)


def clean_tree(tree: Tree, keep_tags: Container[str] | None = WORD_TAGS
               ) -> tuple[list[str], list[Span]]:
    """Kept words and the spans [start, end) of width >= 2 of every constituent left non-empty.

    Leaves whose tag is not in `keep_tags` are dropped (None keeps all); constituents that lose
    every word vanish; unary chains and the outer empty bracket collapse by deduplication.
    Spans come sorted by (start, -end), i.e. in preorder; the whole sentence is included.
    """
    words: list[str] = []
    spans: set[Span] = set()
    stack: list[tuple[Tree, int]] = [(tree, -1)]    # (node, -1) on entry, (node, start) on exit
    while stack:
        node, start = stack.pop()
        if node.word is not None:
            if keep_tags is None or node.label in keep_tags:
                words.append(node.word)
        elif start < 0:
            stack.append((node, len(words)))
            stack.extend((child, -1) for child in reversed(node.children))
        elif len(words) - start >= 2:
            spans.add((start, len(words)))
    return words, sorted(spans, key=lambda s: (s[0], -s[1]))


def tree_words_spans(text: str, path: object = "<string>", line: int = 1
                     ) -> tuple[list[str], list[Span]]:
    """Words and constituent spans of one bracketed tree string, no leaf filtering.

    The form `--pred` files and peer parsers use; errors point at `path:line`.
    """
    try:
        trees, _ = parse_bracketed(text, path)
    except GfnemError as exc:
        raise GfnemError(exc.message, path, line + (exc.line or 1) - 1) from None
    if len(trees) != 1:
        raise GfnemError(f"expected one tree, found {len(trees)}", path, line)
    return clean_tree(trees[0].tree, keep_tags=None)


def wsj_section(path: Path) -> int | None:
    """The WSJ section shown by a `wsj_SSxx` file name or a two-digit parent folder."""
    match = _SECTION_FILE.match(path.name)
    if match:
        return int(match.group(1))
    for parent in path.parents:
        if _SECTION_DIR.match(parent.name):
            return int(parent.name)
    return None


def collect_files(paths: Iterable[object]) -> list[Path]:
    """Files named directly, plus every `.mrg` file under named directories, sorted by path."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".mrg")
            if not found:
                raise GfnemError("no .mrg files in this directory", path,
                                 hint="name files with one tree per line explicitly")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise GfnemError("no such file or directory", path)
    unique = sorted(set(files), key=lambda p: str(p))
    return unique


def escape_word(word: str) -> str:
    """PTB escapes brackets inside leaves; keep every written tree re-readable."""
    return word.replace("(", "-LRB-").replace(")", "-RRB-")
