"""The `gfnem` command line: subcommands over one shared engine.

Heavy libraries (torch, datasets) are imported inside the commands, never at module import,
so `gfnem --help` answers at once.
"""
from __future__ import annotations

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
    app()


if __name__ == "__main__":
    main()
