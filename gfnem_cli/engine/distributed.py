"""Data parallelism under `torchrun` (DESIGN.md §9), for every family and method.

`torchrun --nproc_per_node=K -m gfnem_cli train ...` starts K copies of the command with
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR set; `join` turns them into a process group
(NCCL on GPUs, gloo on CPUs). A plain `gfnem train` never joins one and every function here is
then the identity, at no cost.

What keeps the ranks one run:

* **The batches.** Every rank builds the same deterministic schedule and takes its rows of each
  global batch (`shard`): contiguous, nearly equal parts, so a run resumes under any world size.
  A rank left without a row (a short last batch) trains on a copy of row 0 with weight 0.
* **The gradients.** Every loss a method steps on is a mean over the rows of its batch, so the
  global batch's gradient is Σ_r w_r ∇L_r with w_r = n_r / N, this rank's share of the rows.
  `reduce_gradients` (called by the engine's checked clip, before the norm is taken) scales by
  w_r and sums over ranks in one coalesced all-reduce: the optimizer then sees exactly the
  gradient one process would on the whole batch. This is DDP's arithmetic, done where the
  engine already handles every gradient; DDP's own wrapper is not used because an EM step runs
  up to three backward passes (E-step, sleep, M-step) through functions of the modules other
  than `forward`, on a different parameter subset each, which its reducer does not follow.
  A parameter no rank gave a gradient keeps `grad = None` (Adam then skips it, as one
  process would).
* **The decisions.** The E-loss the M-step gate reads and the stop request are agreed over
  ranks (`weighted_mean`, `agree_on_step`), and a non-finite loss anywhere makes the summed
  gradients' norm non-finite everywhere, so all ranks take the same branch and the EM state
  never diverges; the metrics logged are the weighted means. An EM step costs three small
  collectives besides the gradient sums.
* **The randomness.** Rank r seeds its generators with seed + r·`RANK_SEED_STRIDE` (rank 0 with
  the recipe's seed, so one process is unchanged); a checkpoint keeps every rank's generator
  state, restored when the world size is the same. With `train.row_noise` a training step's
  draws are keyed by each row's global index instead (`row_noise.py`, reading `first_row`),
  and stochastic methods train what one process does.

Rank 0 alone writes files and shows progress; the other ranks wait for it at the collectives.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

RANK_SEED_STRIDE = 1_000_003
TIMEOUT = datetime.timedelta(hours=4)     # rank 0 validates while the others wait


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world = World()
_rows, _total = 1, 1     # this rank's rows n_r of the current global batch's N
_first = 0               # the global index of this rank's first row of it


def world() -> World:
    return _world


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def join(device: torch.device) -> World:
    """Join the process group torchrun describes (no-op without one); idempotent."""
    global _world
    if not launched_by_torchrun() or _world.active:
        return _world
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    _world = World(dist.get_rank(), dist.get_world_size(),
                   int(os.environ.get("LOCAL_RANK", "0") or 0))
    return _world


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each rank takes the GPU of its local rank."""
    if _world.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", _world.local_rank)
    return device


def rank_seed(seed: int, rank: int | None = None) -> int:
    return seed + RANK_SEED_STRIDE * (_world.rank if rank is None else rank)


# ------------------------------------------------------------------------ batches
def shard_rows(count: int, rank: int | None = None, size: int | None = None
               ) -> tuple[list[int], float]:
    """(this rank's rows of a global batch of `count` rows, its weight n_r / count)."""
    rank = _world.rank if rank is None else rank
    size = _world.size if size is None else size
    start, stop = count * rank // size, count * (rank + 1) // size
    if stop > start:
        return list(range(start, stop)), (stop - start) / count
    return [0], 0.0


def shard(batch: Any) -> Any:
    """This rank's part of `batch` (a family's batch has `__len__` and `rows(list) -> batch`),
    and the weight every reduction of this step uses."""
    global _rows, _total, _first
    if not _world.active:
        return batch
    rows, weight = shard_rows(len(batch))
    _rows, _total = (len(rows) if weight > 0 else 0), len(batch)
    _first = rows[0] if weight > 0 else 0
    return batch.rows(rows)


