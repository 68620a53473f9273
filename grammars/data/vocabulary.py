"""Word normalization and the token vocabulary (DESIGN §6: lowercase, digit runs → `N`, top-k).

Index 0 is always `<unk>`, so a model's embedding table and any corpus encoded with the same
vocabulary agree, and an unseen word never needs a special case.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.files import write_text_atomic

UNK = "<unk>"
_DIGITS = re.compile(r"\d+")


def normalize_word(word: str, lowercase: bool = True, replace_digits: bool = True) -> str:
    """`61` → `N`, `1980s` → `Ns`, `3.5` → `N.N`: each run of digits becomes one `N`."""
    if lowercase:
        word = word.lower()
    if replace_digits:
        word = _DIGITS.sub("N", word)
    return word


class Vocabulary:
    """Token ↔ id map; ids are stable once built (saved as `vocab.json`)."""

    def __init__(self, tokens: Sequence[str]):
        if not tokens or tokens[0] != UNK:
            raise ValueError(f"a vocabulary starts with {UNK}")
        self.tokens = list(tokens)
        self.index = {token: i for i, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("duplicate tokens in vocabulary")

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], size: int = 10000) -> "Vocabulary":
        """The `size` most frequent tokens (ties broken alphabetically) plus `<unk>`; 0 = all."""
        counts = Counter(token for sentence in sentences for token in sentence)
        counts.pop(UNK, None)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        if size > 0:
            ranked = ranked[:size]
        return cls([UNK] + [token for token, _ in ranked])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        get = self.index.get
        return [get(token, 0) for token in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def to_json(self) -> dict:
        return {"unk": UNK, "tokens": self.tokens}

    def save(self, path: Path) -> None:
        write_text_atomic(Path(path), json.dumps(self.to_json(), ensure_ascii=False, indent=0)
                          + "\n")

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        """Read `vocab.json` (or a directory holding one); anything unreadable or not a list
        of distinct strings starting with `<unk>` is a one-line error naming the file."""
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise GfnemError("no vocabulary here", path,
                             hint="point at a directory written by `gfnem prepare`") from None
        except OSError as exc:
            raise GfnemError(f"cannot read the vocabulary: {exc.strerror or exc}", path) from None
        try:
            data = json.loads(raw.decode("utf-8"))
            tokens = data.get("tokens") if isinstance(data, dict) else None
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise ValueError("`tokens` is not a list of strings")
            return cls(tokens)
        except ValueError as exc:   # JSON and UTF-8 errors are ValueErrors too
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise GfnemError(f"damaged or not a gfnem vocabulary ({reason})", path,
                             hint="prepare the corpus (or train the run) again") from None
