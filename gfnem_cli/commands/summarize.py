"""`gfnem summarize RUN...`: mean ± sd over runs (seeds) and one row per run: a paper's table.

Each RUN is a run directory, whose `report.json` gives the validation figures of its best
checkpoint (`best.*`), or an evaluation JSON (`gfnem evaluate RUN --json FILE`), which names its
run and gives the test figures. The reading is the engine's (`engine/run_records.py`); this
module picks the figures, refuses what would make a wrong table, and renders it.

A table averages like with like, so before anything is printed or written it refuses, in one
line: a path that is not a run, the same run twice, runs of different families or methods or
evaluations of different data or splits (unless `--allow-mixed`: a deliberate cross-method
table), and a figure some run lacks (naming the figure and the run), since a mean over the
runs that have it would silently be a mean over fewer seeds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer

from gfnem_cli.console import console, friendly_errors, warn

# the headline figures of an evaluation, per family: what a paper's table reports
HEADLINE = {"grammar": ("sentence_f1", "corpus_f1", "nll_per_token", "perplexity"),
            "vae": ("nll_nats", "bits_per_dim")}


def fmt(value: float, decimals: int | None = None) -> str:
    """Five significant figures (at most six decimals), or the given number of decimals."""
    if decimals is None:
        decimals = decimals_for(value)
    return f"{value:.{decimals}f}"


def decimals_for(value: float) -> int:
    if value == 0 or not math.isfinite(value):
        return 4
    return min(6, max(0, 4 - math.floor(math.log10(abs(value)))))


def default_metrics(records, family: str) -> list[str]:
    """The validation figures of a report (`best.*`), or the family's headline figures of an
    evaluation that the first run has (every figure if it has none of them)."""
    from gfnem_cli.engine.run_records import REPORT

    first = records[0]
    if first.kind == REPORT:
        chosen = [k for k in first.figures if k.startswith("best.")]
    else:
        chosen = [k for k in HEADLINE.get(family, ()) if k in first.figures]
    return chosen or sorted(first.figures)


def check_alike(records, families: list[str], allow_mixed: bool) -> None:
    """Refuse a table that would average unlike runs (unless --allow-mixed)."""
    from gfnem_cli.engine.errors import GfnemError

    seen: dict[Path, Path] = {}
    for rec in records:
        where = rec.run.resolve()
        if where in seen:
            both = "" if seen[where] == rec.source else f" ({seen[where]} and {rec.source})"
            raise GfnemError(f"run {rec.run} is given twice{both}", hint="give each run once")
        seen[where] = rec.source
    if allow_mixed:
        return
    first = records[0]
    for rec, family in zip(records, families):
        for what, mine, theirs in (("family", family, families[0]),
                                   ("method", rec.config.get("method"),
                                    first.config.get("method")),
                                   ("kind of figures", rec.kind, first.kind),
                                   ("evaluation data", rec.measured_on.get("data"),
                                    first.measured_on.get("data")),
                                   ("evaluation split", rec.measured_on.get("split"),
                                    first.measured_on.get("split"))):
            if mine != theirs:
                raise GfnemError(f"unlike the other runs: its {what} is {mine!r}, "
                                 f"{first.source}'s is {theirs!r}", rec.source,
                                 hint="summarize like runs together, or pass --allow-mixed")


def warn_shared_seeds(records) -> None:
    """Two runs of one seed are usually one run twice (or a --set forgotten)."""
    seeds: dict[str, Path] = {}
    for rec in records:
        key = repr(rec.seed)
        if rec.seed is not None and key in seeds:
            warn(f"{rec.run} and {seeds[key]} share train.seed {rec.seed}: the sd is not one "
                 "over seeds")
        seeds.setdefault(key, rec.run)


def check_present(records, metrics: list[str]) -> None:
    from gfnem_cli.engine.errors import GfnemError

    for metric in metrics:
        for rec in records:
            if metric not in rec.figures:
                have = ", ".join(sorted(rec.figures)[:40])
                raise GfnemError(f"figure {metric!r} is missing from run {rec.run}", rec.source,
                                 hint=f"it has: {have}")


def summary_of(records, metrics: list[str]) -> dict:
    from gfnem_cli.engine.run_records import mean_sd

    out = {}
    for metric in metrics:
        values = [rec.figures[metric] for rec in records]
        mean, sd = mean_sd(values)
        out[metric] = {"mean": mean, "sd": sd, "n": len(values), "min": min(values),
                       "max": max(values)}
    return out


def render(records, metrics: list[str], summary: dict, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    table.add_column("seed", justify="right")
    table.add_column("run", overflow="fold")
    for metric in metrics:
        table.add_column(escape(metric), justify="right", overflow="fold")
    for rec in records:
        table.add_row("" if rec.seed is None else escape(str(rec.seed)), escape(str(rec.run)),
                      *(fmt(rec.figures[m]) for m in metrics), end_section=rec is records[-1])
    cells = []
    for metric in metrics:
        s = summary[metric]
        places = decimals_for(s["mean"])
        cells.append(fmt(s["mean"], places) + (f" ± {fmt(s['sd'], places)}"
                                               if s["sd"] is not None else ""))
    table.add_row("", f"mean ± sd (n={len(records)})", *cells)
    console.print(table)
    for metric, cell in zip(metrics, cells):     # one plain line each: greppable, never cut
        console.print(f"{metric}: {cell} over {len(records)} runs", highlight=False,
                      markup=False)


@friendly_errors
def summarize(
    runs: List[Path] = typer.Argument(..., help="Run directories (their report.json: the "
                                      "validation figures of the best checkpoint) or "
                                      "evaluation JSONs written by `gfnem evaluate RUN --json "
                                      "FILE` (test figures; each names its run). Typically "
                                      "one per seed."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as "
                                            "JSON: per run its seed, source and figures; per "
                                            "figure mean, sd, n, min and max; the gfnem "
                                            "version and commit."),
    metrics: Optional[List[str]] = typer.Option(None, "--metric", "-m", help="A figure to "
                                                "summarize (repeatable), by its name in the "
                                                "JSON, nested names dotted (best.val_ppl). "
                                                "Default: a report's best.* figures; an "
                                                "evaluation's headline ones (F1, NLL and "
                                                "perplexity; images: nats and bits/pixel)."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Summarize runs of "
                                     "different families or methods, or evaluations of "
                                     "different data or splits, together (refused by "
                                     "default: a mean over unlike runs is rarely meant)."),
) -> None:
    """Mean ± sd of runs' figures over the runs, and one row per run: a paper's table.

    The sd is the sample standard deviation (n − 1). Each row gives the run's seed
    (config.yaml train.seed), its directory and each figure.
    """
    from gfnem_cli import families
    from gfnem_cli.engine.files import check_output_file, write_text_atomic
    from gfnem_cli.engine.provenance import provenance
    from gfnem_cli.engine.run_records import read_figures

    if json_out is not None:
        check_output_file(json_out)
    records = [read_figures(path) for path in runs]
    family_names = [families.family_of_run(rec.run) for rec in records]
    check_alike(records, family_names, allow_mixed)
    chosen = (list(dict.fromkeys(metrics)) if metrics
              else default_metrics(records, family_names[0]))
    check_present(records, chosen)
    warn_shared_seeds(records)
    summary = summary_of(records, chosen)
    methods = sorted({str(rec.config.get("method")) for rec in records})
    render(records, chosen, summary, f"{'/'.join(sorted(set(family_names)))} · "
                                     f"{'/'.join(methods)} · {records[0].kind}")
    if json_out is not None:
        payload = {"runs": [{"run": str(rec.run), "source": str(rec.source), "seed": rec.seed,
                             "family": family, "method": rec.config.get("method"),
                             "figures": {m: rec.figures[m] for m in chosen}}
                            for rec, family in zip(records, family_names)],
                   "summary": summary, "metrics": chosen, "figures_from": records[0].kind,
                   **provenance()}
        write_text_atomic(json_out, json.dumps(payload, indent=2) + "\n")
        console.print(f"wrote {json_out}", highlight=False, markup=False)
