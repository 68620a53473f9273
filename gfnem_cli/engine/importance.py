"""The importance-sampled log-likelihood estimate, family-free (DESIGN.md §6, §7).

For an input x and M proposals z_m ~ q with log-weights log w_m = log p(x, z_m) − log q(z_m)
(for a GFlowNet: log R_m + log P_B(τ_m | z_m) − log P_F(τ_m)),

    log p̂(x) = logsumexp_m(log w_m) − log M,

unbiased for p(x) in the linear domain, hence a lower bound on log p(x) in expectation (an
upper bound on the NLL). `ImportanceEstimate` accumulates the M weights in passes of any size,
in float64 (running logsumexps of w and of w², so the result does not depend on the pass
size), and gives per input log p̂(x), the delta-method variance of log p̂(x),
Var ≈ (M·r − 1)/(M − 1) with r = Σ_m w̃_m² (w̃ the normalized weights), and the effective
sample size 1/r. The variance is the sampling error of p̂ around its own expectation: it
leaves out the Jensen bias and underestimates when the weights are heavy-tailed.
"""
from __future__ import annotations

import math

import torch


class ImportanceEstimate:
    """Running float64 logsumexps of the weights of `num_inputs` inputs."""

    def __init__(self, num_inputs: int, device=None):
        self.lse1 = torch.full((num_inputs,), -math.inf, dtype=torch.float64, device=device)
        self.lse2 = torch.full((num_inputs,), -math.inf, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, log_w: torch.Tensor) -> None:
        """log-weights of one pass, (num_inputs, n) (any float dtype)."""
        log_w = log_w.double()
        self.lse1 = torch.logaddexp(self.lse1, torch.logsumexp(log_w, 1))
        self.lse2 = torch.logaddexp(self.lse2, torch.logsumexp(2 * log_w, 1))
        self.count += log_w.shape[1]

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p̂(x), Var[log p̂(x)], effective sample size), each (num_inputs,) float64."""
        M = self.count
        if M < 1:
            raise ValueError("no importance samples were added")
        log_p = self.lse1 - math.log(M)
        r = torch.exp(self.lse2 - 2 * self.lse1)                  # Σ w̃², in [1/M, 1]
        var = (M * r - 1.0).clamp(min=0.0) / (M - 1) if M > 1 else torch.full_like(r, math.inf)
        return log_p, var, 1.0 / r


def standard_error(variances: float, units: int) -> float:
    """Standard error of a total NLL per unit from independent inputs' variances."""
    return math.sqrt(variances) / max(units, 1)