def first_row() -> int:
    """The global index of this rank's first row of the current batch (0 in one process);
    `row_noise` keys each row's draws by it."""
    return _first


def step_weight() -> float:
    """n_r / N: this rank's share of the current global batch (0 for a placeholder row)."""
    return _rows / _total


# ------------------------------------------------------------------------ collectives
def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    dist.all_reduce(tensor)
    return tensor


def reduce_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Σ_r w_r grad_r into every rank's `grad`, in one all-reduce (see the module docstring)."""
    if not _world.active or not params:
        return
    reference = params[0]
    flags = torch.tensor([0.0 if p.grad is None else 1.0 for p in params],
                         dtype=reference.dtype, device=reference.device)
    weight = step_weight()
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * weight
             for p in params]
    buffer = _all_reduce(torch.cat(grads + [flags]))
    offset = 0
    for p, had in zip(params, buffer[-len(params):].tolist()):
        n = p.numel()
        p.grad = buffer[offset:offset + n].view_as(p).clone() if had > 0 else None
        offset += n


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """A statistic that adds over rows (a VQ-VAE code count), summed over every rank's rows;
    a rank's zero-weight placeholder row is left out."""
    if not _world.active:
        return tensor
    return _all_reduce(tensor.clone() * (1.0 if _rows > 0 else 0.0))


def weighted_mean(value: torch.Tensor) -> torch.Tensor:
    """A per-row mean of this rank's shard (a device scalar) -> the same mean over the
    global batch, left on the device (an all-reduce the host does not wait for on a GPU):
    read later with the step's other figures."""
    if not _world.active:
        return value.detach()
    total = _all_reduce(value.detach().double().reshape(1) * _rows)
    return total[0] / _total


def agree_on_step(values: dict[str, float] | None, stop: bool
                  ) -> tuple[dict[str, float] | None, bool]:
    """After a step: `weighted_mean` of every figure of its metrics record (None for a skipped
    step; the keys are the same on every rank, they follow the same code path) and whether
    any rank was asked to stop, in one all-reduce."""
    if not _world.active:
        return values, stop
    keys = sorted(k for k, v in (values or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool))
    total = _all_reduce(torch.tensor([float(values[k]) * _rows for k in keys]
                                     + [1.0 if stop else 0.0], dtype=torch.float64)).tolist()
    if values is not None:
        values = {**values, **{k: v / _total for k, v in zip(keys, total)}}
    return values, total[-1] > 0


def gather_rows(local: torch.Tensor, pad: int | float = 0) -> torch.Tensor:
    """A per-row tensor (n_r, d) of this rank's shard of the current global batch -> every
    rank's rows (N, d') in global row order (the shards are contiguous), each padded on the
    right with `pad` to the widest d; a placeholder row is left out. For state every rank must
    keep whole (MC-EM's chains): one all-reduce of the width, one all-gather."""
    if not _world.active:
        return local
    import torch.distributed as dist

    width = torch.tensor([local.shape[1]], dtype=torch.int64, device=local.device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    counts = [len(rows) if weight > 0 else 0
              for rows, weight in (shard_rows(_total, r) for r in range(_world.size))]
    block = local.new_full((max(counts), int(width)), pad)
    block[:_rows, :local.shape[1]] = local[:_rows]
    blocks = [torch.empty_like(block) for _ in range(_world.size)]
    dist.all_gather(blocks, block)
    return torch.cat([part[:count] for part, count in zip(blocks, counts)])


def barrier() -> None:
    if _world.active:
        import torch.distributed as dist

        dist.barrier()


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (the generator states a checkpoint keeps)."""
    if not _world.active:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * _world.size
    dist.all_gather_object(out, value)
    return out



def _state_numbers(state: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(name, figure) of every tensor and number in a method's state, two figures per tensor
    (its sum and its sum of squares in float64); generator states differ by design."""
    out: list[tuple[str, float]] = []
    if isinstance(state, dict):
        for key in sorted(state, key=str):
            if key != "generator":
                out += _state_numbers(state[key], f"{prefix}{key}.")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            out += _state_numbers(value, f"{prefix}{i}.")
    elif isinstance(state, torch.Tensor) and not state.dtype.is_complex:
        values = state.detach().double()
        out += [(prefix + "sum", float(values.sum())), (prefix + "sumsq", float((values ** 2).sum()))]
    elif isinstance(state, (int, float)) and not isinstance(state, bool):
        out.append((prefix.rstrip("."), float(state)))
    return out


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)          # NaN on both ranks is the same NaN


