"""Shared rich consoles and the decorator that turns user errors into one clean line.

Both consoles print with `soft_wrap`, so an error, a warning or a note stays one line however
narrow the terminal or pipe is: log scrapers and `grep` see the whole of it.
"""
from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

console = Console(soft_wrap=True)          # messages never wrap; tables still fit the width
err_console = Console(stderr=True, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {_escape(message)}", highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def friendly_errors(command):
    """Wrap a Typer command: a GfnemError, or an OSError no deeper layer turned into one (a
    full disk, a read-only output), becomes `error: ...` on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from gfnem_cli.engine.errors import GfnemError
        from gfnem_cli.engine.files import os_error

        try:
            return command(*args, **kwargs)
        except GfnemError as exc:
            error_line(_escape(str(exc)))
            raise typer.Exit(2)
        except OSError as exc:
            error_line(_escape(str(os_error(exc, doing="cannot read or write"))))
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            sys.exit(130)

    return wrapper


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
