"""A backward walk with P_B that also scores, from the same encodings, the forward path back.

Splitting root i of s_{j-1} gives s_j; the forward step that undoes it (merge i, i+1 under the
split node's label) is scored by P_F at s_j. Both P_B at s_j (the next split) and that P_F
read the one encoding of s_j, so a walk of k steps costs k encoder calls and yields
P_B(x → s), P_F(s → x) (untempered and under the behaviour policy) and the encoding of s,
which the forward proposal from s starts from. Local search's Metropolis–Hastings ratio and the
sleep phase's log P_F (one graph, gradients through the walk) both need exactly these.
A state with a single root is never encoded: its only split has probability one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gfnem_cli.engine import row_noise
from gfnem_cli.engine.behaviour import choose
from gfnem_cli.engine.device_checks import expect
from grammars.gflownet.forest import Forest, read_slots


@dataclass
class BackWalk:
    forest: Forest               # the state reached (dead nodes not compacted)
    splits: torch.Tensor         # (M, K, 3) split nodes (start, end, label), backward order
    log_pb: torch.Tensor         # (M,) Σ log P_B of the splits taken
    log_pf: torch.Tensor | None  # (M,) Σ log P_F of the forward steps undoing them
    log_q: torch.Tensor | None   # (M,) the same under the behaviour policy (temperature, ε)
    enc: tuple | None            # the encoding of the state reached, when it was computed


def walk_back(sampler, forest: Forest, emb: torch.Tensor, num_steps: torch.Tensor,
              max_steps: int, generator: torch.Generator | None = None, forward: bool = False,
              temperature: float = 1.0, epsilon: float = 0.0,
              noise: row_noise.RowNoise | None = None) -> BackWalk:
    """Split up to num_steps[m] roots of each row with P_B; with `forward`, score P_F too.
    `max_steps` = num_steps.max(), known on the host (so the walk reads nothing from the
    device); the row with the most steps is one with the most roots (terminal forests: one
    root each). `noise`: the rows' own uniforms (draw j at back step j) instead of
    `generator`."""
    m = forest.num_roots.shape[0]
    dev, dtype = emb.device, emb.dtype
    k = max_steps if m else 0
    if m:
        expect(num_steps.max() == k, f"max_steps = {k} is not the most steps of a row")
    r0 = forest.widest
    big_l = forest.max_len
    zero = torch.zeros(m, dtype=dtype, device=dev)
    splits, log_pb, log_pf, log_q = [], zero, zero, zero
    enc = prev = None
    for j in range(k + 1):
        r = min(big_l, r0 + j)
        need_enc = (forward and j > 0) or (j < k and sampler.learn_backward and r > 1)
        enc = sampler._encode(forest, emb, r) if need_enc else None
        if forward and j > 0:
            pos, label, was_active = prev
            lp, lq = _undo_log_probs(sampler, forest, enc, r, pos, label, temperature, epsilon)
            log_pf = log_pf + torch.where(was_active, lp, 0.0)
            log_q = log_q + torch.where(was_active, lq, 0.0)
        if j == k:
            break
        active = (j < num_steps) & (forest.num_splittable() > 0)
        if enc is not None and sampler.learn_backward:
            logits = sampler.heads.backward_logits(enc[0])
        else:
            logits = torch.zeros(m, r, dtype=dtype, device=dev)
        pos, lp_b, _ = choose(logits, forest.split_mask()[:, :r], generator=generator,
                              uniforms=row_noise.draw(noise, j))
        slot = forest.roots.gather(1, pos[:, None])
        node = torch.stack([read_slots(forest.start, slot), read_slots(forest.end, slot),
                            read_slots(forest.label, slot)], -1).squeeze(1)
        splits.append(torch.where(active[:, None], node, -1))
        log_pb = log_pb + torch.where(active, lp_b, 0.0)
        prev = (pos, node[:, 2], active)
        forest = forest.split(pos, active)
    out = torch.stack(splits, 1) if splits else torch.full((m, 0, 3), -1, device=dev,
                                                            dtype=torch.long)
    return BackWalk(forest, out, log_pb, log_pf if forward else None,
                    log_q if forward else None, enc if forward else None)


def _undo_log_probs(sampler, forest: Forest, enc, r: int, pos, label, temperature, epsilon):
    """log P_F (and log q) at `forest` of merging roots pos, pos+1 under `label`."""
    h = enc[0]
    m = h.shape[0]
    pair = sampler.heads.pairs(h)
    _, lp_pos, lq_pos = choose(sampler.heads.position_logits(pair),
                               forest.merge_mask()[:, :r - 1], temperature, epsilon, pos)
    at = pair.gather(1, pos.clamp(max=r - 2).view(m, 1, 1).expand(m, 1, pair.shape[-1]))
    _, lp_lab, lq_lab = choose(sampler.heads.label_logits(at.squeeze(1)), None, temperature,
                               epsilon, label.clamp(min=0))
    return lp_pos + lp_lab, lq_pos + lq_lab
