"""The tree-building GFlowNet: batched rollouts returning engine `Trajectories` (DESIGN §2, §5).

Every row of a batch (B inputs × N trajectories, the N of an input contiguous) advances together:
the only Python loop is over steps. A step encodes the current roots of all rows at once
(padded to the longest remaining forest, which shrinks by one root per step), picks a merge
position and a label per row, composes the new root's embedding and merges. Rows whose
sentence is done stay put (`step_mask` is False for them).

Conventions the objectives and the EM loop rely on:
- step t takes s_t to s_{t+1}; a sentence of n words has n-1 steps, T = max n - 1.
- log_pb_steps[:, t] = log P_B(s_t | s_{t+1}): uniform over the splittable roots of s_{t+1}
  (roots that are internal nodes), or the learned backward head evaluated on s_{t+1}.
- log_flows[:, 0] = log Z_φ(x); log_flows[:, t] = partial_log_joint(s_t) + f_φ(s_t) for
  non-terminal s_t; from a row's terminal step onward log_flows = log R. A 1-word sentence has
  no step and only log_flows[:, 0].
- Rewards are queried as reward.log_joint(ids, lengths, trees) and
  reward.partial_log_joint(ids, lengths, partial_trees) with ids/lengths expanded to B·N rows;
  a partial tree lists the nodes built so far (-1 padded), the sentence length unchanged.
- Trees come back in construction order, which is a valid bottom-up order (`order="given"`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gfnem_cli.engine import row_noise
from gfnem_cli.engine.behaviour import choose
from gfnem_cli.engine.device_checks import expect
from gfnem_cli.engine.trajectories import Trajectories
from grammars.binary_trees import BinaryTrees
from grammars.gflownet.back_walk import walk_back
from grammars.gflownet.encoder import ForestEncoder, SubtreeEmbedder
from grammars.gflownet.forest import Forest, read_slots, write_slots
from grammars.gflownet.policy import PolicyHeads

ORDERS = ("given", "width", "sample_backward")


@dataclass
class Rollout:
    """What one batched pass from some state to the terminal states produced."""
    forest: Forest                     # terminal forests (compact, construction order)
    emb: torch.Tensor                  # (M, S, d) subtree embeddings of every slot
    log_pf: torch.Tensor               # (M, T) untempered log P_F of each step
    behaviour_log_pf: torch.Tensor     # (M, T) log-prob under the policy sampled from
    log_pb: torch.Tensor               # (M, T) log P_B(s_t | s_{t+1})
    step_mask: torch.Tensor            # (M, T)
    learned_flows: torch.Tensor | None  # (M, T+1) f_φ(s_t); column 0 holds log Z when asked
    log_z: torch.Tensor | None         # (M,)


class TreeSampler(nn.Module):
    """P_F, P_B, log-flows and log Z_φ(x) over bottom-up binary parse trees.

    Paper size is the default (d_model=512, 6 layers, 4 heads). `learn_backward=False` gives a
    uniform P_B over splittable roots (required by the divergence objectives); True adds a
    learned backward head (TB/SubTB/DB). The module's train/eval mode is respected; keep
    dropout at 0 if local search or log-prob recomputation must match the sampling pass.
    """

    def __init__(self, vocab_size: int, num_nonterminals: int, d_model: int = 512,
                 num_layers: int = 6, num_heads: int = 4, dim_feedforward: int | None = None,
                 dropout: float = 0.0, learn_backward: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.num_nonterminals = num_nonterminals
        self.learn_backward = learn_backward
        self.embedder = SubtreeEmbedder(vocab_size, num_nonterminals, d_model)
        self.encoder = ForestEncoder(d_model, num_layers, num_heads, dim_feedforward, dropout)
        self.heads = PolicyHeads(d_model, num_nonterminals, learn_backward)

    # ============================================================================ public API
    def sample(self, ids: torch.Tensor, lengths: torch.Tensor, num_per_input: int = 1,
               temperature: float = 1.0, epsilon: float = 0.0, reward=None,
               need_flows: bool = False, generator: torch.Generator | None = None) -> Trajectories:
        """Draw N trajectories per sentence. ids (B, n) word ids, lengths (B,) >= 1.

        log_pf is the untempered policy's log-prob (differentiable); behaviour_log_pf is the
        tempered/ε-mixed one actually sampled from; on_policy is False unless temperature = 1
        and ε = 0. With `reward`, log_reward is filled (detached); `need_flows` needs it.
        """
        ids_rows, len_rows, b, n_per, longest = self.expand_rows(ids, lengths,
                                                                 ids.shape[0] * num_per_input)
        forest, emb = self.initial_state(ids_rows, len_rows, longest)
        noise = row_noise.for_rows(len_rows.shape[0], n_per, len_rows.device)
        ro = self._run(forest, emb, temperature=temperature, epsilon=epsilon, want_log_z=True,
                       want_flows=need_flows, generator=generator, noise=noise)
        on_policy = temperature == 1.0 and epsilon == 0.0
        return self._package(ro, ids_rows, len_rows, b, n_per, reward, need_flows, on_policy)

    def score(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees,
              order: str = "given", temperature: float = 1.0, epsilon: float = 0.0,
              reward=None, need_flows: bool = False,
              generator: torch.Generator | None = None) -> Trajectories:
        """Teacher-force one trajectory per tree and return it as (off-policy) Trajectories.

        ids (B, n) with len(trees) = B·N (each input's N trees contiguous). `order`:
        "given" follows the trees' node order (must be bottom-up: children before parents;
        this sampler's own trees always are), "width" sorts nodes by width first (any tree),
        "sample_backward" draws the trajectory backward from the tree with P_B (no gradient
        through that choice), as a sleep phase or an exact-posterior diagnostic needs.
        """
        ids_rows, len_rows, b, n_per, longest = self.expand_rows(ids, lengths, len(trees))
        forced = self.node_order(ids_rows, len_rows, trees, order, generator, n_per, longest)
        forest, emb = self.initial_state(ids_rows, len_rows, longest)
        ro = self._run(forest, emb, forced=forced, temperature=temperature, epsilon=epsilon,
                       want_log_z=True, want_flows=need_flows)
        return self._package(ro, ids_rows, len_rows, b, n_per, reward, need_flows, False)

    def log_prob_of(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees,
                    order: str = "sample_backward",
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_pf, log_pb) of one trajectory ending in each tree (see `score` for `order`).

        "sample_backward" walks back from each tree with P_B and scores P_F on the same
        encodings, in one pass (gradients follow the caller's grad mode)."""
        if order != "sample_backward":
            tr = self.score(ids, lengths, trees, order=order, generator=generator)
            return tr.log_pf, tr.log_pb
        ids_rows, len_rows, _, n_per, longest = self.expand_rows(ids, lengths, len(trees))
        forest, emb = self.state_from_trees(ids_rows, len_rows, trees, "width", longest=longest)
        walk = walk_back(self, forest, emb, (len_rows - 1).clamp(min=0), longest - 1, generator,
                         forward=True,
                         noise=row_noise.for_rows(len_rows.shape[0], n_per, len_rows.device))
        return walk.log_pf, walk.log_pb

    # ============================================================================== states
    def initial_state(self, ids: torch.Tensor, lengths: torch.Tensor, longest: int | None = None
                      ) -> tuple[Forest, torch.Tensor]:
        """Leaves-only forests and the slot embedding table (M, 2L, d) of M rows (`longest`:
        lengths.max() as the host knows it, see `expand_rows`)."""
        forest = Forest.leaves(lengths, longest)
        big_l = forest.max_len
        if ids.shape[1] < big_l:
            raise ValueError(f"ids has {ids.shape[1]} columns but a sentence has {big_l} words")
        words = self.embedder.leaves(ids[:, :big_l])
        emb = torch.cat([words, torch.zeros_like(words)], dim=1)
        return forest, emb

    def state_from_trees(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees,
                         order: str = "width", embed: bool = True, longest: int | None = None
                         ) -> tuple[Forest, torch.Tensor]:
        """The terminal forests of `trees` (one row each) with subtree embeddings, no encoder."""
        forced = self.node_order(ids, lengths, trees, order, longest=longest)
        forest, emb = self.initial_state(ids, lengths, longest)
        return self._replay(forest, emb, forced, embed)

    def node_order(self, ids: torch.Tensor, lengths: torch.Tensor, trees: BinaryTrees,
                   order: str = "given", generator: torch.Generator | None = None,
                   rows_per_input: int = 1, longest: int | None = None) -> torch.Tensor:
        """(M, L-1, 3) rows of (start, end, label) in the order a trajectory builds them
        (`rows_per_input`: how many of the M rows each input has, for row noise)."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if longest is None:
            longest = max(int(lengths.max()), 1) if lengths.numel() else 1
        nodes = self._checked_nodes(trees, lengths, longest)
        if order == "given":
            return nodes
        width = (nodes[..., 1] - nodes[..., 0]).masked_fill(nodes[..., 2] < 0, 1 << 30)
        rank = torch.sort(width, dim=1, stable=True).indices
        by_width = nodes.gather(1, rank.unsqueeze(-1).expand_as(nodes))
        if order == "width":
            return by_width
        with torch.no_grad():
            forest, emb = self.initial_state(ids, lengths, longest)
            forest, emb = self._replay(forest, emb, by_width, embed=self.learn_backward)
            num = (lengths.long() - 1).clamp(min=0)
            _, splits, _ = self.sample_backward(
                forest, emb, num, longest - 1, generator,
                row_noise.for_rows(lengths.shape[0], rows_per_input, lengths.device))
        return reverse_steps(splits, num)

    # ========================================================================== backward
    def sample_backward(self, forest: Forest, emb: torch.Tensor, num_steps: torch.Tensor,
                        max_steps: int, generator: torch.Generator | None = None,
                        noise: row_noise.RowNoise | None = None
                        ) -> tuple[Forest, torch.Tensor, torch.Tensor]:
        """Split up to num_steps[m] roots of each row with P_B (uniform or learned);
        max_steps = num_steps.max(), known on the host.

        Returns the forest reached (dead nodes not yet compacted), the split nodes
        (M, K, 3) as (start, end, label) in backward order (-1 past a row's steps), and
        Σ log P_B of the splits taken (`back_walk.walk_back` also scores the way back).
        """
        walk = walk_back(self, forest, emb, num_steps, max_steps, generator, noise=noise)
        return walk.forest, walk.splits, walk.log_pb

    # =========================================================================== rollouts
    def _encode(self, forest: Forest, emb: torch.Tensor, r: int):
        roots = forest.roots[:, :r]
        mask = forest.root_mask()[:, :r]
        h, summary = self.encoder(read_slots(emb, roots), mask)
        return h, summary, mask

    def _run(self, forest: Forest, emb: torch.Tensor, forced: torch.Tensor | None = None,
             temperature: float = 1.0, epsilon: float = 0.0, want_log_z: bool = False,
             want_flows: bool = False, generator: torch.Generator | None = None,
             enc: tuple | None = None, noise: row_noise.RowNoise | None = None) -> Rollout:
        """Advance every row from its state to a single root, sampling or teacher-forced.

        forced (M, ≥T, 3): the node built at each step, as from `node_order`. `enc`: the
        state's encoding when the caller has it already (a backward walk ending there).
        `noise`: the rows' own uniforms (draws 2t and 2t+1 at step t) instead of `generator`.
        """
        m = forest.num_roots.shape[0]
        dev, dtype = emb.device, emb.dtype
        r0 = forest.widest
        steps = r0 - 1
        lpf, lq, lpb, masks, flows = [], [], [], [], []
        log_z, prev_pos = None, None
        bad = torch.zeros(m, dtype=torch.bool, device=dev)
        if enc is None or enc[0].shape[1] != r0:
            enc = self._encode(forest, emb, r0) if (steps > 0 or want_log_z) else None
        if want_log_z:
            log_z = self.heads.log_z(*enc)
        for t in range(steps):
            h, summary, rmask = enc
            r = r0 - t
            if t > 0:
                if want_flows:
                    flows.append(self.heads.log_flow(h, summary, rmask))
                if self.learn_backward:   # P_B(s_{t-1} | s_t): un-merge the root built at t-1
                    back = self.heads.backward_logits(h)
                    _, lp, _ = choose(back, forest.split_mask()[:, :r], forced=prev_pos)
                    lpb.append(torch.where(masks[-1], lp, 0.0))
            active = ~forest.done()
            pair = self.heads.pairs(h)
            fpos = flab = None
            if forced is not None:
                fpos, ok = forest.locate(forced[:, t, 0], forced[:, t, 1])
                flab = forced[:, t, 2]
                bad = bad | (active & (~ok | (flab < 0) | (flab >= self.num_nonterminals)))
            pos, lp_pos, lq_pos = choose(self.heads.position_logits(pair),
                                         forest.merge_mask()[:, :r - 1], temperature, epsilon,
                                         fpos, generator, row_noise.draw(noise, 2 * t))
            at = pair.gather(1, pos.view(m, 1, 1).expand(m, 1, pair.shape[-1])).squeeze(1)
            ones = torch.ones(m, self.num_nonterminals, dtype=torch.bool, device=dev)
            label, lp_lab, lq_lab = choose(self.heads.label_logits(at), ones, temperature,
                                           epsilon, flab, generator,
                                           row_noise.draw(noise, 2 * t + 1))
            lslot = forest.roots.gather(1, pos[:, None])
            rslot = forest.roots.gather(1, (pos + 1)[:, None])
            node = self.embedder.compose(label, read_slots(emb, lslot).squeeze(1),
                                         read_slots(emb, rslot).squeeze(1))
            emb = write_slots(emb, forest.next_slot(active), node)
            forest = forest.merge(pos, label, active)
            lpf.append(torch.where(active, lp_pos + lp_lab, 0.0))
            lq.append(torch.where(active, lq_pos + lq_lab, 0.0))
            masks.append(active)
            if not self.learn_backward:
                n_split = forest.num_splittable().clamp(min=1).to(lp_pos.dtype)
                lpb.append(torch.where(active, -n_split.log(), 0.0))
            prev_pos = pos
            if t + 1 < steps:
                enc = self._encode(forest, emb, r - 1)
        if self.learn_backward and steps > 0:
            lpb.append(torch.zeros(m, dtype=dtype, device=dev))   # terminal: one root to split
        expect(~bad, "trees do not match the trajectory order: a node was given before its "
                     "children (use order='width'), or a node/label is invalid")

        def stack(xs, kind=dtype):
            return torch.stack(xs, 1) if xs else torch.zeros(m, 0, dtype=kind, device=dev)

        learned_flows = None
        if want_flows:
            zero = torch.zeros(m, dtype=dtype, device=dev)
            first = log_z if log_z is not None else zero
            cols = [first] + flows + ([zero] if steps > 0 else [])
            learned_flows = torch.stack(cols, 1)
        return Rollout(forest=forest, emb=emb, log_pf=stack(lpf), behaviour_log_pf=stack(lq),
                       log_pb=stack(lpb), step_mask=stack(masks, torch.bool),
                       learned_flows=learned_flows, log_z=log_z)

    def _replay(self, forest: Forest, emb: torch.Tensor, forced: torch.Tensor,
                embed: bool) -> tuple[Forest, torch.Tensor]:
        """Build the forced nodes without the encoder (structure, plus embeddings if asked)."""
        m = forest.num_roots.shape[0]
        steps = forest.widest - 1
        bad = torch.zeros(m, dtype=torch.bool, device=emb.device)
        for t in range(steps):
            active = ~forest.done()
            pos, ok = forest.locate(forced[:, t, 0], forced[:, t, 1])
            label = forced[:, t, 2]
            bad = bad | (active & (~ok | (label < 0) | (label >= self.num_nonterminals)))
            if embed:
                lslot = forest.roots.gather(1, pos[:, None])
                rslot = forest.roots.gather(1, (pos + 1).clamp(max=forest.max_len - 1)[:, None])
                node = self.embedder.compose(label, read_slots(emb, lslot).squeeze(1),
                                             read_slots(emb, rslot).squeeze(1))
                emb = write_slots(emb, forest.next_slot(active), node)
            forest = forest.merge(pos, label, active)
        expect(~bad, "trees are not valid binary trees over their sentences")
        return forest, emb

    # ============================================================================ helpers
    def expand_rows(self, ids: torch.Tensor, lengths: torch.Tensor, rows: int):
        """Expand (B, n) inputs to `rows` = B·N rows (each input's N rows contiguous), with the
        longest length: read where `lengths` lives, so lengths on the host (a GPU's ids with the
        batch's CPU lengths) cost no wait, and copied to the ids' device."""
        b = ids.shape[0]
        if lengths.shape[0] != b:
            raise ValueError(f"ids has {b} rows but lengths has {lengths.shape[0]}")
        if b == 0 or rows % b:
            raise ValueError(f"{rows} trajectories cannot be split evenly over {b} inputs")
        longest = int(lengths.max())
        lengths = lengths.to(ids.device, non_blocking=True).long()
        expect(lengths >= 1, "every sentence needs at least one word")
        n_per = rows // b
        return (ids.repeat_interleave(n_per, 0), lengths.repeat_interleave(n_per, 0), b, n_per,
                max(longest, 1))

    def _checked_nodes(self, trees: BinaryTrees, lengths: torch.Tensor, longest: int
                       ) -> torch.Tensor:
        if trees.lengths.shape != lengths.shape:
            raise ValueError(f"{len(trees)} trees for {lengths.shape[0]} sentences")
        expect(trees.lengths.to(lengths.device).long() == lengths.long(),
               "trees.lengths do not match the sentence lengths")
        spans, labels = trees.spans[:, :longest - 1], trees.labels[:, :longest - 1]
        if spans.shape[1] < longest - 1:
            raise ValueError("trees have fewer node columns than the longest sentence needs")
        count = (labels >= 0).sum(1)
        expect(count == (lengths.long() - 1).clamp(min=0),
               "every tree over n words needs exactly n-1 labeled nodes")
        return torch.cat([spans, labels.unsqueeze(-1)], -1).long()

    def _package(self, ro: Rollout, ids: torch.Tensor, lengths: torch.Tensor, b: int,
                 n_per: int, reward, need_flows: bool, on_policy: bool) -> Trajectories:
        trees = ro.forest.trees()
        log_reward = None
        if reward is not None:
            with torch.no_grad():
                log_reward = reward.log_joint(ids, lengths, trees).detach()
        log_flows = None
        if need_flows:
            if reward is None:
                raise ValueError("need_flows needs a reward (log F(s_T) = log R)")
            log_flows = self._flows(ro, ids, lengths, trees, reward, log_reward)
        return Trajectories(
            log_pf=ro.log_pf.sum(1), log_pb=ro.log_pb.sum(1), log_reward=log_reward,
            num_inputs=b, num_per_input=n_per, log_pf_steps=ro.log_pf,
            log_pb_steps=ro.log_pb, log_flows=log_flows, step_mask=ro.step_mask,
            behaviour_log_pf=ro.behaviour_log_pf.sum(1),
            log_z=ro.log_z.view(b, n_per)[:, 0] if ro.log_z is not None else None,
            z=trees, on_policy=on_policy)

    @staticmethod
    def _flows(ro: Rollout, ids, lengths, trees: BinaryTrees, reward, log_reward) -> torch.Tensor:
        """log F(s_t) = partial_log_joint(s_t) + f_φ(s_t); log Z at t=0; log R from the end."""
        flows = ro.learned_flows
        m, steps = ro.step_mask.shape
        if steps == 0:
            return flows
        t = torch.arange(1, steps + 1, device=flows.device)
        zero = torch.zeros(m, 1, dtype=flows.dtype, device=flows.device)
        if steps > 1:   # s_1..s_{T-1}: the first t nodes of the construction-ordered tree
            k = torch.arange(trees.labels.shape[1], device=flows.device)
            keep = (k[None, None, :] < t[:steps - 1, None, None])            # (T-1, 1, L-1)
            spans = torch.where(keep.unsqueeze(-1), trees.spans.unsqueeze(0), -1)
            labels = torch.where(keep, trees.labels.unsqueeze(0), -1)
            partial = BinaryTrees(spans=spans.flatten(0, 1), labels=labels.flatten(0, 1),
                                  lengths=lengths.repeat(steps - 1))
            with torch.no_grad():
                fixed = reward.partial_log_joint(ids.repeat(steps - 1, 1),
                                                 lengths.repeat(steps - 1), partial)
            fixed = fixed.detach().view(steps - 1, m).t()
            fixed = torch.cat([fixed.to(flows.dtype), zero], 1)
        else:
            fixed = zero
        inner = flows[:, 1:] + fixed
        terminal = t[None, :] >= ro.step_mask.sum(1, keepdim=True)
        inner = torch.where(terminal, log_reward[:, None].to(inner.dtype), inner)
        return torch.cat([flows[:, :1], inner], 1)


def reverse_steps(steps: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Reverse the first counts[m] entries of each row of (M, K, ...) (the rest become -1)."""
    k = steps.shape[1]
    j = torch.arange(k, device=steps.device)[None, :]
    src = (counts[:, None] - 1 - j).clamp(min=0)
    out = steps.gather(1, src.view(*src.shape, *([1] * (steps.dim() - 2))).expand_as(steps))
    keep = (j < counts[:, None]).view(*src.shape, *([1] * (steps.dim() - 2)))
    return torch.where(keep, out, -1)
