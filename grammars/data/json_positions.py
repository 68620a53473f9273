"""The line of every value in a JSON text, so an error about `rules[12]` can say `FILE:40:`.

Why: `json.loads` keeps no positions, and a hand-written grammar file is fixed by going to
the line. `value_lines(text)` walks a text that `json.loads` has already accepted and maps
each value's path (a tuple of keys and list indices, `()` the whole document) to the
1-based line where the value starts. It also finds a key given twice in one object, which
`json.loads` silently resolves by keeping the last: `DuplicateKey` says which and where.
"""
from __future__ import annotations

import bisect
import json
import re

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class DuplicateKey(Exception):
    """A key that occurs twice in one JSON object: its path (parent + key) and line."""

    def __init__(self, path: tuple, line: int):
        self.path = path
        self.line = line
        super().__init__(f"duplicate key {path[-1]!r}")


def value_lines(text: str) -> dict[tuple, int]:
    """{path: line} for every value of a valid JSON text (raises DuplicateKey)."""
    newlines = [m.start() for m in re.finditer("\n", text)]
    lines: dict[tuple, int] = {}

    def line_of(offset: int) -> int:
        return bisect.bisect_left(newlines, offset) + 1

    def skip(i: int) -> int:
        return _SPACE.match(text, i).end()

    def value(i: int, path: tuple) -> int:
        i = skip(i)
        lines[path] = line_of(i)
        if text[i] == "{":
            return members(i + 1, path)
        if text[i] == "[":
            return elements(i + 1, path)
        return _DECODER.raw_decode(text, i)[1]

    def members(i: int, path: tuple) -> int:
        seen = set()
        i = skip(i)
        if text[i] == "}":
            return i + 1
        while True:
            start = skip(i)
            key, i = _DECODER.raw_decode(text, start)
            if key in seen:
                raise DuplicateKey(path + (key,), line_of(start))
            seen.add(key)
            i = value(skip(i) + 1, path + (key,))       # past the ':'
            i = skip(i)
            if text[i] == "}":
                return i + 1
            i += 1                                      # past the ','

    def elements(i: int, path: tuple) -> int:
        i = skip(i)
        if text[i] == "]":
            return i + 1
        index = 0
        while True:
            i = skip(value(i, path + (index,)))
            index += 1
            if text[i] == "]":
                return i + 1
            i += 1

    value(0, ())
    return lines


def json_path(path: tuple) -> str:
    """`rules[3][1]`, `roots.NP`, `name`; the whole document is `(top level)`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += ("." if text else "") + part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "(top level)"
