"""`train.row_noise` for both families' sleep phases and for `method: exact-sampling` under
torchrun (issue 14), on CPU with gloo; the harness and the small corpus are
test_data_parallel.py's.

Two ranks with B sentences each end where one process with the global batch 2B ends, and the
M-step gate decides alike at every step: each dream and each posterior sample is keyed by its
global index (grammars/models/generation.py, vae/models/dvae.py, grammars/charts/
posterior_sampling.py). The
shift-invariant biases are left out of the comparison, as in test_data_parallel.py (Adam turns
the rounding noise of their zero gradients into steps of ±lr).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gfnem_cli.engine import distributed, row_noise
from test_data_parallel import (GRAMMAR, IMAGES, REPO, data, gfnem,  # noqa: F401
                                leave_gloo, records, tensors)

SHIFT_INVARIANT = ("heads.position.bias", "self_attn.in_proj_bias")
NOISE = ["--set", "train.row_noise=true"]


def largest_difference(a: Path, b: Path) -> float:
    """max |a − b| over every float tensor of the two runs' last checkpoints (the key third
    of an attention layer's in_proj_bias and the position logits' bias left out)."""
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    worst = 0.0
    for key in ta:
        x, y = ta[key].double(), tb[key].double()
        if key.endswith("in_proj_bias"):
            third = x.shape[0] // 3
            x, y = torch.cat([x[:third], x[2 * third:]]), torch.cat([y[:third], y[2 * third:]])
        elif key.endswith(SHIFT_INVARIANT):
            continue
        worst = max(worst, float((x - y).abs().max()))
    return worst


def same_steps(one: Path, two: Path, keys: tuple[str, ...]) -> None:
    """The gate's decisions equal, and the global figures within rounding, step by step."""
    a, b = records(one, "train"), records(two, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    assert [r.get("mstep") for r in a] == [r.get("mstep") for r in b]
    for x, y in zip(a, b):
        for key in keys:
            assert y[key] == pytest.approx(x[key], rel=1e-5), (key, x["step"])


@pytest.mark.parametrize("dreams", [0, 5])      # 0: a shard's count each; 5: the world's
def test_sleep_phase_with_row_noise_two_ranks_equal_one_process(data, tmp_path, dreams):
    """GFlowNet-EM with a sleep phase every step and a gate at 2,100 nats² (near this run's
    E-loss average, so it opens on some steps only: 0 0 0 1 0 1 when written)."""
    recipe = REPO / "recipes" / "synthetic-npcfg-gfnem.yaml"
    common = ["--set", f"data.path={data['corpus']}", *GRAMMAR, *NOISE, "--set", "train.steps=6",
              "--set", "em.sleep_weight=1.0", "--set", f"em.sleep_batch_size={dreams}",
              "--set", "em.threshold_max=2100", "--set", "em.threshold_min=2100"]
    one, two = tmp_path / "one", tmp_path / "two"
    gfnem("train", recipe, "--out", one, *common)
    gfnem("train", recipe, "--out", two, *common, ranks=2)
    assert largest_difference(one, two) < 5e-6       # 4.5e-7 seen (model.rule_out.weight)
    same_steps(one, two, ("loss", "e_loss", "sleep_nll"))


def test_image_sleep_phase_with_row_noise_two_ranks_equal_one_process(data, tmp_path):
    """The grid GFlowNet with a sleep phase every step and an M-step every step: each dream
    (its grid and its pixels) is keyed by its global row (vae/models/dvae.py)."""
    recipe = REPO / "recipes" / "shapes-dvae-gfnem.yaml"
    common = ["--set", f"data.path={data['shapes']}", *IMAGES, "--set", "train.steps=6",
              "--set", "em.sleep_weight=0.3"]
    one, two, own = tmp_path / "one", tmp_path / "two", tmp_path / "own"
    gfnem("train", recipe, "--out", one, *common, *NOISE)
    gfnem("train", recipe, "--out", two, *common, *NOISE, ranks=2)
    assert largest_difference(one, two) < 5e-6
    same_steps(one, two, ("loss", "e_loss", "sleep_nll"))
    # without row noise each rank dreams from its own generator: the test can tell
    gfnem("train", recipe, "--out", own, *common, ranks=2)
    assert largest_difference(one, own) > 1e-4


def test_exact_sampling_with_row_noise_two_ranks_equal_one_process(data, tmp_path):
    recipe = REPO / "recipes" / "synthetic-npcfg.yaml"
    common = ["--set", f"data.path={data['corpus']}", *GRAMMAR, "--set", "train.steps=6",
              "--set", "method=exact-sampling", "--set", "em.mstep_samples=3"]
    one, two, own = tmp_path / "one", tmp_path / "two", tmp_path / "own"
    gfnem("train", recipe, "--out", one, *common, *NOISE)
    gfnem("train", recipe, "--out", two, *common, *NOISE, ranks=2)
    assert largest_difference(one, two) < 1e-6       # 6e-8 seen
    same_steps(one, two, ("loss", "mstep_log_joint"))
    # without row noise each rank draws from its own generator: the test can tell
    gfnem("train", recipe, "--out", own, *common, ranks=2)
    assert largest_difference(one, own) > 1e-4


class _Sentences:
    """A global batch as `distributed.shard` sees one."""

    def __init__(self, ids: torch.Tensor, lengths: torch.Tensor):
        self.ids, self.lengths = ids, lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self, rows: list[int]) -> "_Sentences":
        return _Sentences(self.ids[rows], self.lengths[rows])


