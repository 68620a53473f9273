"""`gfnem plot RUN... --metric M --out curves.png`: training curves from runs' metrics.jsonl.

One panel per `--metric`, one line per run (and per record kind, when a figure is logged both
by training steps and by validations), against the step. The records are read by the engine
(`engine/run_records.py`, torn lines skipped as on resume); the output path is checked before
any run is read, and the picture is written atomically, so a refused or failed plot leaves no
file behind. matplotlib draws it without pyplot (no display, no global state): a `Figure`
saved straight through its Agg canvas.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from gfnem_cli.console import console, friendly_errors, warn

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def series(records: list[dict], metric: str) -> dict[str, tuple[list[int], list[float]]]:
    """{record kind: (steps, values)} of one figure in one run's records."""
    from gfnem_cli.engine.run_records import record_metrics

    out: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        value = record_metrics(record).get(metric)
        if value is not None:
            steps, values = out.setdefault(str(record.get("kind", "train")), ([], []))
            steps.append(record["step"])
            values.append(value)
    return out


def smoothed(values: list[float], window: int) -> list[float]:
    """The trailing mean over `window` records (the first ones over what there is)."""
    if window <= 1:
        return values
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def check_out(out: Path) -> str:
    from gfnem_cli.engine.errors import GfnemError
    from gfnem_cli.engine.files import check_output_file

    fmt = FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise GfnemError("--out must name a .png, .pdf or .svg file", out)
    check_output_file(out)
    return fmt


@friendly_errors
def plot(
    runs: List[Path] = typer.Argument(..., help="Run directories written by `gfnem train` "
                                      "(finished or not: their metrics.jsonl is read as it "
                                      "is; runs of different methods may share a plot)."),
    metrics: List[str] = typer.Option(..., "--metric", "-m", help="A figure of metrics.jsonl "
                                      "to plot against the step (repeatable: one panel "
                                      "each), e.g. loss, or val_nll_per_token from the "
                                      "validations. An unknown one is refused with the list "
                                      "the runs have."),
    out: Path = typer.Option(..., "--out", "-o", help="The picture to write: .png, .pdf or "
                                                      ".svg (replaced atomically)."),
    smooth: int = typer.Option(1, "--smooth", help="Draw the trailing mean over this many "
                               "training records (validations are drawn as they are); "
                               "1 = raw."),
    log_y: bool = typer.Option(False, "--log-y", help="A logarithmic y axis (for losses "
                               "spanning orders of magnitude)."),
    title: Optional[str] = typer.Option(None, "--title", help="A title above the panels."),
) -> None:
    """Training curves: each --metric of each run's metrics.jsonl against the step."""
    from gfnem_cli.commands.checks import at_least
    from gfnem_cli.engine.errors import GfnemError
    from gfnem_cli.engine.files import write_atomic
    from gfnem_cli.engine.run_records import read_records, record_metrics

    fmt = check_out(out)
    at_least("--smooth", smooth, 1, "1 draws the raw values")
    wanted = list(dict.fromkeys(metrics))
    logs = [(run, read_records(run)) for run in runs]
    have = sorted({k for _, records in logs for r in records for k in record_metrics(r)})
    for metric in wanted:
        if metric not in have:
            raise GfnemError(f"unknown metric {metric!r}: the runs have "
                             + (", ".join(have) if have else "no records yet"),
                             hint="choose one of them with --metric")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 2.8 * len(wanted)), layout="constrained")
    axes = figure.subplots(len(wanted), 1, sharex=True, squeeze=False)[:, 0]
    lines = 0
    for ax, metric in zip(axes, wanted):
        for run, records in logs:
            found = series(records, metric)
            if not found:
                warn(f"{run}: no {metric} in its metrics.jsonl")
            for kind, (steps, values) in sorted(found.items(), key=lambda kv: kv[0] != "train"):
                label = str(run) + ("" if len(found) == 1 else f" ({kind})")
                shown = smoothed(values, smooth) if kind == "train" else values
                ax.plot(steps, shown, label=label, marker="o" if kind == "eval" else None,
                        markersize=3, linewidth=1.2)
                lines += 1
        ax.set_ylabel(metric)
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title)
    write_atomic(Path(out), lambda handle: figure.savefig(handle, format=fmt, dpi=150))
    console.print(f"wrote {lines} curve{'s' * (lines != 1)} of {len(wanted)} metric"
                  f"{'s' * (len(wanted) != 1)} from {len(runs)} run{'s' * (len(runs) != 1)} "
                  f"to {out}", highlight=False, markup=False)
