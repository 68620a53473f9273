"""The shared behaviour policy `choose`: exploration's q against its definition, and T = 0.

q = (1−ε)·softmax(logits/T) + ε·uniform(legal), with T = 0 the greedy limit (a point mass on
the most probable legal action). Checked by the empirical frequencies of many draws and by the
returned log-probabilities, which the objectives (log π) and importance weights (log q) read.
"""
from __future__ import annotations

import math

import pytest
import torch

from gfnem_cli.engine.behaviour import choose


def _q(logits, mask, temperature, epsilon):
    """The definition, written out for one row."""
    z = logits.masked_fill(~mask, -math.inf)
    if temperature == 0.0:
        p = torch.zeros_like(logits)
        p[z.argmax()] = 1.0
    else:
        p = torch.softmax(z / temperature, -1)
    return (1 - epsilon) * p + epsilon * mask.double() / mask.sum()


@pytest.mark.parametrize("temperature,epsilon", [(1.0, 0.0), (2.0, 0.0), (0.5, 0.2),
                                                 (0.0, 0.0), (0.0, 0.3)])
def test_draws_follow_q_and_log_probs_are_pi_and_q(temperature, epsilon):
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.3, 1.5, -0.7, 1.1, 0.0], dtype=torch.float64)
    mask = torch.tensor([True, True, True, False, True])
    rows = 40000
    action, log_pi, log_q = choose(logits.expand(rows, -1), mask.expand(rows, -1),
                                   temperature, epsilon, generator=g)
    q = _q(logits, mask, temperature, epsilon)
    freq = torch.bincount(action, minlength=5).double() / rows
    assert (freq - q).abs().max() < 0.01
    assert not bool(mask[action].logical_not().any())            # never an illegal action
    pi = torch.softmax(logits.masked_fill(~mask, -math.inf), -1)
    torch.testing.assert_close(log_pi, pi.log()[action])
    torch.testing.assert_close(log_q, q.log()[action])


def test_greedy_is_the_argmax_of_the_legal_actions_and_deterministic():
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 2.0, -1.0], [3.0, 0.0, 1.0]])
    mask = torch.tensor([[True, False, True], [True, True, True], [True, True, True]])
    first, _, log_q = choose(logits, mask, temperature=0.0)
    again, _, _ = choose(logits, mask, temperature=0.0,
                         generator=torch.Generator().manual_seed(1))
    assert first.tolist() == [2, 0, 0] == again.tolist()      # masked best skipped; ties: lowest
    assert torch.equal(log_q, torch.zeros(3))


def test_teacher_forcing_under_greedy_scores_other_actions_as_impossible():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    _, log_pi, log_q = choose(logits, None, temperature=0.0, forced=torch.tensor([0]))
    assert float(log_q) < -80 and math.isfinite(float(log_q))
    torch.testing.assert_close(log_pi, torch.log_softmax(logits, -1)[:, 0])
