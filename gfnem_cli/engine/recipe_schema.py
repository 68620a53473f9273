"""The range vocabulary of recipe keys: what each value may be, and how a refusal reads.

A family declares each key as `Key(default, check)` (`grammars/recipe.py`); `split_schema`
turns that tree into the plain defaults dict every run reads and a flat `{dotted key: check}`
table, and `register_schema` files both under the family's name, so the engine's config
module (`engine/config.py`) finds the ranges from the defaults alone (by their `family` key).

A check's `coerce(value)` returns the accepted value (an int for an integer key, a float for a
number key) or raises `OutOfRange`; `describe` is the range in words, read by the error line
`key 'train.lr' must be a finite number > 0, got -1`. Numbers may also arrive as strings:
YAML 1.1 reads `1e-3`, `inf` and `nan` as text, so a number key parses them itself (and a text
key such as a path keeps them as written). NaN is never in a range; an infinity only where a
bound is open-ended and the check allows it.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple

_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_SPECIAL = {"inf": math.inf, ".inf": math.inf, "infinity": math.inf,
            "nan": math.nan, ".nan": math.nan}


class OutOfRange(ValueError):
    """A value outside its key's range; `hint` says what to write instead, when known."""

    def __init__(self, hint: str | None = None):
        super().__init__(hint or "")
        self.hint = hint


def show(value: Any, limit: int = 60) -> str:
    """A value as the error line shows it: repr, cut short (a recipe may hold a huge list)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value that cannot even be shown is still refused
        text = f"<{type(value).__name__}>"
    if isinstance(value, dict):
        text = f"a mapping {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(text: str) -> str:
    """A key as an error line names it: 'a.b', or escaped when it holds a newline or such."""
    text = str(text)
    return f"'{text}'" if text.isprintable() else repr(text)


def number_of(value: Any) -> int | float | None:
    """An int or float from a YAML value (numbers, or text such as '1e-3', 'inf', '-.inf');
    None for anything else. Booleans are not numbers here, though Python says they are."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    sign = -1.0 if text[:1] == "-" else 1.0
    bare = text[1:] if text[:1] in "+-" else text
    if bare in _SPECIAL:
        return sign * _SPECIAL[bare]
    if _DECIMAL.fullmatch(text):
        return float(text)    # a huge exponent reads as inf, which the range then judges
    return None


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class Check:
    """One key's range. Subclasses set `describe` and implement `coerce`."""

    describe: str = "a value"

    def coerce(self, value: Any) -> Any:
        raise NotImplementedError

    def message(self, key: str, value: Any) -> str:
        return f"key '{key}' must be {self.describe}, got {show(value)}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe}>"


class _Numeric(Check):
    def message(self, key: str, value: Any) -> str:
        shown = value.strip() if isinstance(value, str) and number_of(value) is not None else None
        return f"key '{key}' must be {self.describe}, got {shown or show(value)}"


class Real(_Numeric):
    """A float within bounds (`gt`/`ge` below, `lt`/`le` above). `finite=False` lets an
    infinity in where no bound shuts it out (e.g. `em.threshold_max: .inf`); NaN never."""

    def __init__(self, gt=None, ge=None, lt=None, le=None, finite: bool = True,
                 exclude: tuple = (), describe: str | None = None):
        self.gt, self.ge, self.lt, self.le = gt, ge, lt, le
        self.finite, self.exclude = finite, tuple(exclude)
        self.describe = describe or self._words()

    def _words(self) -> str:
        low = (f"> {_fmt(self.gt)}" if self.gt is not None
               else f">= {_fmt(self.ge)}" if self.ge is not None else None)
        high = (f"< {_fmt(self.lt)}" if self.lt is not None
                else f"<= {_fmt(self.le)}" if self.le is not None else None)
        if low and high:
            left = "(" if self.gt is not None else "["
            right = ")" if self.lt is not None else "]"
            lo = self.gt if self.gt is not None else self.ge
            hi = self.lt if self.lt is not None else self.le
            bounds = f" in {left}{_fmt(lo)}, {_fmt(hi)}{right}"
        else:
            bounds = f" {low or high}" if (low or high) else ""
        words = ("a finite number" if self.finite else "a number") + bounds
        if self.exclude:
            words += " other than " + ", ".join(_fmt(x) for x in self.exclude)
        if not self.finite:
            ends = [e for e, open_end in ((".inf", high is None), ("-.inf", low is None))
                    if open_end]
            words += f" ({' and '.join(ends)} allowed)" if ends else ""
        return words

    def coerce(self, value: Any) -> float:
        number = number_of(value)
        if number is None:
            raise OutOfRange()
        try:
            x = float(number)
        except OverflowError:   # an int beyond any float
            x = math.inf if number > 0 else -math.inf
        if math.isnan(x) or (self.finite and math.isinf(x)):
            raise OutOfRange()
        if ((self.gt is not None and not x > self.gt) or (self.ge is not None and not x >= self.ge)
                or (self.lt is not None and not x < self.lt)
                or (self.le is not None and not x <= self.le) or x in self.exclude):
            raise OutOfRange()
        return x


class Integer(_Numeric):
    """An int in [lo, hi]; a float or numeric text with an integral value counts (`1e4`)."""

    def __init__(self, lo: int | None = None, hi: int | None = None, describe: str | None = None):
        self.lo, self.hi = lo, hi
        if describe is None:
            describe = ("an integer" + (f" in [{lo}, {hi}]" if lo is not None and hi is not None
                                        else f" >= {lo}" if lo is not None
                                        else f" <= {hi}" if hi is not None else ""))
        self.describe = describe

    def coerce(self, value: Any) -> int:
        number = number_of(value)
        if number is None:
            raise OutOfRange()
        if isinstance(number, float):
            if not (math.isfinite(number) and number.is_integer()):
                raise OutOfRange()
            number = int(number)
        if (self.lo is not None and number < self.lo) or (self.hi is not None and number > self.hi):
            raise OutOfRange()
        return number


