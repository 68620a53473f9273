"""Each objective drives a tiny tabular sampler to the exact target of the enumerable toy
(L1 between the sampler's object distribution and R/Z below 0.05, averaged over 2 inputs)."""
from __future__ import annotations

import pytest

from gfnem_cli.engine.objectives import OBJECTIVES, build_objective
from toy_targets import MultisetTarget, fit, single_thread

STEPS = 300


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def target():
    return MultisetTarget()


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_trains_sampler_to_target(target, name):
    sampler, history = fit(target, build_objective(name), STEPS, seed=0, eval_every=STEPS)
    start, final = history[0][1], history[-1][1]
    print(f"\n[train] {name}: L1 {start:.3f} -> {final:.4f} in {STEPS} steps")
    assert final < 0.05
    if name in ("tb", "subtb", "db"):
        # The learned log Z(x) converges too (flow objectives only).
        assert (sampler.log_z - target.log_z()).abs().max() < 0.3


def test_batch_control_variate_trains(target):
    _, history = fit(target, build_objective("renyi", control_variate="batch"), STEPS, seed=0,
                     eval_every=STEPS)
    assert history[-1][1] < 0.05


class OffPolicyTarget:
    """Wraps the toy so that every batch is drawn ε-uniformly (off-policy)."""

    def __init__(self, target, epsilon):
        self.target, self.epsilon = target, epsilon

    def __getattr__(self, attr):
        return getattr(self.target, attr)

    def sample(self, sampler, num_per_input, **kwargs):
        return self.target.sample(sampler, num_per_input, epsilon=self.epsilon, **kwargs)


def test_importance_weighted_divergence_trains_off_policy(target):
    explorer = OffPolicyTarget(target, epsilon=0.2)
    _, history = fit(explorer, build_objective("reverse_kl", importance_weighting=True), STEPS,
                     seed=0, eval_every=STEPS)
    assert history[-1][1] < 0.05
