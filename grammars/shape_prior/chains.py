"""Metropolis–Hastings on tree shapes with rotation moves: the negatives of the prior's training.

The target of every chain is p_ψ(s | n) ∝ exp(−E_ψ(s)) over the shapes of its length n (a
rotation never changes n). The proposal is MC-EM's rotation move (`training.mcem.propose` with
one label and rotation probability 1, reused, not copied): an internal node v uniform among the
n − 1 and a direction uniform; a right rotation ((a1 a2) b) → (a1 (a2 b)) at v, a left
rotation (a (b1 b2)) → ((a b1) b2); a self-loop when the needed child is a word. As mcem.py
shows, q(s → s') = 1 / (2(n − 1)) = q(s' → s) (every shape has n − 1 internal nodes and the
inverse rotation is at the same node), so the Hastings ratio is the energy difference alone:
accept with probability min(1, exp(E(s) − E(s'))). Rotations connect all shapes of a length
and rejections make the chain aperiodic, so p_ψ(· | n) is its unique stationary distribution
(checked by enumeration in tests/grammars/test_shape_prior.py).

The authors' code composes `rotations_per_transition` rotations before one accept (default 1);
here one rotation per MH step, `steps` steps in a row, all chains of a batch together.
"""
from __future__ import annotations

import torch

from grammars.binary_trees import BinaryTrees
from grammars.training.mcem import propose


def acceptance_probability(energy_old: torch.Tensor, energy_new: torch.Tensor) -> torch.Tensor:
    """min(1, exp(E_old − E_new)): the MH acceptance of a symmetric proposal."""
    return torch.exp((energy_old - energy_new).clamp(max=0.0))


def propose_rotation(trees: BinaryTrees, generator: torch.Generator | None = None,
                     uniforms: torch.Tensor | None = None):
    """(proposed shapes, changed (B,)): one rotation per row; `uniforms` (B, 4) as in
    `mcem.propose` (column 0 the node, column 2 the direction) enumerates the moves."""
    proposal, _, changed = propose(trees, 1, 1.0, generator, uniforms)
    return proposal, changed


@torch.no_grad()
def rotation_chains(energy, trees: BinaryTrees, steps: int, energies: torch.Tensor | None = None,
                    generator: torch.Generator | None = None
                    ) -> tuple[BinaryTrees, torch.Tensor, torch.Tensor]:
    """`steps` MH steps on every row; returns (shapes, their energies, the acceptance rate
    among rows with a move to make, a 0-d tensor: the caller reads it when it reads its other
    figures, one wait). `energy(trees) -> (B,)`; rows keep their first n − 1 columns."""
    if energies is None:
        energies = energy(trees)
    movable = trees.lengths.to(energies.device) >= 3      # 1 or 2 words: a single shape
    accepted = torch.zeros((), dtype=torch.long, device=energies.device)
    for _ in range(steps):
        proposal, changed = propose_rotation(trees, generator)
        new = energy(proposal)
        u = torch.rand(energies.shape, device=energies.device, generator=generator)
        accept = changed & movable & (u < acceptance_probability(energies, new))
        trees = BinaryTrees(spans=torch.where(accept[:, None, None], proposal.spans, trees.spans),
                            labels=trees.labels, lengths=trees.lengths)
        energies = torch.where(accept, new, energies)
        accepted += accept.sum()
    tried = (movable.sum() * steps).clamp(min=1)
    return trees, energies, accepted / tried
