"""How a treebank is cut into train / valid / test, each decision said and recorded.

WSJ §02–21 / §22 / §23 when the section folders or `wsj_SSxx` names show them; otherwise a
declared ratio split, by file order, or by sentence order when the files are too few for
every split to get one (a single file would otherwise leave valid and test empty).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from gfnem_cli.engine.errors import GfnemError
from grammars.data.treebank import wsj_section

SPLITS = ("train", "valid", "test")
WSJ_SECTIONS = {"train": range(2, 22), "valid": range(22, 23), "test": range(23, 24)}


def ratio_bounds(count: int, ratios: Sequence[float]) -> list[int]:
    """Cut points for `count` items in order: cumulative ratios rounded (199 → 159/20/20)."""
    total, cuts = 0.0, [0]
    for ratio in ratios:
        total += ratio
        cuts.append(min(count, int(round(total * count))))
    cuts[-1] = count
    return cuts


def check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    ratios = tuple(float(r) for r in ratios)
    if (len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios)
            or not abs(sum(ratios) - 1) <= 1e-6):
        raise GfnemError(f"--ratios must be three non-negative numbers summing to 1 "
                         f"(train,valid,test), got {','.join(map(str, ratios))}")
    return ratios


def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        return check_ratios([float(part) for part in text.split(",")])
    except ValueError:
        raise GfnemError(f"--ratios must look like 0.8,0.1,0.1, got {text!r}") from None


def choose_split(mode: str, files: Sequence[Path]) -> tuple[str, str | None]:
    """Resolve `auto`: WSJ splits only when the standard sections are there; else ratio."""
    if mode not in ("auto", "wsj", "ratio", "none"):
        raise GfnemError(f"unknown split {mode!r}", hint="use auto, wsj, ratio or none")
    if mode != "auto":
        return mode, None
    sections = {wsj_section(f) for f in files}
    if None not in sections and sections & set(WSJ_SECTIONS["train"]) and 23 in sections:
        return "wsj", "sections §02–21/§22/§23 found: using the standard WSJ split"
    shown = sorted(s for s in sections if s is not None)
    why = (f"only WSJ sections {', '.join(f'{s:02d}' for s in shown)} are present"
           if shown else "no WSJ sections are visible in the file names")
    return "ratio", f"{why}: using a ratio split by file order (not the standard WSJ split)"


def starved_splits(count: int, ratios: Sequence[float]) -> list[str]:
    """Splits asked for (ratio > 0) that a ratio split of `count` items would leave empty."""
    cuts = ratio_bounds(count, ratios)
    return [name for i, name in enumerate(SPLITS) if ratios[i] > 0 and cuts[i + 1] == cuts[i]]


def split_files(mode: str, files: Sequence[Path], ratios: Sequence[float]
                ) -> tuple[dict[str, list[Path]], list[Path]]:
    """Files per split, and the files that belong to no split (other WSJ sections)."""
    if mode == "none":
        return {"test": list(files)}, []
    if mode == "ratio":
        cuts = ratio_bounds(len(files), ratios)
        return {name: list(files[cuts[i]:cuts[i + 1]]) for i, name in enumerate(SPLITS)}, []
    out: dict[str, list[Path]] = {name: [] for name in SPLITS}
    outside: list[Path] = []
    for path in files:
        section = wsj_section(path)
        if section is None:
            raise GfnemError("no WSJ section visible (a folder 02..24 or a wsj_SSxx name)", path,
                             hint="use --split ratio or --split none")
        name = next((n for n, r in WSJ_SECTIONS.items() if section in r), None)
        (out[name] if name else outside).append(path)
    if not out["train"]:
        # refuse before reading thousands of trees into a corpus with nothing to train on
        found = sorted({wsj_section(p) for p in files})
        raise GfnemError(f"--split wsj: none of the {len(files):,} files is in the WSJ "
                         f"training sections §02–21 (sections found: "
                         f"{', '.join(f'{s:02d}' for s in found)})",
                         hint="use --split ratio for a split by file order, or --split none "
                              "for one split `test`")
    return out, outside
