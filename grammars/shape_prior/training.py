"""`method: shape-ebm`: train the tree-shape prior E_ψ by persistent contrastive divergence.

The trainer `Method` of a grammar recipe whose method is shape-ebm (`grammars.run` builds it
instead of a grammar). Its data are the **gold** shapes of the corpus's training trees, right-
binarized (`shapes.binarize`): the prior is weakly supervised, as in Hu et al. (ICML 2023)
§5.2, whose EBM was trained on PTB training trees. One step, for a batch of gold shapes s⁺ (the
engine's length-bucketed batches, gathered by row from a `ShapeTable`):

1. advance a persistent buffer of `train.batch_size` negative chains by `shape_ebm.mh_steps`
   rotation MH steps under the current E_ψ (`chains.rotation_chains`);
2. one Adam step on  mean E_ψ(s⁺) − mean E_ψ(s⁻) + λ · mean(E_ψ(s⁺)² + E_ψ(s⁻)²)
   (the contrastive-divergence gradient of −log p_ψ(s⁺); λ = `shape_ebm.energy_l2` keeps the
   energies near 0, after Du & Mordatch 2019; the authors' code has λ = 0 and an optional
   weight decay);
3. each chain restarts, with probability `shape_ebm.reset_prob` (the authors' buffer reset
   ratio, 0.5), at a gold shape of this batch drawn uniformly.

Validation, on the validation split's gold shapes (all, or data.max_valid_sentences):
`val_energy_gold`; `val_energy_chains`, chains started at those shapes after
`shape_ebm.valid_mh_steps` MH steps under E_ψ (seeded: validation draws nothing from the
training RNG); `val_energy_uniform`, shapes drawn uniformly with the same lengths (fixed
once); the gaps `val_gap_chains` = chains − gold and `val_gap_uniform` = uniform − gold (nats;
the PCD negatives' and random shapes' excess energy over held-out gold shapes), and
`val_gold_below_uniform`, the share of sentences whose gold shape has the lower energy. No
best.pt: the prior a gfnem run reads is last.pt.
"""
from __future__ import annotations

import torch

from gfnem_cli.engine import GfnemError, checked_step, distributed
from grammars.binary_trees import BinaryTrees
from grammars.shape_prior.chains import rotation_chains
from grammars.shape_prior.energy import ShapeEnergy, build_energy
from grammars.shape_prior.shapes import (ShapeTable, pad_nodes, take_rows, uniform_shapes,
                                         where_rows)

METHOD = "shape-ebm"


def _to(trees: BinaryTrees, device) -> BinaryTrees:
    return BinaryTrees(spans=trees.spans.to(device), labels=trees.labels.to(device),
                       lengths=trees.lengths.to(device))


