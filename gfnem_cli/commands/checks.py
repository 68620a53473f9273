"""Checks of command-line values shared by prepare / parse / evaluate / sample.

Done here, as one-line `GfnemError`s, rather than with typer's `min=`, whose refusal is a
multi-line box unlike every other error; all run before any file is read or written.
"""
from __future__ import annotations

from gfnem_cli.engine.errors import GfnemError

CHECKPOINTS = ("best", "last")


def at_least(option: str, value: int, minimum: int, why: str = "") -> None:
    if value < minimum:
        raise GfnemError(f"{option} must be at least {minimum}, got {value}"
                         + (f" ({why})" if why else ""))


def checkpoint_name(value: str) -> None:
    if value not in CHECKPOINTS:
        raise GfnemError(f"unknown --checkpoint {value!r}",
                         hint="use best (lowest validation NLL) or last")


def grammar_options_unused(**given: tuple[object, object]) -> None:
    """Refuse grammar-only options (name=(value, default)) given to an image run or image
    set, rather than answer without them: a silently ignored `--pred` is a wrong answer."""
    used = [name for name, (value, default) in given.items() if value != default]
    if used:
        options = ", ".join("--" + name.replace("_", "-") for name in used)
        raise GfnemError(f"{options}: grammar-only, but this is an image run or image set",
                         hint="drop it; see the command's --help for the image options")
