"""Which leaves of a treebank are words: the tag filter of `prepare ptb --keep-tags`.

The evaluation protocol (DESIGN §6, Kim et al. 2019) keeps the leaves tagged with one of the
36 Penn Treebank word tags; a treebank of another language has other tags (the Penn Chinese
Treebank's VV, AD, P, PU, ...), and that filter would keep a word or two of each sentence.
So the filter is a choice, recorded in the manifest and applied again wherever a run reads
trees (`parse --input FILE.mrg`):

    ptb             the 36 PTB word tags (the default; drops punctuation, `$`, `#`, traces)
    all-but-punct   every leaf whose tag is not punctuation (--punct-tags) or a trace
                    (`-NONE-`); on the PTB it keeps exactly what `ptb` keeps
    LIST or FILE    the tags to keep: `NN,VV,AD` or a file of tags (one or more a line,
                    `#` comments); tags are compared exactly (`NN-SHORT` is not `NN`)

`--punct-tags` (a LIST or FILE too) replaces the default punctuation tags of `all-but-punct`:
the PTB's nine non-word tags and those of other common treebanks (`PU` of the Chinese
Treebank, `PUNCT` of Universal Dependencies, `$( $, $.` of the German STTS, `PONCT` of the
French Treebank).

A filter that drops more than half the leaves is most likely the wrong one for the treebank:
`LeafCounts.warning` says so, naming the tags it dropped most.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gfnem_cli.engine.errors import GfnemError
from grammars.data.treebank import WORD_TAGS, Tree, read_text, split_lines

PRESETS = ("ptb", "all-but-punct")
TRACE = "-NONE-"
PTB_PUNCT_TAGS = frozenset({"``", "''", ",", ".", ":", "-LRB-", "-RRB-", "#", "$"})
PUNCT_TAGS = PTB_PUNCT_TAGS | {"PU", "PUNCT", "$(", "$,", "$.", "PONCT"}
_BAD_TAG = re.compile(r"[\s()]")


@dataclass(frozen=True)
class TagFilter:
    """`keep` the kept tags (preset `ptb`, a list), or None: every tag not in `drop`."""

    name: str                            # "ptb", "all-but-punct" or "list"
    keep: frozenset[str] | None
    drop: frozenset[str] = frozenset()

    def __contains__(self, tag: object) -> bool:
        if self.keep is not None:
            return tag in self.keep
        return tag not in self.drop

    def describe(self) -> str:
        if self.name == "list":
            shown = _as_list(sorted(self.keep)[:8])
            return f"--keep-tags {shown}" + ("..." if len(self.keep) > 8 else "")
        return " ".join(self.cli_args()) or "--keep-tags ptb"

    def cli_args(self) -> list[str]:
        """The `prepare ptb` options that make this filter again (for a printed command)."""
        if self.name == "list":
            return ["--keep-tags", _as_list(sorted(self.keep))]
        if self.name == "all-but-punct" and self.drop != PUNCT_TAGS | {TRACE}:
            return ["--keep-tags", "all-but-punct", "--punct-tags",
                    _as_list(sorted(self.drop - {TRACE}) or [TRACE])]
        return [] if self.name == "ptb" else ["--keep-tags", self.name]

    def to_manifest(self) -> dict:
        return {"keep_tags": self.name,
                "tags": None if self.keep is None else sorted(self.keep),
                "drop_tags": sorted(self.drop) if self.keep is None else None}

    @classmethod
    def from_manifest(cls, record: object) -> "TagFilter":
        """The filter a corpus was prepared with; corpora written before the filter was
        recorded used the PTB's (the only one there was)."""
        if not isinstance(record, dict):
            return PTB
        name = record.get("keep_tags")
        tags, drop = record.get("tags"), record.get("drop_tags")
        if name == "all-but-punct" and _strings(drop):
            return cls("all-but-punct", None, frozenset(drop))
        if name == "list" and _strings(tags) and tags:
            return cls("list", frozenset(tags))
        return PTB


