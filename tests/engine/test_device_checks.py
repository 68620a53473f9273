"""engine/device_checks.py: an invariant check that raises with its message on the CPU and
builds the message only when it fails (a GPU queues a device-side assertion instead)."""
from __future__ import annotations

import pytest
import torch

from gfnem_cli.engine.device_checks import expect


def test_a_failed_check_raises_its_message_and_a_passing_one_builds_none():
    built = []

    def message() -> str:
        built.append(True)
        return "lengths must be positive"

    expect(torch.tensor([1, 2, 3]) > 0, message)
    assert built == []
    with pytest.raises(ValueError, match="lengths must be positive"):
        expect(torch.tensor([1, 0, 3]) > 0, message)
    with pytest.raises(ValueError, match="plain text"):
        expect(torch.tensor(False), "plain text")


def test_the_sampler_still_refuses_an_empty_sentence():
    from grammars.gflownet.sampler import TreeSampler

    sampler = TreeSampler(vocab_size=5, num_nonterminals=2, d_model=8, num_layers=1,
                          num_heads=2)
    with pytest.raises(ValueError, match="at least one word"):
        sampler.sample(torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 0]))