class ShapeEBMMethod:
    """PCD on gold shapes; a trainer `Method` (train_step, validate, state)."""

    updated = "prior"          # the run's report: "N prior updates", no grammar is trained

    def __init__(self, energy: ShapeEnergy, table: ShapeTable, valid: BinaryTrees, config: dict,
                 device):
        self.energy, self.table, self.device = energy.to(device), table, device
        self.modules = {"shape_prior": self.energy}
        train, self.options = config["train"], config["shape_ebm"]
        self.grad_clip, self.size = train["grad_clip"], train["batch_size"]
        self.optimizer = torch.optim.Adam(self.energy.parameters(), lr=train["lr"],
                                          betas=tuple(train["betas"]))
        self.width = table.shapes.labels.shape[1]        # buffer node columns: any length fits
        self.buffer: BinaryTrees | None = None
        self.buffer_energy: torch.Tensor | None = None
        self.valid = _to(valid, device)
        self.uniform = _to(uniform_shapes(valid.lengths.tolist(), seed=train["seed"]), device)
        self.seed = int(train["seed"])

    # ------------------------------------------------------------------ one step
    def _start_buffer(self, positives: BinaryTrees) -> None:
        rows = torch.randint(len(positives), (self.size,), device=positives.lengths.device)
        rows[: min(self.size, len(positives))] = torch.arange(min(self.size, len(positives)),
                                                              device=rows.device)
        self.buffer = pad_nodes(take_rows(positives, rows), self.width)

    def train_step(self, batch) -> dict[str, float]:
        self.energy.train()
        positives = self.table.get(batch.index, self.device)
        if self.buffer is None:
            self._start_buffer(positives)
        self.buffer, _, acceptance = rotation_chains(self.energy, self.buffer,
                                                     self.options["mh_steps"])
        e_pos, e_neg = self.energy(positives), self.energy(self.buffer)
        lam = self.options["energy_l2"]
        loss = e_pos.mean() - e_neg.mean() + lam * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
        norm = checked_step(loss, self.optimizer, self.energy.parameters(), self.grad_clip)
        # restart some chains at this batch's gold shapes (the authors' buffer reset)
        reset = torch.rand(self.size, device=self.buffer.lengths.device) < self.options[
            "reset_prob"]
        rows = torch.randint(len(positives), (self.size,), device=reset.device)
        fresh = pad_nodes(take_rows(positives, rows), self.width)
        self.buffer = where_rows(reset, fresh, self.buffer)
        figures = torch.stack([loss.detach(), e_pos.detach().mean(), e_neg.detach().mean(),
                               acceptance.to(loss.dtype)]).tolist()        # one wait
        loss_value, gold, negatives, accepted = figures
        return {"loss": loss_value, "energy_gold": gold, "energy_negatives": negatives,
                "gap": negatives - gold, "mh_acceptance": accepted, "grad_norm": norm}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.energy.eval()
        if len(self.valid) == 0:
            return {}
        gold = self.energy.energy_in_chunks(self.valid)
        uniform = self.energy.energy_in_chunks(self.uniform)
        generator = torch.Generator(device=self.valid.lengths.device)
        generator.manual_seed(self.seed)
        _, chains, acceptance = rotation_chains(self.energy, self.valid,
                                                self.options["valid_mh_steps"], gold.clone(),
                                                generator)
        below = (gold < uniform).double() + 0.5 * (gold == uniform).double()
        return {"val_energy_gold": float(gold.mean()), "val_energy_chains": float(chains.mean()),
                "val_energy_uniform": float(uniform.mean()),
                "val_gap_chains": float((chains - gold).mean()),
                "val_gap_uniform": float((uniform - gold).mean()),
                "val_gold_below_uniform": float(below.mean()),
                "val_mh_acceptance": float(acceptance)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        buffer = None
        if self.buffer is not None:
            buffer = {"spans": self.buffer.spans.cpu(), "lengths": self.buffer.lengths.cpu()}
        return {"shape_prior": self.energy.state_dict(),
                "optimizer": self.optimizer.state_dict(), "buffer": buffer}

    def load_state_dict(self, state: dict) -> None:
        self.energy.load_state_dict(state["shape_prior"])
        self.optimizer.load_state_dict(state["optimizer"])
        buffer = state.get("buffer")
        self.buffer = None
        if buffer is not None:
            spans = buffer["spans"].to(self.device)
            self.buffer = BinaryTrees(spans=spans, labels=torch.where(spans[..., 0] >= 0, 0, -1),
                                      lengths=buffer["lengths"].to(self.device))


def gold_table(corpus, split: str, key: str, rows: int | None = None) -> ShapeTable:
    """The split's gold shapes; a corpus without gold trees (raw text) is a one-line error."""
    if corpus.manifest.get("kind") == "text":
        raise GfnemError(f"method {METHOD} learns from gold tree shapes, and {key}={split!r} "
                         "has none (the corpus was prepared from raw text)", corpus.path,
                         hint="prepare a treebank or the synthetic corpus with `gfnem prepare`")
    spans = corpus.column(split, "gold_spans")
    lengths = [len(s) for s in corpus.column(split, "ids")]
    if rows is not None:
        spans, lengths = spans[:rows], lengths[:rows]
    try:
        return ShapeTable(spans, lengths, f"{corpus.path}[{split}]")
    except ValueError as exc:
        raise GfnemError(str(exc), corpus.path,
                         hint="prepare the corpus again with `gfnem prepare`") from None


def build_shape_ebm_method(config: dict, corpus, device) -> tuple[ShapeEBMMethod, list[str]]:
    """The method and the run header's lines about what it learns from."""
    if distributed.world().active:
        raise GfnemError(f"method {METHOD} does not run under torchrun yet: its persistent "
                         "chains live on the rank that drew them",
                         hint="run it as one process (plain gfnem train); it takes minutes")
    data = config["data"]
    table = gold_table(corpus, data["train_split"], "data.train_split")
    limit = data["max_valid_sentences"] or None
    valid = gold_table(corpus, data["valid_split"], "data.valid_split", limit).shapes
    energy = build_energy(config["shape_ebm"], seed=config["train"]["seed"])
    method = ShapeEBMMethod(energy, table, valid, config, device)
    cap = data["max_train_length"]
    used = sum(1 for n in table.shapes.lengths.tolist() if n >= 2 and (cap == 0 or n <= cap))
    lines = [f"training: PCD on the GOLD shapes (weak supervision) of {used:,} sentences of "
             f"{data['train_split']!r} with {'2-' + str(cap) if cap else '2+'} words, "
             "right-binarized; "
             f"{config['train']['batch_size']} persistent chains, "
             f"{config['shape_ebm']['mh_steps']} rotation MH step(s) each per step",
             f"validation: energies of {len(valid):,} gold shapes of {data['valid_split']!r} "
             f"against MH chains from them ({config['shape_ebm']['valid_mh_steps']} steps) and "
             "uniform random shapes; no best.pt (the prior is last.pt)"]
    return method, lines
