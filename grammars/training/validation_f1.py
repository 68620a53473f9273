"""Bracketing F1 on the validation split while a grammar trains, with one example tree.

The NLL says whether the grammar fits the words; whether it finds the constituents is what
F1 says, and the two can move apart (a grammar can keep lowering its NLL while its F1 falls).
So, where the validation split has gold trees (a treebank or the synthetic corpus, not raw
text), every validation also decodes the validation sentences exactly as `gfnem evaluate RUN`
would by default (`inference.parsing.decode_batch` with `auto`: Viterbi where the grammar has
a dynamic program, else the MBR of 16 sampler draws, or of Markov chains for MC-EM), in
length-sorted batches, and scores them with `evaluation.f1.score_spans` (DESIGN §6):
`val_sentence_f1` and `val_corpus_f1`, percentages as `evaluate` reports them.

Cost is bounded: `train.valid_f1: false` turns it off, `data.max_valid_f1_sentences` (200 by
default) takes the first sentences of the validation set the NLL uses. The cap is low because
decoding costs far more than the NLL: on a CPU our Viterbi takes ~20x the inside pass (100 PTB
sentences, the Kim et al. N-PCFG: 5.6 s against 0.3 s), so F1 on 1,000 sentences every 1,000
steps would add about half to a PTB run, on 200 about a tenth; F1 on 200 sentences is a running
indicator within a few points, `gfnem evaluate` gives the split's figure. Decoding from samples
runs under a forked RNG seeded by `train.seed`, so validating never changes the training
draws and a resumed run stays identical to an uninterrupted one.

One example is printed per validation (`trainer.VALIDATION_NOTES`): the predicted and the gold
tree of one fixed sentence, the first of 5 to 15 words (short enough for one line, long
enough to have structure), so a user watches the same tree change from one validation to
the next.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gfnem_cli.engine import VALIDATION_NOTES, GfnemError
from grammars.data.batching import in_order_batches
from grammars.evaluation.f1 import score_spans
from grammars.inference.parsing import decode_batch, resolve_decode

F1_METRICS = ("val_sentence_f1", "val_corpus_f1")   # higher is better (train.select_metric)
DECODE_SAMPLES = 16                                 # as `parse` and `evaluate` by default
EXAMPLE_LENGTHS = (5, 15)


@dataclass
class _RunView:
    """What the decoders read of a run (`grammars.run.TrainedRun`), for a run still training."""

    model: Any
    inside: Any
    device: torch.device
    sampler: Any
    config: dict
    path: Any = None


def bracketed(words: list[str], spans) -> str:
    """Unlabeled brackets over the words, e.g. `((the dog) (saw (a cat)))`: the constituents
    of width >= 2 and the whole sentence; predicted and gold trees print alike."""
    n = len(words)
    kept = {(int(i), int(j)) for i, j in spans if j - i >= 2 and 0 <= i and j <= n}
    kept.add((0, n))
    opens, closes = [0] * n, [0] * n
    for i, j in kept:
        opens[i] += 1
        closes[j - 1] += 1
    return " ".join("(" * opens[k] + word + ")" * closes[k] for k, word in enumerate(words))


def example_index(lengths: list[int]) -> int:
    low, high = EXAMPLE_LENGTHS
    fitting = [i for i, n in enumerate(lengths) if low <= n <= high]
    return fitting[0] if fitting else max(range(len(lengths)), key=lengths.__getitem__)


class ValidationF1:
    """`f1(model, sampler)` -> {val_sentence_f1, val_corpus_f1, notes: the example}."""

    def __init__(self, ids: list[list[int]], gold: list, words: list[list[str]], config: dict,
                 inside, device, batch_size: int):
        self.lengths = [len(s) for s in ids]
        self.gold, self.words = gold, words
        self.long = [i for i, n in enumerate(self.lengths) if n >= 2]   # 1 word: not scored
        self.batches = in_order_batches([ids[i] for i in self.long], batch_size)
        self.example = example_index(self.lengths)
        self.config, self.inside, self.device = config, inside, device
        self.seed = int(config["train"]["seed"])

    def __len__(self) -> int:
        return len(self.lengths)

    def decoder(self, model, sampler) -> str:
        return resolve_decode(_RunView(model, self.inside, self.device, sampler, self.config),
                              "auto")

    @torch.no_grad()
    def __call__(self, model, sampler) -> dict:
        run = _RunView(model, self.inside, self.device, sampler, self.config)
        decode = resolve_decode(run, "auto")
        predicted: list[list] = [[] for _ in self.lengths]
        # manual_seed reseeds every CUDA device, so every one is forked and restored
        cuda = (list(range(torch.cuda.device_count()))
                if torch.device(self.device).type == "cuda" else [])
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            for batch in self.batches:
                trees = decode_batch(run, batch.ids.to(self.device),
                                     batch.lengths.to(self.device), decode, DECODE_SAMPLES)
                for row, spans in zip(batch.index.tolist(), trees.span_lists()):
                    predicted[self.long[row]] = spans
        report = score_spans(self.gold, predicted, self.lengths)
        k = self.example
        mine = score_spans([self.gold[k]], [predicted[k]], [self.lengths[k]]).sentence_f1
        notes = [f"example, predicted (sentence F1 {mine:.1f}): "
                 f"{bracketed(self.words[k], predicted[k])}",
                 f"example, gold: {bracketed(self.words[k], self.gold[k])}"]
        return {F1_METRICS[0]: report.sentence_f1, F1_METRICS[1]: report.corpus_f1,
                VALIDATION_NOTES: notes}


def validation_f1(config: dict, corpus, valid_ids: list[list[int]], device, inside
                  ) -> ValidationF1 | None:
    """The F1 of a run's validations, or None where it is off or there are no gold trees; a
    recipe that selects best.pt by F1 is refused then, before anything is written."""
    split, metric = config["data"]["valid_split"], config["train"]["select_metric"]
    if not config["train"]["valid_f1"]:
        return None               # a conflict in the recipe refuses F1 selection without F1
    if corpus.manifest.get("kind") == "text":
        if metric in F1_METRICS:
            raise GfnemError(f"train.select_metric={metric}: the validation split {split!r} has "
                             "no gold trees (the corpus was prepared from raw text)",
                             corpus.path, hint="set train.select_metric: val_nll_per_token, or "
                                               "validate on a treebank split")
        return None
    limit = config["data"]["max_valid_f1_sentences"]
    count = min(len(valid_ids), limit) if limit > 0 else len(valid_ids)
    gold = corpus.column(split, "gold_spans")[:count]
    words = corpus.column(split, "words")[:count]
    return ValidationF1(valid_ids[:count], gold, words, config, inside, device,
                        config["train"]["eval_batch_size"])
