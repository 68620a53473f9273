"""`train.precision: bf16` and `train.deterministic` (engine/precision.py).

On CPU the autocast path runs too (bfloat16 autocast exists for CPU), so what a GPU run will
do is exercised here: the named networks compute in bfloat16 and hand float32 back, nothing
else changes dtype, a forward that raises leaves autocast off, and a short bf16 run of each
family trains, checkpoints float32 parameters and validates to a finite figure. The same runs
on CUDA are in tests/engine/test_cuda.py (skipped without a GPU).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from gfnem_cli.engine.precision import use_precision

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "engine"))
from test_data_parallel import GRAMMAR, IMAGES, REPO, data, gfnem, tensors  # noqa: E402,F401


class Net(torch.nn.Module):
    def __init__(self, fail: bool = False):
        super().__init__()
        self.linear, self.fail, self.seen = torch.nn.Linear(4, 3), fail, None

    def forward(self, x):
        y = self.linear(x)
        self.seen = y.dtype
        if self.fail:
            raise FloatingPointError("a check inside the forward")
        return y, {"logits": y}


def test_networks_compute_in_bf16_and_hand_back_float32():
    net, other = Net(), torch.nn.Linear(4, 3)
    assert use_precision("bf16", torch.device("cpu"), [net]) == 1
    out, extra = net(torch.randn(2, 4))
    assert net.seen == torch.bfloat16                      # inside: autocast
    assert out.dtype == torch.float32 and extra["logits"].dtype == torch.float32
    assert other(torch.randn(2, 4)).dtype == torch.float32   # not named: unchanged
    assert net.linear.weight.dtype == torch.float32          # parameters stay float32
    assert not torch.is_autocast_enabled("cpu")


def test_a_forward_that_raises_leaves_autocast_off():
    net = Net(fail=True)
    use_precision("bf16", torch.device("cpu"), [net])
    with pytest.raises(FloatingPointError):
        net(torch.randn(2, 4))
    assert not torch.is_autocast_enabled("cpu")


def test_float32_changes_nothing():
    net = Net()
    assert use_precision("float32", torch.device("cpu"), [net]) == 0
    net(torch.randn(2, 4))
    assert net.seen == torch.float32


@pytest.mark.parametrize("recipe,key", [("synthetic-npcfg-gfnem.yaml", "corpus"),
                                        ("shapes-dvae-gfnem.yaml", "shapes")])
def test_short_bf16_runs_train_and_validate(data, tmp_path, recipe, key):
    common = GRAMMAR if key == "corpus" else IMAGES
    run = tmp_path / "run"
    gfnem("train", REPO / "recipes" / recipe, "--out", run, "--set", f"data.path={data[key]}",
          *common, "--set", "train.steps=3", "--set", "train.eval_every=3",
          "--set", "train.precision=bf16", "--set", "train.deterministic=true")
    assert all(t.dtype == torch.float32 for t in tensors(run).values())
    report = json.loads((run / "report.json").read_text())
    figure = report["best"].get("val_nll_per_token", report["best"].get("val_nll_nats"))
    assert figure is not None and figure == figure and figure < float("inf")
