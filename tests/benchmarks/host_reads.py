"""Where a training step reads tensors back to the host: every conversion, by call site.

On a GPU each tensor -> host conversion (`float`, `int`, `bool`, `item`, `tolist`,
`__index__`) waits for the kernels queued before it. This runs `gfnem train` in-process on the
checkout given (default: this one) and counts the conversions made inside the method's
`train_step`, from the second step on, by (file, function) of the innermost project frame.
Not counted: `engine/device_checks.expect` (asynchronous on a GPU) and conversions inside
`torch.optim` (Adam keeps its step counters on the host). Nor can it see the waits that are
not Python conversions (`nonzero`, boolean-mask indexing). `tests/grammars/test_host_waits.py`
asserts on its counts.

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

CONVERSIONS = ("__float__", "__int__", "__bool__", "item", "tolist", "__index__")


def _site(stack, repo: Path) -> tuple[str, str] | None:
    for frame in reversed(stack):
        if "device_checks.py" in frame.filename or "/torch/optim/" in frame.filename:
            return None
        path = Path(frame.filename)
        if repo in path.parents and ".venv" not in path.parts and "tests" not in path.parts:
            return ("/".join(path.parts[-2:]), frame.name)
    return ("torch", "internal")


def count_host_reads(recipe: Path, sets: list[str], steps: int, repo: Path,
                     prepare_batch=None) -> tuple[collections.Counter, int]:
    """(conversions per (file, function), steps counted) of `gfnem train RECIPE` for `steps`
    steps. `prepare_batch(batch)`: what each step gets instead of the schedule's batch."""
    import torch
    from typer.testing import CliRunner

    from gfnem_cli.app import app
    from gfnem_cli.engine import trainer as trainer_module

    sites, state = collections.Counter(), {"on": False, "steps": 0}
    real_init = trainer_module.Trainer.__init__
    reals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        real_step = self.method.train_step

        def counted(batch):
            batch = prepare_batch(batch) if prepare_batch else batch
            state["steps"] += 1
            state["on"] = state["steps"] >= 2          # the first step builds state
            try:
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
            return reals[name](self, *args, **kwargs)
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
    return sites, state["steps"] - 1


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
    import torch

    torch.set_num_threads(1)
    sites, steps = count_host_reads(args.recipe.resolve(), args.set, args.steps, repo)
    print(f"{repo}: {steps} steps counted, {sum(sites.values()) / steps:.1f} conversions a step")
    for (path, function), count in sorted(sites.items(), key=lambda kv: -kv[1]):
        print(f"{count / steps:8.2f}  {path}:{function}")


if __name__ == "__main__":
    main()