PTB = TagFilter("ptb", WORD_TAGS)


def _as_list(tags: list[str]) -> str:
    """Tags as a LIST value: one tag alone ends with `,`, so it is never read as a preset or
    a file name."""
    return ",".join(tags) + ("," if len(tags) == 1 else "")


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def resolve_tag_filter(keep_tags: str = "ptb", punct_tags: str | None = None) -> TagFilter:
    """The filter `--keep-tags` and `--punct-tags` name; a bad value is one line."""
    if punct_tags is not None and keep_tags != "all-but-punct":
        raise GfnemError("--punct-tags says which tags --keep-tags all-but-punct drops; "
                         f"with --keep-tags {keep_tags!r} it would change nothing",
                         hint="add --keep-tags all-but-punct, or drop --punct-tags")
    if keep_tags == "ptb":
        return PTB
    if keep_tags == "all-but-punct":
        punct = PUNCT_TAGS if punct_tags is None else read_tags(punct_tags, "--punct-tags")
        return TagFilter("all-but-punct", None, frozenset(punct) | {TRACE})
    return TagFilter("list", frozenset(read_tags(keep_tags, "--keep-tags")))


def read_tags(value: str, option: str) -> list[str]:
    """Tags from a FILE (one or more a line, `#` comments) or a comma-separated LIST."""
    path = Path(value)
    if value.strip() and (path.is_file() or path.is_dir()):
        where: object = path
        lines = split_lines(read_text(path))
        items = [tag for line in lines if not line.lstrip().startswith("#")
                 for tag in re.split(r"[\s,]+", line) if tag]
    else:
        where = None
        if "," not in value and value.strip() and (re.search(r"[a-z]", value) or "/" in value
                                 or path.suffix):
            raise GfnemError(f"{option} {value!r}: no such file, and not a preset "
                             f"({', '.join(PRESETS)})" if option == "--keep-tags" else
                             f"{option} {value!r}: no such file",
                             hint="give a preset, a file of tags, or a comma-separated list "
                                  "(NN,VV,AD; a single lowercase tag as `tag,`)")
        items = [tag.strip() for tag in value.split(",") if tag.strip()]
    bad = [tag for tag in items if _BAD_TAG.search(tag)]
    if bad:
        raise GfnemError(f"{option}: {bad[0]!r} cannot be a tag (no spaces or brackets)", where)
    if not items:
        raise GfnemError(f"{option} names no tag", where,
                         hint="list the tags, comma-separated, or one or more a line")
    return items


@dataclass
class LeafCounts:
    """Leaves kept and dropped (by tag) by a filter, over a whole treebank."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def add(self, tree: Tree, tag_filter: TagFilter) -> None:
        for tag, _ in tree.leaves():
            if tag in tag_filter:
                self.kept += 1
            else:
                self.dropped[tag] += 1

    @property
    def total(self) -> int:
        return self.kept + sum(self.dropped.values())

    def to_manifest(self) -> dict:
        return {"kept": self.kept, "dropped": sum(self.dropped.values()),
                "dropped_tags": dict(self.dropped.most_common(20))}

    def warning(self, tag_filter: TagFilter) -> str | None:
        """Said when the filter drops more than half the leaves, with the tags it dropped
        most: the sign of a treebank whose tags are not the filter's."""
        dropped = sum(self.dropped.values())
        if not self.total or 2 * dropped <= self.total:
            return None
        most = ", ".join(f"{tag} {count:,}" for tag, count in self.dropped.most_common(8))
        return (f"the tag filter ({tag_filter.describe()}) dropped {dropped:,} of the "
                f"{self.total:,} leaves ({100 * dropped / self.total:.1f}%); dropped most: "
                f"{most}. Is this treebank tagged otherwise? Name its word tags with "
                "--keep-tags LIST|FILE, or use --keep-tags all-but-punct")
