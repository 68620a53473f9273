"""The `gfnem` command line: subcommands over one shared engine.

Heavy libraries (torch, datasets) are imported inside the commands, never at module import,
so `gfnem --help` answers at once.
"""
from __future__ import annotations

import os
import sys

import typer

from gfnem_cli.commands import (evaluate, parse, plot, prepare, sample, score, summarize,
                                train)

app = typer.Typer(
    name="gfnem",
    help="Grammar induction and discrete latent-variable learning with GFlowNet-EM.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from gfnem_cli.engine.provenance import gfnem_version, source_commit

        commit = source_commit()
        typer.echo(f"gfnem {gfnem_version()}" + (f" (commit {commit})" if commit else ""))
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print gfnem's version (and the source commit, "
                                            "when run from a git checkout) and exit.")) -> None:
    """Grammar induction and discrete latent-variable learning with GFlowNet-EM."""


app.add_typer(prepare.app, name="prepare")
app.command("train")(train.train)
app.command("sample")(sample.sample)
app.command("parse")(parse.parse)
app.command("evaluate")(evaluate.evaluate)
app.command("score")(score.score)
app.command("summarize")(summarize.summarize)
app.command("plot")(plot.plot)


def main() -> None:
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        app()
        return
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    _leave_torchrun(code)


def _leave_torchrun(code: int) -> None:
    """End a torchrun rank without the interpreter's teardown. The process group's C++
    threads (gloo's) are still joinable when static destructors run, and std::terminate then
    aborts the rank (SIGABRT after a finished run, with or without destroy_process_group).
    Every rank that succeeded waits for the others, then all leave at once; a failed rank
    leaves at once (torchrun stops the rest). Files are already written and closed."""
    import torch.distributed as dist

    if code == 0 and dist.is_available() and dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
