"""An image run directory: start or resume training from a recipe, and load a trained model.

The lifecycle (every check first, atomic writes after) is the engine's (`engine/runs.py`),
as for grammars; an image run also keeps RUN/data_manifest.json, the prepared set's manifest
(its kind, fingerprint and, for shapes, the true NLL), so a run needs no data to be read back.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gfnem_cli.engine import checkpoint as ckpt
from gfnem_cli.engine.errors import GfnemError
from gfnem_cli.engine.runs import (BEST, begin, check_checkpoint_config, checkpoint_path,
                                   launch, resolve_device)
from gfnem_cli.engine.runs import saved_config as _saved_config
from gfnem_cli.engine.trainer import Trainer, TrainerOptions
from vae.data import ImageSchedule, in_order_batches, load_image_set
from vae.recipe import VAE_DEFAULTS
from vae.training.em_methods import (SELECT_METRIC, build_encoder, build_method, build_sampler,
                                     build_vae)

DEFAULTS = VAE_DEFAULTS      # this family's recipe defaults (`gfnem train --print-config`)


MANIFEST = "data_manifest.json"


def saved_config(run_dir: Path) -> dict:
    return _saved_config(run_dir, VAE_DEFAULTS)


def split_images(images, name: str, key: str) -> torch.Tensor:
    """A split the recipe names, as (N, H, W): missing or empty is one line naming the key."""
    try:
        return images.images(name)
    except GfnemError as exc:
        raise GfnemError(f"{key}={name!r}: {exc.message}", images.path,
                         hint=exc.hint) from None


def train_run(recipe: Path | None, out: Path, overrides: list[str], resume: bool,
              device: str = "auto", show_progress: bool = True,
              command: list[str] | None = None, log_every: int = 0) -> dict:
    """Check everything, then write: a refused start or resume leaves `out` as it was."""
    out = Path(out)
    config, state = begin(VAE_DEFAULTS, recipe, overrides, out, resume)
    if not config["data"]["path"]:
        raise GfnemError("the recipe names no image set", recipe,
                         hint="set data.path to a folder written by `gfnem prepare shapes` "
                              "or `gfnem prepare mnist`")
    data = load_image_set(Path(config["data"]["path"]))
    train_images = split_images(data, config["data"]["train_split"], "data.train_split")
    valid = split_images(data, config["data"]["valid_split"], "data.valid_split")
    limit = config["data"]["max_valid_images"]
    valid = valid[:limit] if limit > 0 else valid
    train = config["train"]
    dev = resolve_device(device)
    torch.manual_seed(train["seed"])
    model = build_vae(config, data.image_shape).to(dev)
    method = build_method(config, model, in_order_batches(valid, train["eval_batch_size"]), dev)
    schedule = ImageSchedule(train_images, train["batch_size"], train["seed"])
    options = TrainerOptions(steps=train["steps"], max_model_updates=train["max_model_updates"],
                             eval_every=train["eval_every"],
                             checkpoint_every=train["checkpoint_every"],
                             select_metric=SELECT_METRIC, show_progress=show_progress,
                             log_every=log_every)
    trainer = Trainer(out, method, schedule, options, config, data.fingerprint, items_in=len,
                      device=dev)
    files = {MANIFEST: (data.path / "manifest.json").read_text(encoding="utf-8")}
    saved = saved_config(out) if resume and state.has_checkpoint else None
    height, width = data.image_shape      # the header's data line (engine/run_header.py)
    images = (f"images: {data.path} ({data.manifest.get('kind')}; {height}x{width} binary): "
              f"train {len(train_images):,}, validation {len(valid):,}")
    return launch(trainer, state, resume, saved, files, config, dev, train["seed"], command,
                  [images], networks=networks(method))


def networks(method) -> tuple:
    """What `train.precision: bf16` runs under autocast: the decoder, the grid sampler's
    trunk and policy, a baseline's encoder; the prior and every log-likelihood stay float32."""
    modules = method.modules
    vae = modules.get("model", modules.get("vae"))
    found = list(vae.decoder.children())            # its methods call its layers
    if "sampler" in modules:
        found += [modules["sampler"].trunk, *modules["sampler"].policy.children()]
    if "encoder" in modules:
        found.append(modules["encoder"])
    return tuple(found)


@dataclass
class TrainedImageRun:
    path: Path
    config: dict
    manifest: dict                      # the training set's manifest
    model: torch.nn.Module              # DiscreteVAE
    step: int
    device: torch.device
    sampler: torch.nn.Module | None = None   # GridSampler (gfnem)
    encoder: torch.nn.Module | None = None   # FactorizedEncoder (baselines but exact_em)

    @property
    def method(self) -> str:
        return self.config["method"]


def _model_state(method_state: dict) -> dict:
    """The DiscreteVAE's tensors: the EM loop keeps them as `model`, a baseline in `modules`."""
    return method_state["model"] if "model" in method_state else method_state["modules"]["vae"]


def load_run(run_dir: Path, device: str = "auto", which: str = BEST,
             on_warning=None) -> TrainedImageRun:
    """A trained image run, checked: config valid, checkpoint made by it, tensors that fit."""
    import json

    run_dir = Path(run_dir)
    if which not in (BEST, "last"):
        raise GfnemError(f"unknown checkpoint {which!r}", hint="use best or last")
    config = saved_config(run_dir)
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
        shape = tuple(manifest["image_shape"])
    except (OSError, ValueError, KeyError, TypeError):
        raise GfnemError("missing or damaged", run_dir / MANIFEST,
                         hint="restore the run's own data_manifest.json") from None
    path = checkpoint_path(run_dir, which, on_warning)
    state = ckpt.load(path)
    check_checkpoint_config(state, config, run_dir, f"the checkpoint {path.name}")
    dev = resolve_device(device)
    method_state = state["method"]
    sampler = encoder = None
    try:
        model = build_vae(config, shape)
        model.load_state_dict(_model_state(method_state))
        if config["method"] == "gfnem":
            sampler = build_sampler(config)
            sampler.load_state_dict(method_state["sampler"])
            sampler = sampler.to(dev).eval()
        elif config["method"] != "exact_em":
            encoder = build_encoder(config)
            encoder.load_state_dict(method_state["modules"]["encoder"])
            encoder = encoder.to(dev).eval()
    except (KeyError, RuntimeError, TypeError) as exc:
        raise GfnemError(f"the checkpoint does not fit config.yaml ({type(exc).__name__})",
                         path, hint="restore the run's own config.yaml") from None
    model.to(dev).eval()
    return TrainedImageRun(run_dir, config, manifest, model, state["step"], dev, sampler,
                           encoder)
