"""The grid GFlowNet: batched rollouts over code grids returning engine `Trajectories`.

Every row of a batch (B images × N trajectories, the N of an image contiguous) advances
together; the only Python loop is over the hw steps, and a step never syncs with the host.
The image trunk runs once per image; its features are shared by the image's N rows.

Two orders (Hu et al. 2023, §5.2):
- `raster`: step t sets cell t. Each grid has exactly one trajectory, so P_B = 1
  (log_pb = 0) and the sampler's marginal over grids is Π_t P_F.
- `any`: a step chooses an empty cell and its code together (one softmax over the legal
  (cell, code) pairs). P_B is uniform over the filled cells: P_B(s_t | s_{t+1}) = 1/(t+1),
  so log P_B(τ) = −log (hw)! for every trajectory. A grid is reached by (hw)! trajectories;
  teacher forcing one needs an order, and drawing it uniformly at random *is* sampling the
  backward trajectory from P_B, which is what the sleep phase and importance sampling want.

Conventions the objectives rely on: step t takes s_t to s_{t+1}; T = hw for every row
(step_mask all True); log_flows[:, 0] = log Z_φ(x), log_flows[:, t] = f_φ(s_t) for
0 < t < T (no part of log R is fixed by a partial grid: the decoder reads the whole grid),
log_flows[:, T] = log R. Rewards are read as reward.log_joint(images_rows, codes (M, h, w)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gfnem_cli.engine import row_noise
from gfnem_cli.engine.behaviour import choose
from gfnem_cli.engine.trajectories import Trajectories
from vae.code_grids import CodeGrids
from vae.gflownet.grid import GridState
from vae.gflownet.policy import GridPolicy, ImageTrunk

ORDERS = ("raster", "any")


@dataclass
class Rollout:
    state: GridState                  # terminal grids
    order: torch.Tensor               # (M, T) the cell set at each step
    log_pf: torch.Tensor              # (M, T) untempered log P_F of each step
    behaviour_log_pf: torch.Tensor    # (M, T) log-prob under the policy sampled from
    log_pb: torch.Tensor              # (M, T) log P_B(s_t | s_{t+1})
    flows: torch.Tensor | None        # (M, T-1) f_φ(s_1..s_{T-1})


class GridSampler(nn.Module):
    """P_F over code grids conditioned on an image, log-flows and log Z_φ(x)."""

    def __init__(self, num_codes: int, grid: tuple[int, int] = (4, 4), order: str = "raster",
                 channels: int = 128, blocks: int = 2):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.num_codes, self.grid, self.order = num_codes, tuple(grid), order
        self.trunk = ImageTrunk(grid, channels)
        self.policy = GridPolicy(num_codes, grid, channels, blocks)

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    # ============================================================================ public API
    def sample(self, images: torch.Tensor, num_per_input: int = 1, temperature: float = 1.0,
               epsilon: float = 0.0, reward=None, need_flows: bool = False,
               generator: torch.Generator | None = None) -> Trajectories:
        """N trajectories per image, images (B, H, W). log_pf is the untempered policy's
        (differentiable); behaviour_log_pf the tempered/ε-mixed one sampled from."""
        cells, summary, log_z, b = self._encode(images, num_per_input)
        noise = row_noise.for_rows(cells.shape[0], num_per_input, cells.device)
        ro = self._run(cells, summary, None, None, temperature, epsilon, need_flows, generator,
                       noise)
        on_policy = temperature == 1.0 and epsilon == 0.0
        return self._package(ro, images, log_z, b, num_per_input, reward, need_flows, on_policy)

    def score(self, images: torch.Tensor, grids: CodeGrids, order: torch.Tensor | None = None,
              reward=None, need_flows: bool = False,
              generator: torch.Generator | None = None) -> Trajectories:
        """Teacher-force one trajectory per grid (len(grids) = B·N, each image's N contiguous).

        The cell order is `order` (M, hw), else the grids' own `order`, else raster for the
        raster sampler and a uniformly random permutation (a draw from P_B) for any order.
        """
        if len(grids) % images.shape[0]:
            raise ValueError(f"{len(grids)} grids cannot be split evenly over "
                             f"{images.shape[0]} images")
        n = len(grids) // images.shape[0]
        cells, summary, log_z, b = self._encode(images, n)
        forced_cells = self.cell_order(grids, order, generator, n)
        forced_codes = grids.flat().gather(1, forced_cells)
        ro = self._run(cells, summary, forced_cells, forced_codes, 1.0, 0.0, need_flows, None)
        return self._package(ro, images, log_z, b, n, reward, need_flows, False)

    def log_prob_of(self, images: torch.Tensor, grids: CodeGrids,
                    generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log P_F, log P_B) of one trajectory to each grid (any order: drawn from P_B)."""
        traj = self.score(images, grids, generator=generator)
        return traj.log_pf, traj.log_pb

    def cell_order(self, grids: CodeGrids, order: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, rows_per_input: int = 1
                   ) -> torch.Tensor:
        """(M, hw) the cell teacher forcing sets at each step (`rows_per_input`: the grids
        of each image, for row noise)."""
        m, dev = len(grids), grids.codes.device
        if order is None:
            order = grids.order
        if self.order == "raster":
            raster = torch.arange(self.cells, device=dev).expand(m, -1)
            if order is not None and not torch.equal(order.to(dev), raster):
                raise ValueError("the raster sampler fills cells in raster order only")
            return raster
        if order is None:
            rows = row_noise.for_rows(m, rows_per_input, dev)
            if rows is not None:
                noise = rows.uniform(0, self.cells)
            else:
                where = generator.device if generator is not None else dev  # its own device
                noise = torch.rand(m, self.cells, generator=generator, device=where).to(dev)
            order = noise.argsort(1)
        return order.to(dev).long()

    # ============================================================================ rollouts
    def _encode(self, images: torch.Tensor, n: int):
        """Trunk features of the B images, shared by each image's n rows."""
        if n < 1:
            raise ValueError("need at least one trajectory per image")
        cells, summary = self.trunk(images)
        log_z = self.policy.log_z(summary)
        return (cells.repeat_interleave(n, 0), summary.repeat_interleave(n, 0), log_z,
                images.shape[0])

    def _run(self, cells: torch.Tensor, summary: torch.Tensor, forced_cells, forced_codes,
             temperature: float, epsilon: float, want_flows: bool, generator,
             noise: row_noise.RowNoise | None = None) -> Rollout:
        """`noise`: the rows' own uniforms (draw t at step t) instead of `generator`."""
        m, dev = cells.shape[0], cells.device
        k, steps = self.num_codes, self.cells
        state = GridState.initial(m, self.grid, k, dev)
        lpf, lq, lpb, order, flows = [], [], [], [], []
        bad = torch.zeros(m, dtype=torch.bool, device=dev)
        for t in range(steps):
            h = self.policy.features(cells, state.codes)
            if want_flows and t > 0:
                flows.append(self.policy.log_flow(h, summary))
            logits = self.policy.action_logits(h)                      # (M, hw, K)
            if self.order == "raster":
                cell = torch.full((m,), t, dtype=torch.long, device=dev)
                forced = None if forced_codes is None else forced_codes[:, t].clamp(0, k - 1)
                code, lp, q = choose(logits[:, t], None, temperature, epsilon, forced, generator,
                                     row_noise.draw(noise, t))
                lpb.append(torch.zeros(m, dtype=lp.dtype, device=dev))
            else:
                forced = None
                if forced_cells is not None:
                    forced = forced_cells[:, t] * k + forced_codes[:, t].clamp(0, k - 1)
                    bad = bad | ~state.is_empty_at(forced_cells[:, t])
                action, lp, q = choose(logits.flatten(1), state.action_mask(), temperature,
                                       epsilon, forced, generator, row_noise.draw(noise, t))
                cell, code = action // k, action % k
                lpb.append(torch.full((m,), -math.log(t + 1), dtype=lp.dtype, device=dev))
            if forced_codes is not None:
                bad = bad | (forced_codes[:, t] < 0) | (forced_codes[:, t] >= k)
            state = state.fill(cell, code)
            lpf.append(lp)
            lq.append(q)
            order.append(cell)
        if forced_cells is not None or forced_codes is not None:
            if bool(bad.any()):      # one host sync, after the loop
                raise ValueError("teacher forcing needs complete grids with codes in 0..K-1 "
                                 "and an order that visits every cell once")
        return Rollout(state, torch.stack(order, 1), torch.stack(lpf, 1), torch.stack(lq, 1),
                       torch.stack(lpb, 1), torch.stack(flows, 1) if want_flows else None)

    def _package(self, ro: Rollout, images: torch.Tensor, log_z: torch.Tensor, b: int, n: int,
                 reward, need_flows: bool, on_policy: bool) -> Trajectories:
        grids = ro.state.as_grids(ro.order)
        log_reward = None
        if reward is not None:
            with torch.no_grad():
                log_reward = reward.log_joint(images.repeat_interleave(n, 0), grids.codes)
            log_reward = log_reward.detach().to(ro.log_pf.dtype)
        log_flows = None
        if need_flows:
            if log_reward is None:
                raise ValueError("need_flows needs a reward (log F(s_T) = log R)")
            log_flows = torch.cat([log_z.repeat_interleave(n, 0).unsqueeze(1), ro.flows,
                                   log_reward.unsqueeze(1)], 1)
        return Trajectories(
            log_pf=ro.log_pf.sum(1), log_pb=ro.log_pb.sum(1), log_reward=log_reward,
            num_inputs=b, num_per_input=n, log_pf_steps=ro.log_pf, log_pb_steps=ro.log_pb,
            log_flows=log_flows, step_mask=torch.ones_like(ro.log_pf, dtype=torch.bool),
            behaviour_log_pf=ro.behaviour_log_pf.sum(1), log_z=log_z, z=grids,
            on_policy=on_policy)