def first_divergence(state: Any) -> str | None:
    """The first entry of a method's state (parameters, optimizer moments, EM counters and
    averages) that is not bit-identical on every rank, or None. Ranks that apply the same
    reduced gradients stay identical, so a difference is a bug, caught at the checkpoint."""
    if not _world.active:
        return None
    numbers = _state_numbers(state)
    gathered = gather_objects(numbers)
    for index, (name, value) in enumerate(numbers):
        for rank, theirs in enumerate(gathered):
            if index >= len(theirs) or theirs[index][0] != name or not _same(theirs[index][1],
                                                                              value):
                return f"{name} (rank {rank})"
    if any(len(theirs) != len(numbers) for theirs in gathered):
        return "the number of state entries"
    return None


def my_share(items: Sequence[Any]) -> tuple[int, list[Any]]:
    """(offset, this rank's contiguous block of `items`): work split without weights, for
    evaluation (blocks in rank order are the items in order)."""
    start = len(items) * _world.rank // _world.size
    stop = len(items) * (_world.rank + 1) // _world.size
    return start, list(items[start:stop])


def gather_in_order(parts: list[Any]) -> list[Any]:
    """Every rank's `parts` (a list), joined in rank order: with `my_share`, the whole in the
    original order (identity for one process)."""
    if not _world.active:
        return parts
    return [part for rank_parts in gather_objects(parts) for part in rank_parts]


def batch_seed(seed: int, index: int) -> int:
    """The seed of evaluation batch `index`: distinct per batch, the same on any rank."""
    return (seed * 1_000_003 + index) % (2 ** 63)


def map_batches(batches: Sequence[Any], work, seed: int = 0, shard: bool = True,
                device: torch.device | str = "cpu", progress=None) -> list[Any]:
    """[work(batch, generator) for each batch], in order; batch b's generator is seeded with
    (seed, b), so the results do not depend on who computes which batch. With `shard` under
    torchrun each rank computes a contiguous block of batches and every rank gets all the
    results (gathered; `work` returns something picklable). `progress(n)` is told of the
    items finished (the world's, as rank 0 sees its own)."""
    offset, mine = my_share(batches) if shard else (0, list(batches))
    out, told = [], 0
    total, scale = sum(len(batch) for batch in batches), (_world.size if shard else 1)
    for index, batch in enumerate(mine, start=offset):
        generator = torch.Generator(device=device).manual_seed(batch_seed(seed, index))
        out.append(work(batch, generator))
        if progress is not None:            # rank 0's pace stands for the world's
            step = min(len(batch) * scale, total - told)
            progress(step)
            told += step
    if shard:
        out = gather_in_order(out)
    if progress is not None and total > told:  # the other ranks' share, now that it is in
        progress(total - told)
    return out


def join_if_launched(device: torch.device) -> World:
    """An evaluation command's process group under torchrun (the world of one otherwise)."""
    if launched_by_torchrun():
        join(device)
    return _world


def refuse_under_torchrun(command: str) -> None:
    """A command that runs as one process says so, rather than run K identical copies."""
    if launched_by_torchrun():
        from gfnem_cli.engine.errors import GfnemError

        raise GfnemError(f"`gfnem {command}` runs as one process, not under torchrun; "
                         "train, evaluate, parse and score run data-parallel",
                         hint=f"run `gfnem {command.split()[0]} ...` without torchrun")
