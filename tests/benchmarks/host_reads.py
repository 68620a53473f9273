"""Where a training step waits for the device: every host conversion and every op whose
output shape (or value on the host) depends on the data, by call site.

On a GPU each tensor -> host conversion (`float`, `int`, `bool`, `item`, `tolist`,
`__index__`) waits for the kernels queued before it, and so does an op whose output size is
read from the data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`,
`repeat_interleave` without `output_size`, `bincount`) or that answers on the host
(`equal`, `allclose`, a tensor read as a size inside torch). This runs `gfnem train`
in-process on the checkout given (default: this one) and counts both inside the method's
`train_step`, from the second step on, by (file, function) of the innermost project frame:
conversions by wrapping the Tensor methods, the ops by a dispatch mode (which sees them below
autograd, so backward's too, and on the CPU as on a GPU; it only watches, so no number
changes). Not counted: `engine/device_checks.expect` (asynchronous on a GPU) and conversions
inside `torch.optim` (Adam keeps its step counters on the host). Run on the CPU, it cannot
tell a host tensor from one that would be on the GPU (both are listed; the callers name the
host sites), nor see host -> device copies (`.to(device)` without non_blocking waits for the
stream on a GPU). `tests/grammars/test_host_waits.py` asserts on both counts.

    python tests/benchmarks/host_reads.py RECIPE --set data.path=DIR [--set k=v ...]
        [--code CHECKOUT] [--steps 5]
"""
from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

CONVERSIONS = ("__float__", "__int__", "__bool__", "item", "tolist", "__index__")
# aten ops whose output size is read from the data, or whose answer is a host value
SIZED_BY_DATA = {"nonzero": "nonzero", "nonzero_numpy": "nonzero", "masked_select":
                 "masked_select", "_unique": "unique", "_unique2": "unique", "unique_dim":
                 "unique", "unique_consecutive": "unique", "unique_dim_consecutive": "unique",
                 "bincount": "bincount", "equal": "equal", "allclose": "allclose",
                 "_local_scalar_dense": "scalar read"}


def _site(stack, repo: Path) -> tuple[str, str] | None:
    for frame in reversed(stack):
        if "device_checks.py" in frame.filename or "/torch/optim/" in frame.filename:
            return None
        path = Path(frame.filename)
        if repo in path.parents and ".venv" not in path.parts and "tests" not in path.parts:
            return ("/".join(path.parts[-2:]), frame.name)
    return ("torch", "internal")


class DataWaits(TorchDispatchMode):
    """While active, counts the aten calls that make a GPU wait (`_wait_kind`) by
    (file, function, kind) of the innermost project frame. It only watches: each call runs
    as it would. `converting` > 0 marks a Python conversion in progress, whose scalar read
    the conversion counter already has."""

    def __init__(self, repo: Path):
        super().__init__()
        self.repo, self.sites, self.converting = repo, collections.Counter(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _wait_kind(func, args, kwargs)
        if kind is not None and not (kind == "scalar read" and self.converting):
            site = _site(traceback.extract_stack()[:-1], self.repo)
            if site is not None:
                backward = torch._C._current_autograd_node() is not None
                self.sites[(*site, kind + (" (backward)" if backward else ""))] += 1
        return func(*args, **kwargs)


def _wait_kind(func, args, kwargs) -> str | None:
    """What makes the device wait in this call, or None. A boolean-mask assignment of one
    value (`x[mask] = 0.0`) is none: torch turns it into `masked_fill_`."""
    name = func._schema.name.split("::")[-1]
    if name in SIZED_BY_DATA:
        return SIZED_BY_DATA[name]
    if name == "repeat_interleave" and func._overloadname == "Tensor":
        return None if kwargs.get("output_size") is not None else "repeat_interleave"
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        masks = [i for i in args[1] if isinstance(i, torch.Tensor)
                 and i.dtype in (torch.bool, torch.uint8)]
        accumulate = (args[3] if len(args) > 3 else kwargs.get("accumulate", False))
        if not masks or (name != "index" and args[2].numel() == 1 and not accumulate):
            return None
        return f"{name.strip('_')}[bool]"
    return None


def count_host_reads(recipe: Path, sets: list[str], steps: int, repo: Path, prepare_batch=None
                     ) -> tuple[collections.Counter, collections.Counter, int]:
    """(conversions per (file, function), data-dependent waits per (file, function, kind),
    steps counted) of `gfnem train RECIPE` for `steps` steps. `prepare_batch(batch)`: what
    each step gets instead of the schedule's batch."""
    from typer.testing import CliRunner

    from gfnem_cli.app import app
    from gfnem_cli.engine import trainer as trainer_module

    sites, state = collections.Counter(), {"on": False, "steps": 0}
    waits = DataWaits(repo)
    real_init = trainer_module.Trainer.__init__
    reals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        real_step = self.method.train_step

        def counted(batch):
            batch = prepare_batch(batch) if prepare_batch else batch
            state["steps"] += 1
            if state["steps"] < 2:                       # the first step builds state
                return real_step(batch)
            state["on"] = True
            try:
                with waits:
                    return real_step(batch)
            finally:
                state["on"] = False
        self.method.train_step = counted

    def counting(name):
        def conversion(self, *args, **kwargs):
            if state["on"]:
                site = _site(traceback.extract_stack()[:-1], repo)
                if site is not None:
                    sites[site] += 1
            waits.converting += 1
            try:
                return reals[name](self, *args, **kwargs)
            finally:
                waits.converting -= 1
        return conversion

    out = Path(tempfile.mkdtemp(prefix="host-reads-"))
    trainer_module.Trainer.__init__ = init
    for name in CONVERSIONS:
        setattr(torch.Tensor, name, counting(name))
    try:
        done = CliRunner().invoke(app, ["train", str(recipe), "--out", str(out / "run"), "-q",
                                        "--device", "cpu", "--set", f"train.steps={steps}",
                                        "--set", "train.eval_every=100000", *sum(
                                            (["--set", s] for s in sets), [])],
                                  catch_exceptions=False)
    finally:
        trainer_module.Trainer.__init__ = real_init
        for name, real in reals.items():
            setattr(torch.Tensor, name, real)
        shutil.rmtree(out, ignore_errors=True)
    if done.exit_code != 0:
        _refuse(f"`gfnem train` refused: {done.output.strip()}")
    if state["steps"] < 2:
        _refuse("the run made fewer than 2 steps; give --steps 2 or more")
    return sites, waits.sites, state["steps"] - 1


def _refuse(message: str) -> None:
    print(f"host_reads: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe", type=Path)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[2])
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    repo = args.code.resolve()
    sys.path.insert(0, str(repo))
    torch.set_num_threads(1)
    sites, waits, steps = count_host_reads(args.recipe.resolve(), args.set, args.steps, repo)
    print(f"{repo}: {steps} steps counted, {sum(sites.values()) / steps:.1f} conversions a step")
    for (path, function), count in sorted(sites.items(), key=lambda kv: -kv[1]):
        print(f"{count / steps:8.2f}  {path}:{function}")
    print(f"{sum(waits.values()) / steps:.1f} data-dependent waits a step (ops sized by the data "
          "or answering on the host)")
    for (path, function, kind), count in sorted(waits.items(), key=lambda kv: -kv[1]):
        print(f"{count / steps:8.2f}  {path}:{function}  {kind}")


if __name__ == "__main__":
    main()
