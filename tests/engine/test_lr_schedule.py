"""The model's learning-rate schedule (engine/schedules.py): its shape against the formula, its
bounds for any setting (hypothesis), and the EM loop stepping θ at lr(g) of its update count g."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfnem_cli.engine.schedules import LR_DECAYS, LearningRateSchedule

from tests.engine.test_em_loop import DATA, make_loop


def test_warmup_then_cosine_and_linear_reach_the_final_fraction():
    cos = LearningRateSchedule(base=2.0, decay="cosine", warmup=4, horizon=14, final=0.1)
    assert [cos(g) for g in range(4)] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert cos(4) == pytest.approx(2.0)                       # decay starts after warm-up
    assert cos(9) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))   # half-way: cos(π/2) = 0
    assert cos(14) == pytest.approx(0.2) and cos(1000) == pytest.approx(0.2)
    lin = LearningRateSchedule(base=1.0, decay="linear", horizon=10)
    assert [lin(g) for g in (0, 5, 10, 20)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert LearningRateSchedule(base=3e-3)(12345) == 3e-3     # constant: Adam's own lr
    flat = LearningRateSchedule(base=1.0, decay="cosine", warmup=10, horizon=5)
    assert flat(20) == 1.0                                    # warm-up past the horizon: no decay


@settings(max_examples=200, deadline=None)
@given(base=st.floats(1e-6, 1.0), decay=st.sampled_from(LR_DECAYS),
       warmup=st.integers(0, 50), horizon=st.integers(0, 200),
       final=st.floats(0.0, 1.0, allow_subnormal=False))   # base·final must not underflow to 0
def test_the_rate_stays_in_bounds_and_never_rises_after_warmup(base, decay, warmup, horizon,
                                                                final):
    schedule = LearningRateSchedule(base, decay, warmup, horizon, final)
    rates = [schedule(g) for g in range(0, 260)]
    assert all(0.0 < r <= base * (1 + 1e-12) for r in rates if final > 0 or decay == "constant")
    assert all(r >= 0.0 and math.isfinite(r) for r in rates)
    after = rates[max(warmup - 1, 0):]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(after, after[1:]))
    if warmup > 0:
        assert rates[:warmup] == sorted(rates[:warmup])


def test_em_loop_steps_theta_at_the_rate_of_its_update_count():
    """θ's Adam sees lr(g) at its g-th update, E-step-only steps do not advance the schedule,
    and a loop resumed from its state continues the schedule where it stopped."""
    schedule = LearningRateSchedule(base=0.05, decay="linear", warmup=2, horizon=12)
    torch.manual_seed(0)
    loop, model, _, _ = make_loop(tau=(1.0, 0.5), options_kw={"lr_schedule": schedule})
    seen = []
    for _ in range(30):
        m = loop.train_step(DATA)
        if m["mstep"]:
            seen.append(m["model_lr"])
            assert loop.model_optimizer.param_groups[0]["lr"] == m["model_lr"]
        else:
            assert "model_lr" not in m
    assert 2 < len(seen) < 30
    assert seen == pytest.approx([schedule(g) for g in range(len(seen))])

    state = loop.state_dict()
    resumed, _, _, _ = make_loop(tau=(1.0, 0.5), options_kw={"lr_schedule": schedule})
    resumed.load_state_dict(state)
    for _ in range(50):
        m = resumed.train_step(DATA)
        if m["mstep"]:
            assert m["model_lr"] == pytest.approx(schedule(len(seen)))
            break
    else:
        pytest.fail("the resumed loop took no M-step in 50 steps")
