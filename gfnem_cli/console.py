"""Shared rich consoles and the decorator that turns user errors into one clean line.

Both consoles print with `soft_wrap`, so an error, a warning or a note stays one line however
narrow the terminal or pipe is: log scrapers and `grep` see the whole of it. Under torchrun
only rank 0 prints progress, warnings and reports (the other ranks' consoles are quiet), so a
command says everything once; an error is the exception, said by every rank that meets it.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import sys
import time

import typer
from rich.console import Console

_RANK = os.environ.get("RANK", "0") or "0"
_QUIET = _RANK != "0"                                       # a torchrun rank other than 0
console = Console(soft_wrap=True, quiet=_QUIET)   # messages never wrap; tables still fit
err_console = Console(stderr=True, soft_wrap=True, quiet=_QUIET)
_failure_console = Console(stderr=True, soft_wrap=True)    # every rank, quiet or not


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {_escape(message)}", highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    """Said by every rank that fails, a rank other than 0 naming itself: torchrun stops the
    other ranks as soon as one exits, so the first to fail may be the only one heard, and a
    failure of one rank alone (its node's disk, its data) must be heard too."""
    where = "" if not _QUIET else f"rank {_RANK}: "
    _failure_console.print(f"[bold red]error:[/] {where}{message}", highlight=False,
                           soft_wrap=True)


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
            err_console.print("[bold red]interrupted[/]")      # rank 0 stands for all
            sys.exit(130)

    return wrapper


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@contextlib.contextmanager
def work_progress(label: str, total: int, lines: int = 10):
    """Progress of a long pass over inputs (parsing, encoding, an NLL estimate): yields
    `advance(k)`. In a terminal a transient bar; otherwise (a log file, a cluster job) a
    timestamped line on stderr every ~1/`lines` of the work, flushed at once; nothing on a
    torchrun rank other than 0."""
    if _QUIET:
        yield lambda k: None
        return
    if console.is_terminal:
        from rich.progress import Progress

        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda k: bar.advance(task, k)
        return
    state = {"done": 0, "next": 0}
    step = max(1, -(-total // lines))
    began = time.perf_counter()

    def advance(k: int) -> None:
        state["done"] += k
        if state["done"] >= state["next"] or state["done"] >= total:
            stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            print(f"{stamp} {label}: {state['done']:,}/{total:,} in "
                  f"{time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
            state["next"] = state["done"] + step

    yield advance