class ZeroOr(Check):
    """0 with a meaning of its own ("no cap", "off"), or a value of `check`."""

    def __init__(self, check: Check, meaning: str):
        self.check = check
        self.describe = f"0 ({meaning}) or {check.describe}"

    def coerce(self, value: Any) -> Any:
        if number_of(value) == 0:
            return 0
        return self.check.coerce(value)


class Boolean(Check):
    describe = "true or false"

    def coerce(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise OutOfRange()
        return value


class Text(Check):
    """A string (a path, a split name). Numbers are refused: quote them in YAML."""

    def __init__(self, nonempty: bool = False):
        self.nonempty = nonempty
        self.describe = "a non-empty string" if nonempty else "a string"

    def coerce(self, value: Any) -> str:
        if not isinstance(value, str) or (self.nonempty and not value.strip()):
            raise OutOfRange("quote it" if isinstance(value, (int, float)) else None)
        if "\0" in value:      # no path or name holds one; the OS would raise, not refuse
            raise OutOfRange("a NUL character cannot be part of a name")
        return value


class OneOf(Check):
    """A string from a fixed set; `fold` maps accepted spellings onto one (e.g. 'Reverse-KL'
    onto 'reverse_kl'), and the canonical choice is what the config keeps."""

    def __init__(self, *choices: str, fold: Callable[[str], str] | None = None):
        self.choices, self.fold = tuple(choices), fold
        self.describe = "one of " + ", ".join(self.choices)

    def coerce(self, value: Any) -> str:
        if isinstance(value, str):
            key = self.fold(value) if self.fold else value
            if key in self.choices:
                return key
            near = difflib.get_close_matches(key, self.choices, n=1, cutoff=0.6)
            raise OutOfRange(f"did you mean '{near[0]}'?" if near else None)
        raise OutOfRange()

    def message(self, key: str, value: Any) -> str:
        return f"unknown {key} {show(value)}: expected {self.describe}"


class ListOf(Check):
    """A list of exactly `length` values, each within `item`."""

    def __init__(self, item: Check, length: int, describe: str | None = None):
        self.item, self.length = item, length
        self.describe = describe or f"a list of {length} values, each {item.describe}"

    def coerce(self, value: Any) -> list:
        if not isinstance(value, (list, tuple)) or len(value) != self.length:
            raise OutOfRange()
        return [self.item.coerce(v) for v in value]


class Mapping(Check):
    """A free-form mapping (a default of `{}`): any sub-keys, checked by whoever reads them."""

    describe = "a mapping"

    def coerce(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise OutOfRange()
        return value


# ---- the words families use most (one instance each, so the schemas read as a table)
POSITIVE = Real(gt=0)
POSITIVE_OR_INF = Real(gt=0, finite=False)
NON_NEGATIVE = Real(ge=0)
PROBABILITY = Real(ge=0, le=1, describe="a probability in [0, 1]")
UNIT_INTERVAL_OPEN = Real(ge=0, lt=1)          # [0, 1): decays, Adam's betas
ANY_THRESHOLD = Real(finite=False)             # any number but NaN
COUNT = Integer(lo=0)                          # integer >= 0
AT_LEAST_ONE = Integer(lo=1)                   # integer >= 1
SEED = Integer(lo=0, hi=2**32 - 1)             # what numpy's and torch's seeders all take
BOOLEAN = Boolean()
TEXT = Text()
NAME = Text(nonempty=True)
BETAS = ListOf(UNIT_INTERVAL_OPEN, 2, describe="two numbers in [0, 1), e.g. [0.9, 0.999]")


@dataclass(frozen=True)
class Key:
    """A recipe key as a family declares it: its default and its range."""
    default: Any
    check: Check

    def __post_init__(self):
        self.check.coerce(self.default)   # a default outside its own range is a bug


class Conflict(NamedTuple):
    """A cross-key problem a family's `conflicts(config)` reports; the error is placed where
    the first of `keys` that a recipe or `--set` gave was set (its file and line)."""
    keys: tuple
    message: str
    hint: str | None = None


@dataclass
class Schema:
    defaults: dict
    ranges: dict[str, Check]
    conflicts: Callable[[dict], Iterable[Conflict]] | None = None


def split_schema(tree: dict, prefix: str = "") -> tuple[dict, dict[str, Check]]:
    """A tree of `Key`s -> (plain defaults tree, {dotted key: check}); every leaf must be a Key."""
    defaults, ranges = {}, {}
    for name, node in tree.items():
        path = f"{prefix}{name}"
        if isinstance(node, Key):
            defaults[name], ranges[path] = node.default, node.check
        elif isinstance(node, dict) and node:
            defaults[name], sub = split_schema(node, path + ".")
            ranges.update(sub)
        else:
            raise TypeError(f"schema key '{path}' declares no range: write Key(default, check)")
    return defaults, ranges


_SCHEMAS: dict[str, Schema] = {}


def register_schema(schema: Schema) -> None:
    """File a family's schema under its `family` default, for `schema_for`."""
    _SCHEMAS[schema.defaults["family"]] = schema


def schema_for(defaults: dict) -> Schema:
    """The registered schema of these defaults (by their `family`), or a programming error."""
    schema = _SCHEMAS.get(defaults.get("family")) if isinstance(defaults, dict) else None
    if schema is None:
        raise LookupError(f"no recipe schema registered for family {defaults.get('family')!r}: "
                          "the family's recipe module must call register_schema")
    return schema
