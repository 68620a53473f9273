"""A grammar run directory: start or resume training from a recipe, and load a trained model.

Layout: RUN/config.yaml (the resolved recipe), RUN/vocab.json (so parsing needs no corpus),
RUN/metrics.jsonl, RUN/checkpoints/{last,best}.pt, RUN/report.json.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from gfnem_cli.engine import checkpoint as ckpt
from gfnem_cli.engine.config import flatten, resolve_config, save_config
from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.trainer import Trainer, TrainerOptions
from grammars.batching import BucketedSchedule, in_order_batches
from grammars.corpus import load_corpus
from grammars.recipe import GRAMMAR_DEFAULTS
from grammars.vocabulary import Vocabulary

RESUMABLE_CHANGES = {"train.steps", "train.max_model_updates", "train.eval_every", "train.checkpoint_every"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise GfnemError(f"unknown device '{name}'", hint="use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GfnemError("--device cuda was asked for but no CUDA device is visible",
                         hint="use --device cpu")
    return torch.device(name)


def inside_backend(name: str):
    from grammars.inside import get_backend

    try:
        return get_backend(name)
    except ValueError:
        raise GfnemError(f"unknown inside backend '{name}'",
                         hint="set inside: ours or inside: torch-struct") from None


def build_model(config: dict, vocab_size: int):
    from grammars.models import build_grammar

    sizes = {k: v for k, v in config["model"].items() if k != "kind"}
    return build_grammar(config["model"]["kind"], vocab_size, seed=config["train"]["seed"],
                         **sizes)


def _check_resume_config(saved: dict, wanted: dict, run_dir: Path) -> None:
    old, new = flatten(saved), flatten(wanted)
    for key in sorted(set(old) | set(new)):
        if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key):
            raise GfnemError(f"--resume with a different '{key}' ({old.get(key)!r} in the run, "
                             f"{new.get(key)!r} now)", run_dir / "config.yaml",
                             hint="resume with the recipe and --set values the run began with")


def _build_method(config: dict, model, corpus, device, inside):
    train = config["train"]
    valid_split = config["data"]["valid_split"]
    valid = corpus.column(valid_split, "ids") if valid_split in corpus.data else []
    limit = config["data"]["max_valid_sentences"]
    valid = valid[:limit] if limit > 0 else valid
    valid_batches = in_order_batches(valid, train["eval_batch_size"]) if valid else []
    method = config["method"]
    if method == "marginal":
        from grammars.exact_em import ExactMarginalMethod

        if config["model"]["kind"] == "ncfg":
            raise GfnemError("method 'marginal' needs a context-free grammar; the "
                             "non-context-free grammar has no inside algorithm",
                             hint="use method: gfnem or method: mcem")
        return ExactMarginalMethod(model, inside, valid_batches, device, train["lr"],
                                   train["betas"], train["grad_clip"])
    from grammars.em_methods import build_em_method

    return build_em_method(config, model, valid_batches, device, inside)


def train_run(recipe: Path | None, out: Path, overrides: list[str], resume: bool,
              device: str = "auto", show_progress: bool = True) -> dict:
    out = Path(out)
    config = resolve_config(GRAMMAR_DEFAULTS, recipe, overrides)
    config_path = out / "config.yaml"
    if resume:
        if not (out / "checkpoints" / "last.pt").exists():
            raise GfnemError("nothing to resume: no checkpoint in this run", out,
                             hint="drop --resume to start it")
        saved = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        _check_resume_config(saved, config, out)
    elif (out / "checkpoints" / "last.pt").exists():
        raise GfnemError("this directory already holds a run", out,
                         hint="pass --resume to continue it, or choose another --out")
    if not config["data"]["path"]:
        raise GfnemError("the recipe names no corpus", recipe,
                         hint="set data.path to a folder written by `gfnem prepare`")
    corpus = load_corpus(Path(config["data"]["path"]))
    train_ids = corpus.column(config["data"]["train_split"], "ids")
    if not any(len(s) >= 2 for s in train_ids):
        raise GfnemError("the training split has no sentence of two or more words",
                         corpus.path)
    dev = resolve_device(device)
    torch.manual_seed(config["train"]["seed"])
    model = build_model(config, len(corpus.vocab)).to(dev)
    inside = inside_backend(config["inside"])
    method = _build_method(config, model, corpus, dev, inside)
    train = config["train"]
    schedule = BucketedSchedule(train_ids, train["batch_size"], train["seed"],
                                config["data"]["max_train_length"],
                                train["curriculum_start"], train["curriculum_increment"])
    options = TrainerOptions(steps=train["steps"], max_model_updates=train["max_model_updates"],
                             eval_every=train["eval_every"],
                             checkpoint_every=train["checkpoint_every"],
                             show_progress=show_progress)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, config_path)
    corpus.vocab.save(out / "vocab.json")
    shutil.copy(corpus.path / "manifest.json", out / "corpus_manifest.json")
    if (corpus.path / "grammar.json").exists():
        shutil.copy(corpus.path / "grammar.json", out / "true_grammar.json")
    trainer = Trainer(out, method, schedule, options, config, corpus.manifest["fingerprint"],
                      items_in=len)
    if resume:
        trainer.resume()
    else:
        ckpt.seed_everything(train["seed"])
    return trainer.fit()


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


def load_run(run_dir: Path, device: str = "auto", which: str = "best") -> TrainedRun:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise GfnemError("not a gfnem run directory (no config.yaml)", run_dir,
                         hint="create one with `gfnem train RECIPE --out DIR`")
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    vocab = Vocabulary.load(run_dir / "vocab.json")
    path = run_dir / "checkpoints" / f"{which}.pt"
    if not path.exists():
        path = run_dir / "checkpoints" / "last.pt"
    state = ckpt.load(path)
    dev = resolve_device(device)
    model = build_model(config, len(vocab))
    model.load_state_dict(state["method"]["model"])
    model.to(dev).eval()
    from grammars.em_methods import load_sampler

    sampler = load_sampler(config, len(vocab), state["method"], dev)
    return TrainedRun(run_dir, config, vocab, model, state["method"], state["step"], dev, sampler)
