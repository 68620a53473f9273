"""What a training run shows while it trains (issue 13 item 3), on the engine alone.

Plain lines (output to a file): the header, a timestamped line every `every` steps with the
smoothed loss and, for EM, tau, the gate and the share of steps that updated the model; after
each validation its figures, the best so far and the family's notes; the notice of a stalled
model. The terminal display: the step count and the ETA are never what a narrow terminal
cuts; the last validation and the best stay on it; a spinner row while validating. And the
trainer: `elapsed_s` in every record, continued across a resume; best.pt by a metric where
higher is better.
"""
from __future__ import annotations

import io
import json
import re

import pytest
import torch

from gfnem_cli.engine.live_figures import StepWindow
from gfnem_cli.engine.progress import TrainingProgress, _Display

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def em_step(updates: int, mstep: bool, gate: float = 7.0, tau: float = 6.0) -> dict:
    return {"loss": 2.0, "e_loss": 2.0, "tau": tau, "e_loss_gate": gate, "mstep": float(mstep),
            "model_updates": float(updates)}


def plain(total: int, every: int, **kw) -> tuple[TrainingProgress, io.StringIO]:
    stream = io.StringIO()
    return TrainingProgress(total, 0, True, every, stream=stream, terminal=False, **kw), stream


def test_plain_lines_carry_the_header_the_figures_and_each_validation():
    progress, stream = plain(40, 10, header=["run: somewhere (new run)", "device: cpu"],
                             select_metric="val_nll_per_token")
    with progress:
        for step in range(1, 41):
            progress.advanced(step, {"loss": float(step), "nll_per_token": 3.0,
                                     "items_per_s": 10.0})
            if step == 20:
                with progress.validation(step):
                    assert progress.validating == 20
                best = {"value": 2.5, "step": 20, "metrics": {"val_nll_per_token": 2.5}}
                progress.validated(step, {"val_nll_per_token": 2.5, "val_nll_is_bound": False,
                                          "val_sentence_f1": 41.0},
                                   best, ["example, predicted: ((a b) c)"])
    lines = stream.getvalue().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    assert "run: somewhere (new run)" in lines[0] and "device: cpu" in lines[1]
    steps = [line for line in lines if re.search(r" step \d+/40 ", line)]
    assert [int(re.search(r"step (\d+)/", s).group(1)) for s in steps] == [10, 20, 30, 40]
    assert "loss=20 loss_avg=15.5 nll_per_token=3" in steps[1]      # mean of steps 11..20
    assert "eta" in steps[0] and "elapsed" in steps[0]
    [validation] = [line for line in lines if "validation:" in line]
    assert ("step 20 validation: val_nll_per_token=2.5 val_sentence_f1=41 "
            "(best val_nll_per_token=2.5 at step 20)") in validation
    assert "is_bound" not in validation
    assert any(line.endswith("step 20 validation example, predicted: ((a b) c)")
               for line in lines)


def test_em_figures_and_the_stalled_model_notice():
    progress, stream = plain(200, 10)           # a notice after max(5 * 10, 200 // 10) steps
    with progress:
        for step in range(1, 201):
            updates = min(step, 20)             # the model stops moving after step 20
            progress.advanced(step, em_step(updates, step <= 20))
    lines = stream.getvalue().splitlines()
    at_20 = next(line for line in lines if " step 20/200 " in line)
    assert "tau=6 gate=7 updated 10/10" in at_20 and "updates=20" in at_20
    at_30 = next(line for line in lines if " step 30/200 " in line)
    assert "updated 0/10" in at_30
    notices = [line for line in lines if "notice:" in line]
    # at 50 idle steps, then at twice as many each time the stall goes on
    assert [int(re.search(r"for (\d+) steps", n).group(1)) for n in notices] == [50, 100]
    assert "gate 7 is not below tau 6" in notices[0] and "(step 70)" in notices[0]


