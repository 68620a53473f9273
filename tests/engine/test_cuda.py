"""Short runs on CUDA (issue 14 item 3): skipped, with the reason, where no GPU is visible.

Exact marginal likelihood, GFlowNet-EM on the synthetic corpus and on shapes, each trained a
few steps on `cuda` (some also in bf16 and deterministic), then evaluated on `cuda` and on
the CPU: a GPU-trained run is usable anywhere, and the exact NLL of a grammar is the same on
both devices.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device is visible on this machine")

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "engine"))
from test_data_parallel import GRAMMAR, IMAGES, REPO, data, gfnem  # noqa: E402,F401

CASES = [("synthetic-npcfg.yaml", "corpus", []),
         ("synthetic-npcfg-gfnem.yaml", "corpus", []),
         ("synthetic-npcfg-gfnem.yaml", "corpus", ["--set", "train.precision=bf16",
                                                   "--set", "train.deterministic=true"]),
         ("shapes-dvae-gfnem.yaml", "shapes", []),
         ("shapes-dvae-gfnem.yaml", "shapes", ["--set", "train.precision=bf16"]),
         ("shapes-dvae-gfnem.yaml", "shapes", ["--set", "train.compile=true"])]


@pytest.mark.parametrize("recipe,key,extra", CASES)
def test_short_cuda_run_trains_and_evaluates_anywhere(data, tmp_path, recipe, key, extra):
    common = GRAMMAR if key == "corpus" else IMAGES
    run = tmp_path / "run"
    args = ["train", REPO / "recipes" / recipe, "--out", run, "--set", f"data.path={data[key]}",
            *common, "--set", "train.steps=4", "--set", "train.eval_every=4", *extra]
    gfnem(*args, device="cuda")
    assert "cuda" in json.loads((run / "run_info.json").read_text())["started"]["device"]
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 4 and report["best"]
    figures = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"eval-{device}.json"
        extra_eval = ["--samples", "20"] if key == "shapes" else []
        gfnem("evaluate", run, "--data", data[key], "--device", device, "--json", out,
              *extra_eval)
        figures[device] = json.loads(out.read_text())
    if key == "corpus":
        assert figures["cuda"]["nll_per_token"] == pytest.approx(
            figures["cpu"]["nll_per_token"], rel=1e-4)
