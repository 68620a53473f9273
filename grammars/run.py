"""A grammar run directory: start or resume training from a recipe, and load a trained model.

The lifecycle (checks first, atomic writes after) is the engine's (`engine/runs.py`); this
module adds what a grammar run keeps beside the engine's files: RUN/vocab.json (so parsing
needs no corpus), RUN/corpus_manifest.json and, for a synthetic corpus, RUN/true_grammar.json,
and the grammar's lines of the run's header (corpus sizes, vocabulary, what validation
measures). best.pt is chosen by `train.select_metric`: the validation NLL per token (lowest),
or a validation F1 (highest; `training/validation_f1.py`). `method: shape-ebm` trains no grammar
but the tree-shape prior a gfnem recipe reads (`shape_prior/training.py`): its run has no best.pt,
and `load_run` refuses it (it has nothing to parse, sample or evaluate with).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gfnem_cli.engine import checkpoint as ckpt
from gfnem_cli.engine import lr_schedule_from_config
from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.runs import (BEST, begin, check_checkpoint_config, checkpoint_path,
                                   launch, resolve_device)
from gfnem_cli.engine.runs import saved_config as _saved_config
from gfnem_cli.engine.trainer import Trainer, TrainerOptions
from grammars.charts.backends import get_backend
from grammars.data.batching import BucketedSchedule, in_order_batches
from grammars.data.corpus import load_corpus
from grammars.models import build_grammar
from grammars.recipe import GRAMMAR_DEFAULTS
from grammars.shape_prior.training import METHOD as SHAPE_EBM
from grammars.shape_prior.training import build_shape_ebm_method
from grammars.training.em_methods import build_em_method, load_sampler
from grammars.training.exact_marginal import ExactMarginalMethod
from grammars.training.validation_f1 import F1_METRICS, validation_f1
from grammars.data.vocabulary import Vocabulary

DEFAULTS = GRAMMAR_DEFAULTS      # this family's recipe defaults (`gfnem train --print-config`)


def inside_backend(name: str):
    try:
        return get_backend(name)
    except ValueError:
        raise GfnemError(f"unknown inside backend '{name}'",
                         hint="set inside: ours or inside: torch-struct") from None


def build_model(config: dict, vocab_size: int):
    sizes = {k: v for k, v in config["model"].items() if k != "kind"}
    return build_grammar(config["model"]["kind"], vocab_size, seed=config["train"]["seed"],
                         **sizes)


def saved_config(run_dir: Path) -> dict:
    """The run's config.yaml, checked against the schema like a recipe (a hand-edited one
    that no longer validates is a one-line error, not a traceback later)."""
    return _saved_config(run_dir, GRAMMAR_DEFAULTS)


def split_ids(corpus, split: str, role: str, key: str) -> list:
    """A split a recipe names must exist and hold sentences: a typo must not train silently
    with no validation (a "best" checkpoint chosen on nothing)."""
    if split not in corpus.data:
        raise GfnemError(f"{key}={split!r}: the corpus has no such split (it has "
                         f"{', '.join(f'{n} ({len(d):,})' for n, d in corpus.data.items())})",
                         corpus.path, hint=f"set {key} to one of them")
    ids = corpus.column(split, "ids")
    if not ids:
        raise GfnemError(f"{key}={split!r}: the {role} split is empty", corpus.path,
                         hint="prepare the corpus with sentences in it, or name another split")
    return ids


def _build_method(config: dict, model, corpus, device, inside):
    """The trainer's method, its validation F1 (None when off or without gold trees) and the
    number of validation sentences."""
    train = config["train"]
    valid = split_ids(corpus, config["data"]["valid_split"], "validation", "data.valid_split")
    limit = config["data"]["max_valid_sentences"]
    valid = valid[:limit] if limit > 0 else valid
    valid_batches = in_order_batches(valid, train["eval_batch_size"])
    f1 = validation_f1(config, corpus, valid, device, inside)
    method = config["method"]
    if method == "marginal":
        if config["model"]["kind"] == "ncfg":
            raise GfnemError("method 'marginal' needs a context-free grammar; the "
                             "non-context-free grammar has no inside algorithm",
                             hint="use method: gfnem or method: mcem")
        return ExactMarginalMethod(model, inside, valid_batches, device,
                                   lr_schedule_from_config(config), train["betas"],
                                   train["grad_clip"], f1), f1, len(valid)
    return build_em_method(config, model, valid_batches, device, inside, f1), f1, len(valid)


def describe(config: dict, corpus, train_ids: list, valid_count: int, f1, model,
             sampler) -> list[str]:
    """The grammar's lines of the run's header: the corpus, what trains, the vocabulary and
    what validation measures (the engine adds run, device and parameter counts)."""
    data, splits = config["data"], corpus.manifest.get("splits", {})
    cap = data["max_train_length"]
    used = sum(1 for s in train_ids if len(s) >= 2 and (cap == 0 or len(s) <= cap))
    sizes = ", ".join(f"{name} {count:,}" for name, count in corpus.sizes.items())
    unk = [f"{role} {100 * splits[name]['unk_rate']:.2f}%" for role, name in
           (("train", data["train_split"]), ("valid", data["valid_split"]))
           if isinstance(splits.get(name, {}).get("unk_rate"), (int, float))]
    lines = [f"corpus: {corpus.path} ({corpus.manifest.get('kind')}; sentences: {sizes})",
             f"training: {used:,} sentences of {data['train_split']!r} with 2"
             f"{f'-{cap}' if cap else '+'} words",
             f"vocabulary: {len(corpus.vocab):,} types (<unk> included)"
             + (f"; <unk> in {', '.join(unk)} of the words" if unk else "")]
    rates = [splits.get(data[key], {}).get("unk_rate") for key in ("train_split", "valid_split")]
    if all(isinstance(r, (int, float)) for r in rates) and rates[0] == 0 < rates[1]:
        lines.append(f"warning: <unk> never occurs in {data['train_split']!r} but is "
                     f"{100 * rates[1]:.2f}% of {data['valid_split']!r}: the model cannot learn "
                     "what <unk> emits; prepare the corpus with a smaller --vocab-size (the "
                     "README's PTB sample runs use 4000)")
    if f1 is not None:
        f1_text = (f"bracketing F1 on the first {len(f1):,} of them "
                   f"({f1.decoder(model, sampler)} decoding)")
    elif not config["train"]["valid_f1"]:
        f1_text = "no F1 (train.valid_f1: false)"
    else:
        f1_text = "no F1 (no gold trees)"
    lines.append(f"validation: NLL per token on {valid_count:,} sentences of "
                 f"{data['valid_split']!r}; {f1_text}; best.pt by "
                 f"{config['train']['select_metric']}")
    return lines


def train_run(recipe: Path | None, out: Path, overrides: list[str], resume: bool,
              device: str = "auto", show_progress: bool = True,
              command: list[str] | None = None, log_every: int = 0) -> dict:
    """Check everything, then write: a refused start or resume leaves `out` as it was."""
    out = Path(out)
    config, state = begin(GRAMMAR_DEFAULTS, recipe, overrides, out, resume)
    if not config["data"]["path"]:
        raise GfnemError("the recipe names no corpus", recipe,
                         hint="set data.path to a folder written by `gfnem prepare`")
    corpus = load_corpus(Path(config["data"]["path"]))
    train_ids = split_ids(corpus, config["data"]["train_split"], "training", "data.train_split")
    if not any(len(s) >= 2 for s in train_ids):
        raise GfnemError("the training split has no sentence of two or more words",
                         corpus.path)
    dev = resolve_device(device)
    torch.manual_seed(config["train"]["seed"])
    train = config["train"]
    select = train["select_metric"]
    if config["method"] == SHAPE_EBM:
        method, lines = build_shape_ebm_method(config, corpus, dev)
        select, sampler = "", None
        lines = describe(config, corpus, train_ids, 0, None, None, None)[:1] + lines
    else:
        model = build_model(config, len(corpus.vocab)).to(dev)
        inside = inside_backend(config["inside"])
        method, f1, valid_count = _build_method(config, model, corpus, dev, inside)
        sampler = getattr(method, "modules", {}).get("sampler")
        lines = describe(config, corpus, train_ids, valid_count, f1, model, sampler)
    schedule = BucketedSchedule(train_ids, train["batch_size"], train["seed"],
                                config["data"]["max_train_length"],
                                train["curriculum_start"], train["curriculum_increment"])
    options = TrainerOptions(steps=train["steps"], max_model_updates=train["max_model_updates"],
                             eval_every=train["eval_every"],
                             checkpoint_every=train["checkpoint_every"],
                             select_metric=select, select_maximize=select in F1_METRICS,
                             show_progress=show_progress, log_every=log_every)
    trainer = Trainer(out, method, schedule, options, config, corpus.manifest["fingerprint"],
                      items_in=len, device=dev)
    files = {"vocab.json": (corpus.path / "vocab.json").read_text(encoding="utf-8"),
             "corpus_manifest.json": (corpus.path / "manifest.json").read_text(encoding="utf-8")}
    if (corpus.path / "grammar.json").exists():
        files["true_grammar.json"] = (corpus.path / "grammar.json").read_text(encoding="utf-8")
    saved = saved_config(out) if resume and state.has_checkpoint else None
    return launch(trainer, state, resume, saved, files, config, dev, train["seed"], command,
                  lines, networks=networks(sampler))


def networks(sampler) -> tuple:
    """What `train.precision: bf16` runs under autocast: the tree sampler's Transformer and
    the layers of its embedder and heads (whose own methods call them); the grammar and its
    inside algorithm stay in float32."""
    if sampler is None:
        return ()
    return (sampler.encoder, *sampler.embedder.children(), *sampler.heads.children())


@dataclass
class TrainedRun:
    path: Path
    config: dict
    vocab: Vocabulary
    model: torch.nn.Module
    method_state: dict
    step: int
    device: torch.device
    sampler: torch.nn.Module | None = None   # the trained TreeSampler of a gfnem run

    @property
    def inside(self):
        return inside_backend(self.config["inside"])


def load_run(run_dir: Path, device: str = "auto", which: str = BEST,
             on_warning=None) -> TrainedRun:
    """A trained run, checked: config.yaml valid, the checkpoint readable and made by this
    config, its tensors the shapes the config and vocabulary give."""
    run_dir = Path(run_dir)
    if which not in (BEST, "last"):
        raise GfnemError(f"unknown checkpoint {which!r}", hint="use best or last")
    config = saved_config(run_dir)
    if config["method"] == SHAPE_EBM:
        raise GfnemError("this run is a tree-shape prior (method shape-ebm): it holds no "
                         "grammar to parse, sample, score or evaluate with", run_dir,
                         hint="use it as em.shape_prior of a gfnem recipe")
    vocab = Vocabulary.load(run_dir / "vocab.json")
    path = checkpoint_path(run_dir, which, on_warning)
    state = ckpt.load(path)
    check_checkpoint_config(state, config, run_dir, f"the checkpoint {path.name}")
    dev = resolve_device(device)
    try:
        model = build_model(config, len(vocab))
        model.load_state_dict(state["method"]["model"])
        sampler = load_sampler(config, len(vocab), state["method"], dev)
    except (KeyError, RuntimeError) as exc:
        raise GfnemError(f"the checkpoint does not fit config.yaml and vocab.json "
                         f"({type(exc).__name__})", path,
                         hint="restore the run's own vocab.json and config.yaml") from None
    model.to(dev).eval()
    return TrainedRun(run_dir, config, vocab, model, state["method"], state["step"], dev, sampler)
