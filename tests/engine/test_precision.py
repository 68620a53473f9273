"""`train.precision: bf16` and `train.deterministic` (engine/precision.py).

On CPU the autocast path runs too (bfloat16 autocast exists for CPU), so what a GPU run will
do is exercised here: the named networks compute in bfloat16 and hand float32 back, nothing
else changes dtype, a forward that raises leaves autocast off, and a short bf16 run of each
family trains, checkpoints float32 parameters and validates to a finite figure. The same runs
on CUDA are in tests/engine/test_cuda.py (skipped without a GPU).
"""
from __future__ import annotations

import json
import os
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
    assert len(use_precision("bf16", torch.device("cpu"), [net])) == 1
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
    assert use_precision("float32", torch.device("cpu"), [net]) == []
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


def test_the_families_networks_run_under_autocast_and_log_probs_stay_float32():
    from types import SimpleNamespace

    from grammars.gflownet.sampler import TreeSampler
    from grammars.run import networks as tree_networks
    from vae.gflownet.sampler import GridSampler
    from vae.models.decoder import Decoder
    from vae.models.dvae import DiscreteVAE
    from vae.models.prior import UniformPrior
    from vae.run import networks as image_networks

    cpu = torch.device("cpu")
    sampler = TreeSampler(7, 3, d_model=16, num_layers=1, num_heads=2)
    hooks = use_precision("bf16", cpu, tree_networks(sampler))
    traj = sampler.sample(torch.randint(1, 7, (2, 5)), torch.tensor([5, 3]), num_per_input=2)
    assert hooks[0].calls > 0                              # the Transformer
    assert sum(h.calls > 0 for h in hooks) >= len(hooks) // 2
    assert traj.log_pf.dtype == torch.float32

    grid = GridSampler(4, (2, 2), channels=8)
    vae = DiscreteVAE(Decoder(4, (2, 2), (8, 8), 8, 8, 1), UniformPrior(4, (2, 2)))
    hooks = use_precision("bf16", cpu, image_networks(SimpleNamespace(
        modules={"model": vae, "sampler": grid})))
    images = torch.randint(0, 2, (3, 8, 8)).float()
    traj = grid.sample(images, 2)
    log_joint = vae.log_joint_grouped(images, traj.z.codes, 2)
    assert all(h.calls > 0 for h in hooks[1:4])            # decoder layers
    assert traj.log_pf.dtype == torch.float32 and log_joint.dtype == torch.float32


@pytest.mark.skipif(os.environ.get("GFNEM_SLOW_TESTS") != "1",
                    reason="torch.compile takes minutes on a CPU (1-3 on this one): set "
                           "GFNEM_SLOW_TESTS=1 to run it")
def test_compiled_networks_give_the_same_log_probs():
    from grammars.gflownet.sampler import TreeSampler
    from grammars.run import networks as tree_networks
    from gfnem_cli.engine.precision import use_compile

    ids, lengths = torch.randint(1, 7, (2, 5)), torch.tensor([5, 3])
    torch.manual_seed(0)
    plain = TreeSampler(7, 3, d_model=16, num_layers=1, num_heads=2)
    compiled = TreeSampler(7, 3, d_model=16, num_layers=1, num_heads=2)
    compiled.load_state_dict(plain.state_dict())
    assert use_compile(True, tree_networks(compiled)) > 0
    torch.manual_seed(1)
    a = plain.sample(ids, lengths, num_per_input=2)
    torch.manual_seed(1)
    b = compiled.sample(ids, lengths, num_per_input=2)
    torch.testing.assert_close(a.log_pf, b.log_pf, rtol=1e-4, atol=1e-5)


def test_row_noise_with_deterministic_kernels_on_cuda_is_refused_first():
    """torch has no deterministic CUDA cumsum in float, which row noise's inverse CDF takes:
    `launch` refuses the pair before it reads the run or the trainer, so before any write (no
    GPU needed: the check reads the device's type)."""
    from gfnem_cli.engine.errors import GfnemError
    from gfnem_cli.engine.runs import launch

    config = {"train": {"deterministic": True, "row_noise": True}}
    with pytest.raises(GfnemError) as caught:
        launch(None, None, False, None, {}, config, torch.device("cuda"), 0, None)
    assert "deterministic" in caught.value.message
    for train in ({"deterministic": True, "row_noise": False},
                  {"deterministic": False, "row_noise": True}):
        with pytest.raises(AttributeError):    # past the check: the (absent) trainer is read
            launch(None, None, False, None, {}, {"train": train}, torch.device("cuda"), 0, None)
