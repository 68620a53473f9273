"""Atomic checkpoints and the random-number state that makes `--resume` continue exactly.

A checkpoint is written to a temporary file in the same folder and renamed over the old one,
so an interruption at any moment leaves either the previous checkpoint or the new one, never a
torn file.
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.files import write_atomic

FORMAT_VERSION = 1

# Checkpoint keys renamed to the engine's neutral words; runs written before the rename keep
# resuming, parsing and evaluating because `load` maps them, here and nowhere else.
RENAMED_METHOD_KEYS = {"grammar_optimizer": "model_optimizer"}
RENAMED_EM_KEYS = {"grammar_updates": "model_updates"}


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Serialize in memory, then write through `files.write_atomic`: a full disk or a read-only
    output is then a plain OSError (torch's own writer turns it into an opaque RuntimeError)
    and becomes a one-line error, and the previous checkpoint at `path` stays intact."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    write_atomic(Path(path), lambda handle: handle.write(payload))


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise GfnemError("no checkpoint here", path, hint="train a model first with `gfnem train`")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated, corrupted or foreign file
        raise GfnemError(f"cannot read checkpoint ({type(exc).__name__}): the file is damaged "
                         "or not a checkpoint", path,
                         hint="restore it from a copy, or start the run again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise GfnemError("not a gfnem checkpoint of this version", path)
    missing = [key for key in ("step", "method", "config") if key not in state]
    if missing:
        raise GfnemError(f"checkpoint lacks {', '.join(missing)}", path,
                         hint="restore it from a copy, or start the run again")
    return upgrade(state)


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint in the format written before the neutral names, read as today's: the
    method's `grammar_optimizer` is its `model_optimizer`, the EM state's `grammar_updates`
    its `model_updates`. A current checkpoint passes unchanged."""
    method = state.get("method")
    if isinstance(method, dict):
        for old, new in RENAMED_METHOD_KEYS.items():
            if old in method and new not in method:
                method[new] = method.pop(old)
        em = method.get("em")
        if isinstance(em, dict):
            for old, new in RENAMED_EM_KEYS.items():
                if old in em and new not in em:
                    em[new] = em.pop(old)
    return state


def capture_rng() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
