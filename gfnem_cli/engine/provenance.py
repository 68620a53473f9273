"""What version of gfnem is running: the installed version and the source tree's git commit.

Light on purpose (no torch), so `gfnem --version` answers at once; run directories record the
same two facts in `run_info.json`, and every `evaluate --json` payload carries them
(`provenance()`), so a figure handed on says which code produced it.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def gfnem_version() -> str:
    try:
        from importlib.metadata import version

        return version("gfnem")
    except Exception:  # not installed as a distribution (run from a source tree)
        return "unknown"


def source_commit() -> str | None:
    """The source tree's git commit (with `-dirty` when it has local changes), if any."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=5,
                               env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict[str, str | None]:
    """`gfnem_version` and `commit`, under the names `run_info.json` uses."""
    return {"gfnem_version": gfnem_version(), "commit": source_commit()}