def _draws() -> list[torch.Tensor]:
    """This rank's exact posterior samples and dreams of one training step, each trimmed to
    its shard's longest sentence, gathered in global row order (padded to fixed widths)."""
    from grammars.charts.posterior_sampling import sample_posterior
    from grammars.models import build_grammar
    from grammars.training.family import GrammarFamily
    from grammars.training.mcem import ChainStore

    model = build_grammar("npcfg", 30, seed=0, nonterminals=4, preterminals=5, symbol_dim=16)
    lengths = torch.tensor([9, 4, 6, 2, 5])
    batch = distributed.shard(_Sentences(torch.randint(
        30, (5, 9), generator=torch.Generator().manual_seed(2)), lengths))
    width, N = int(batch.lengths.max()), 3
    row_noise.configure(True, seed=11)
    try:
        with row_noise.training_step(4, distributed.first_row()):
            trees = sample_posterior(model.params(batch.ids[:, :width], batch.lengths), N,
                                     noise=row_noise.for_rows(len(batch) * N, N, "cpu"))
            (ids, _), dreamt = GrammarFamily(model, None, "cpu", 6).dream(len(batch))
    finally:
        row_noise.configure(False, seed=0)
    samples = torch.full((len(batch) * N, 8, 3), -1, dtype=torch.int32)
    samples[:, :width - 1] = ChainStore.pack(trees)
    words = torch.zeros(len(batch), 6, dtype=torch.long)
    words[:, :ids.shape[1]] = ids
    nodes = torch.full((len(batch), 5, 3), -1, dtype=torch.long)
    packed = ChainStore.pack(dreamt)
    nodes[:, :packed.shape[1]] = packed
    dreams = torch.cat([words, nodes.flatten(1)], 1)
    return [distributed.gather_rows(samples.reshape(len(batch), -1).long(), pad=-9),
            distributed.gather_rows(dreams, pad=-9)]


def _sharded(rank: int, size: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    distributed._world = distributed.World(rank, size)
    found = _draws()
    if rank == 0:
        torch.save(found, out)
    leave_gloo()


def test_two_gloo_ranks_draw_one_processs_posterior_samples_and_dreams(tmp_path):
    """Spawned ranks with 2 and 3 of the 5 sentences, each padded to its own longest."""
    import torch.multiprocessing as mp

    out = tmp_path / "draws.pt"
    mp.spawn(_sharded, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2)
    samples, dreams = torch.load(out)
    one_samples, one_dreams = _draws()
    assert torch.equal(samples, one_samples) and torch.equal(dreams, one_dreams)
    assert bool((one_samples[0] >= 0).any()) and bool((one_dreams[:, 0] > 0).all())