def test_no_notice_while_the_gate_is_open_or_the_model_moves():
    window = StepWindow(10, 5, 0)
    # alternating phases: the gate is open (tau = inf), an E phase updates nothing
    assert all(window.add(s, em_step(0, False, gate=3.0, tau=float("inf"))) is None
               for s in range(1, 50))
    window = StepWindow(10, 5, 0)
    assert all(window.add(s, em_step(s, True)) is None for s in range(1, 50))
    window = StepWindow(10, 5, 0)               # a method that never reports updates
    assert all(window.add(s, {"loss": 1.0}) is None for s in range(1, 50))


def render(progress: TrainingProgress, width: int) -> list[str]:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    with console.capture() as capture:
        console.print(_Display(progress))
    return capture.get().splitlines()


@pytest.mark.parametrize("width", [100, 80, 40])
def test_a_narrow_terminal_cuts_the_bar_never_the_count_or_the_eta(width):
    progress = TrainingProgress(20000, 0, True, 0, stream=io.StringIO(), terminal=True)
    progress.step = 1530
    progress.live = " ".join(f"figure_{k}=1.234" for k in range(12))     # long figures
    row = render(progress, width)[0]
    assert len(row) <= width
    assert re.search(r" 1530/20000 \d+:\d\d:\d\d eta \d+:\d\d:\d\d$", row), row


def test_the_display_keeps_the_last_validation_and_the_best_and_spins_while_validating():
    progress = TrainingProgress(100, 0, True, 0, stream=io.StringIO(), terminal=True,
                                select_metric="val_nll_per_token")
    best = {"value": 2.5, "step": 10, "metrics": {"val_nll_per_token": 2.5}}
    progress.validated(20, {"val_nll_per_token": 2.7, "val_corpus_f1": 30.0}, best)
    for step in (21, 22):
        progress.advanced(step, {"loss": 1.0})
    rows = " ".join(render(progress, 120))
    assert "validation at step 20: val_nll_per_token=2.7 val_corpus_f1=30" in rows
    assert "best val_nll_per_token=2.5 at step 10" in rows and "loss=1" in rows
    with progress.validation(30):
        assert "validating at step 30" in " ".join(render(progress, 120))
    assert "validating" not in " ".join(render(progress, 120))


class _Counter:
    """A trainer method: the weight counts steps; validation says a chosen figure."""

    def __init__(self, figures=None):
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.figures = figures or {}

    def train_step(self, batch):
        with torch.no_grad():
            self.weight += 1
        return {"loss": float(self.weight.detach())}

    def validate(self):
        step = int(self.weight.detach())
        return {"val_f1": self.figures.get(step, 0.0), "notes": [f"at {step}"]}

    def state_dict(self):
        return {"weight": self.weight.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.weight.copy_(state["weight"])


class _Schedule:
    def epoch_batches(self, epoch):
        return list(range(5))


def _trainer(run, method, steps, maximize=False):
    from gfnem_cli.engine.trainer import Trainer, TrainerOptions

    options = TrainerOptions(steps=steps, eval_every=2, checkpoint_every=2, select_metric="val_f1",
                             select_maximize=maximize, show_progress=False)
    return Trainer(run, method, _Schedule(), options, {}, "fp")


def test_elapsed_s_is_in_every_record_and_continues_across_a_resume(tmp_path):
    first = _trainer(tmp_path, _Counter(), 4)
    first.start_metrics(resumed=False)
    first.fit()
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    resumed = _trainer(tmp_path, _Counter(), 8)
    resumed.resume()
    assert resumed.wall_elapsed == saved["wall_elapsed"] > 0
    resumed.fit()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 8 + 4 and all("time" in r and "elapsed_s" in r for r in records)
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= saved["wall_elapsed"]
    assert all("notes" not in r for r in records)     # notes are shown, never logged


@pytest.mark.parametrize("maximize,best_step", [(True, 4), (False, 2)])
def test_best_checkpoint_follows_the_metric_direction(tmp_path, maximize, best_step):
    trainer = _trainer(tmp_path, _Counter({2: 10.0, 4: 50.0, 6: 20.0}), 6, maximize)
    trainer.start_metrics(resumed=False)
    report = trainer.fit()
    assert report["best_step"] == best_step and report["select_metric"] == "val_f1"
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["step"] == best_step
