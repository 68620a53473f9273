"""Gold trees as the evaluation protocol sees them, one per line, for EVALB and the peers.

`parse --gold-out` and `evaluate --export-gold` write, line for line beside the predictions,
each sentence's original tree filtered as its words were (`tag_filter`): leaves the filter
does not keep (punctuation, `-NONE-` traces, ...) are removed, constituents left with no
word vanish, phrase labels lose their function tags and indices (`NP-SBJ-1` -> `NP`), POS
tags stay, and the empty outer bracket of `.mrg` trees is unwrapped. So the gold line's
leaves are exactly the words the prediction's line carries, and its constituents give
exactly the corpus's `gold_spans`: read back by the F1 scorer it scores as `evaluate` does.
A row with no tree kept (a treebank tree the filter leaves empty) is `()`, as `parse`
writes its prediction.
"""
from __future__ import annotations

from typing import Container, Sequence

from gfnem_cli.engine.errors import GfnemError
from grammars.data.tag_filter import TagFilter
from grammars.data.treebank import Tree, base_label, parse_bracketed

EMPTY = "()"


def filtered_tree(tree: Tree, keep_tags: Container[str] | None) -> Tree | None:
    """A copy keeping only the leaves whose tag is in `keep_tags` (None keeps all), with
    the constituents that lose every word removed and phrase labels reduced to their base;
    None when no word is left. Iterative: a treebank may nest deeper than Python recurses."""
    done: dict[int, Tree | None] = {}
    stack: list[tuple[Tree, bool]] = [(tree, False)]
    while stack:
        node, visited = stack.pop()
        if node.word is not None:
            keep = keep_tags is None or node.label in keep_tags
            done[id(node)] = Tree(node.label, word=node.word) if keep else None
        elif not visited:
            stack.append((node, True))
            stack.extend((child, False) for child in node.children)
        else:
            kept = [done.pop(id(child)) for child in node.children]
            kept = [child for child in kept if child is not None]
            done[id(node)] = Tree(base_label(node.label), kept) if kept else None
    root = done[id(tree)]
    while root is not None and not root.label and len(root.children) == 1:
        root = root.children[0]          # `( (S ...) )` -> `(S ...)`
    return root


def gold_tree_lines(trees: Sequence[str], keep_tags: Container[str] | None,
                    words: Sequence[Sequence[str]] | None = None,
                    where: object = None) -> list[str]:
    """One filtered gold line per tree string ("" gives `()`); when `words` are given, each
    line's leaves are checked against its row's (a corpus whose trees no longer give its
    words is damaged, and a misaligned gold file would be worse than none)."""
    lines = []
    for index, text in enumerate(trees):
        kept = None
        if text:
            parsed, _ = parse_bracketed(text, where or "<tree>")
            kept = filtered_tree(parsed[0].tree, keep_tags) if len(parsed) == 1 else None
        if words is not None:
            leaves = [] if kept is None else [word for _, word in kept.leaves()]
            if leaves != list(words[index]):
                raise GfnemError(f"the tree of sentence {index + 1} does not give its words "
                                 f"({len(leaves)} words, not {len(words[index])})", where,
                                 hint="prepare the corpus again with `gfnem prepare`")
        lines.append(EMPTY if kept is None else kept.to_string())
    return lines


def split_gold_lines(corpus, split: str) -> list[str]:
    """The gold lines of a prepared corpus's split (`corpus_disk.Corpus`), filtered by the
    corpus's own tag filter: one per sentence, in the split's order."""
    where = f"{corpus.path}[{split}]"
    return gold_tree_lines(corpus.column(split, "tree"),
                           TagFilter.from_manifest(corpus.manifest.get("tag_filter")),
                           corpus.column(split, "words"), where)
