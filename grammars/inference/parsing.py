"""Parse sentences with a trained grammar: Viterbi, MBR, or the best of sampled trees.

Sentences are decoded in length-sorted batches and written back in input order; 1-word
sentences (which a CNF grammar cannot derive) come out as a bare leaf. Under torchrun the
batches are shared over the ranks (`parse_sentences`).
"""
from __future__ import annotations

import torch

from gfnem_cli.engine import distributed
from gfnem_cli.engine.errors import GfnemError
from grammars.binary_trees import BinaryTrees
from grammars.charts.mbr import mbr_decode
from grammars.data.batching import in_order_batches
from grammars.inference.sampled_decoding import best_of_samples, sampler_mbr
from grammars.models.capabilities import has_dynamic_program

DECODERS = ("auto", "viterbi", "mbr", "sample")


def resolve_decode(run, decode: str) -> str:
    """`auto`: Viterbi where the grammar has a dynamic program, else the sampler's MBR."""
    if decode != "auto":
        return decode
    return "viterbi" if has_dynamic_program(run.model) else "mbr"


def _trivial_tree(length: int) -> BinaryTrees:
    return BinaryTrees(torch.full((1, max(length - 1, 0), 2), -1, dtype=torch.long),
                       torch.full((1, max(length - 1, 0)), -1, dtype=torch.long),
                       torch.tensor([length]))


@torch.no_grad()
def decode_batch(run, ids: torch.Tensor, lengths: torch.Tensor, decode: str,
                 samples: int = 16, generator: torch.Generator | None = None) -> BinaryTrees:
    """`generator` draws the trees of the sampled decoders (torch's global one when None)."""
    model, inside = run.model, run.inside
    decode = resolve_decode(run, decode)
    if decode == "sample":
        return best_of_samples(run, ids, lengths, samples, generator)
    if not has_dynamic_program(model):   # decode from the GFlowNet sampler
        if decode == "viterbi":
            raise GfnemError("Viterbi decoding needs a context-free grammar; this run's grammar "
                             "has no dynamic program", run.path,
                             hint="use --decode mbr (sampler span marginals) or --decode sample")
        return sampler_mbr(run, ids, lengths, samples, generator)
    params = model.params(ids, lengths)
    if decode == "viterbi":
        _, trees = inside.viterbi(params)
        return trees
    return mbr_decode(inside.span_marginals(params), lengths)


def parse_sentences(run, sentences: list[list[int]], decode: str, batch_size: int = 16,
                    samples: int = 16, progress=None, seed: int = 0) -> list[BinaryTrees]:
    """One single-row BinaryTrees per input sentence, in input order.

    Batch b of the sampled decoders draws from a generator seeded with (seed, b), so under
    torchrun each rank decodes a contiguous block of batches (`distributed.map_batches`) and
    the trees gathered are the one-process trees."""
    out: list[BinaryTrees | None] = [None] * len(sentences)
    long = [i for i, s in enumerate(sentences) if len(s) >= 2]
    for i, s in enumerate(sentences):
        if len(s) < 2:
            out[i] = _trivial_tree(len(s))

    def decode_rows(batch, generator):
        ids, lengths = batch.ids.to(run.device), batch.lengths.to(run.device)
        trees = decode_batch(run, ids, lengths, decode, samples, generator)
        rows = []
        for row, k in enumerate(batch.index.tolist()):
            n = int(lengths[row])
            rows.append((long[k], BinaryTrees(
                trees.spans[row:row + 1, : n - 1].cpu(), trees.labels[row:row + 1, : n - 1].cpu(),
                trees.lengths[row:row + 1].cpu(),
                None if trees.preterminals is None else trees.preterminals[row:row + 1, :n].cpu())))
        return rows

    batches = in_order_batches([sentences[i] for i in long], batch_size)
    for rows in distributed.map_batches(batches, decode_rows, seed, device=run.device,
                                        progress=progress):
        for index, tree in rows:
            out[index] = tree
    return out
