"""What `evaluate`, `parse` and `score` say about a grammar run on sentences, in one voice.

    render_report       the F1 headline and its length-bucket table
    render_likelihood   the NLL per token line: exact or a labelled bound (M, s.e.), perplexity
    report_unknown      the `<unk>` rate under the run's vocabulary (a warning above 5%)
    print_notes         what reading the input decided (tokenizing, filtering, empty rows)
    gold_lines          the filtered gold trees of an input, aligned with its output lines
"""
from __future__ import annotations

from gfnem_cli.console import console, warn


def render_report(report, title: str) -> None:
    """The headline figures and the length-bucket table."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    for column in ("length", "sentences", "sentence F1", "corpus F1"):
        table.add_column(column, justify="left" if column == "length" else "right")
    for bucket in report.buckets:
        label = "all" if bucket.max_length is None else f"≤{bucket.max_length}"
        table.add_row(label, f"{bucket.num_sentences:,}", f"{bucket.sentence_f1:.2f}",
                      f"{bucket.corpus_f1:.2f}")
    console.print(table)
    cap = report.length_filter.get("max_length")
    console.print(f"sentence F1 {report.sentence_f1:.2f}  corpus F1 {report.corpus_f1:.2f}  "
                  f"(precision {report.precision:.2f}, recall {report.recall:.2f}) over "
                  f"{report.num_sentences:,} sentences of 2{f'–{cap}' if cap else '+'} words; "
                  f"{report.num_skipped:,} skipped", highlight=False)


def render_likelihood(figures: dict) -> None:
    kind = "bound" if figures.get("nll_is_bound") else "exact"
    text = (f"NLL/token {figures['nll_per_token']:.4f} ({kind}, {figures['nll_method']}"
            + (f", s.e. {figures['nll_std_error']:.4f}" if figures.get("nll_std_error") else "")
            + f")  perplexity {figures['perplexity']:.2f}")
    if "is_nll_per_token" in figures:
        text += (f"\nimportance-sampled bound: NLL/token {figures['is_nll_per_token']:.4f} "
                 f"(s.e. {figures['is_nll_std_error']:.4f}, {figures['is_nll_method']})")
    if "true_nll_per_token" in figures:
        text += f"\ntrue grammar: NLL/token {figures['true_nll_per_token']:.4f}"
    console.print(text, highlight=False)


def report_unknown(data, vocab_size: int, warn_above: bool = True) -> float:
    """Print the share of words that are `<unk>` to the model; above 5%, with `warn_above`,
    a warning naming the ten most frequent. Returns the rate."""
    from rich.markup import escape

    from grammars.data.inputs import unknown_words

    unknown = unknown_words(data)
    console.print(escape(unknown.line(vocab_size)), highlight=False)
    if warn_above and unknown.warning():
        warn(unknown.warning())
    return unknown.rate


def print_notes(data) -> None:
    from rich.markup import escape

    for note in data.notes:
        console.print(f"[dim]note:[/] {escape(note)}", highlight=False)


def gold_lines(data, option: str) -> list[str]:
    """The gold trees of a treebank file or corpus split as `gold_trees` writes them, one per
    row of `data`; raw text (and a corpus prepared from it) has none: one line, refused."""
    from gfnem_cli.engine.errors import GfnemError
    from grammars.data.gold_trees import gold_tree_lines

    if data.trees is None:
        what = "raw text" if data.kind == "text" else "a corpus prepared from raw text"
        raise GfnemError(f"{option}: {data.source} is {what}, with no gold trees to write",
                         hint=f"drop {option}, or give a treebank file or a prepared treebank")
    return gold_tree_lines(data.trees, data.tag_filter, data.words, data.source)
