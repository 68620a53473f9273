"""The image family's side of `gfnem prepare|sample|parse|evaluate` (DESIGN.md §8).

The shared command functions pick this path when the run's saved config names family `vae`
(`gfnem_cli.families`) or the data set's manifest is an image set's; everything here checks
its options and outputs before reading a model or an image, so a refusal writes nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from gfnem_cli.commands.checks import at_least, checkpoint_name
from gfnem_cli.console import console, warn, work_progress
from gfnem_cli.engine.errors import GfnemError

IMAGE_KINDS = ("shapes", "mnist")
DEFAULT_SAMPLES = 5000


def is_image_run(run: Optional[Path]) -> bool:
    """True for a run whose config.yaml says family vae; anything unreadable is left to the
    grammar path, whose errors stay exactly as they were."""
    if run is None or not (Path(run) / "config.yaml").is_file():
        return False
    from gfnem_cli import families

    try:
        return families.family_of_run(run) == "vae"
    except GfnemError:
        return False


def is_image_data(path: Optional[Path]) -> bool:
    """True for a folder whose manifest.json is an image set's (kind shapes or mnist)."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") in IMAGE_KINDS


def _check_png(out: Optional[Path]) -> Path:
    from gfnem_cli.engine.files import check_output_file

    if out is None:
        raise GfnemError("an image run writes its samples as a PNG: give --out FILE.png")
    if Path(out).suffix.lower() != ".png":
        raise GfnemError("--out must name a .png file", out)
    check_output_file(out)
    return Path(out)


def _load(run: Path, checkpoint: str, device: str):
    from gfnem_cli import families

    return families.for_run(run).load_run(run, device, checkpoint, on_warning=warn)


def _split_images(data: Path, split: str):
    from vae.data import load_image_set

    images = load_image_set(data)
    return images, images.images(split)


def sample_images(run: Path, n: int, input: Optional[Path], split: str, out: Optional[Path],
                  per_image: int, seed: int, checkpoint: str, device: str) -> None:
    """A PNG of decoder means of prior samples, or of inputs beside reconstructions."""
    import torch

    from vae.evaluation.images import save_grid
    from vae.inference import prior_means, reconstructions

    at_least("-n", n, 1)
    at_least("--per-image", per_image, 1)
    checkpoint_name(checkpoint)
    out = _check_png(out)
    trained = _load(run, checkpoint, device)
    if input is None:
        save_grid(prior_means(trained, n, seed), out, columns=8)
        console.print(f"wrote {n} prior samples (decoder means) to {out}", highlight=False)
        return
    data, images = _split_images(input, split)
    _check_shape(trained, data)
    images = images[:n]
    recon = reconstructions(trained, images, per_image, seed).cpu()
    rows = [images.float().unsqueeze(1), recon]          # each row: the input, then draws
    save_grid(torch.cat(rows, 1).flatten(0, 1), out, columns=per_image + 1)
    console.print(f"wrote {images.shape[0]} {split} images beside {per_image} reconstructions "
                  f"each (posterior samples) to {out}", highlight=False)


def _check_shape(trained, data) -> None:
    if tuple(data.image_shape) != tuple(trained.model.image_shape):
        raise GfnemError(f"images are {tuple(data.image_shape)} but the run was trained on "
                         f"{tuple(trained.model.image_shape)}", data.path)


def parse_images(run: Path, input: Path, split: str, out: Path, samples: int,
                 batch_size: int, seed: int, checkpoint: str, device: str) -> None:
    """codes.jsonl: per image its best sampled code grid, log p(x, z) and log q(z | x).
    Under torchrun the images' batches are shared over the ranks; rank 0 writes."""
    from gfnem_cli.engine.files import check_output_file, write_text_atomic
    from vae.inference import best_codes

    at_least("--samples", samples, 1)
    at_least("--batch-size", batch_size, 1)
    checkpoint_name(checkpoint)
    check_output_file(out)
    world = _join_torchrun(device)       # under torchrun: the images shared over the ranks
    trained = _load(run, checkpoint, device)
    data, images = _split_images(input, split)
    _check_shape(trained, data)
    with work_progress("encoding", images.shape[0]) as advance:
        codes, joint, lq = best_codes(trained, images, samples, batch_size, seed,
                                      progress=advance)
    if not world.is_main:                 # rank 0 writes
        return
    lines = [json.dumps({"index": i, "codes": c, "log_joint": round(j, 4), "log_q": round(q, 4)})
             for i, (c, j, q) in enumerate(zip(codes.tolist(), joint.tolist(), lq.tolist()))]
    write_text_atomic(out, "".join(line + "\n" for line in lines))
    console.print(f"wrote {len(lines)} code grids (best of {samples} samples by log p(x, z)) "
                  f"to {out}", highlight=False)


def _join_torchrun(device: str):
    from gfnem_cli.engine import distributed
    from gfnem_cli.engine.runs import resolve_device

    return distributed.join_if_launched(resolve_device(device))


def evaluate_images(run: Optional[Path], data: Path, split: str, samples: int,
                    json_out: Optional[Path], seed: int, checkpoint: str, batch_size: int,
                    device: str, max_images: int = 0) -> None:
    """Test NLL of an image run (importance sampling), and the true NLL of shapes."""
    from gfnem_cli.engine.files import check_output_file, write_text_atomic
    from gfnem_cli.engine.provenance import provenance
    from vae.inference import run_nll

    if run is None:
        raise GfnemError("an image set is evaluated with a trained RUN",
                         hint="gfnem evaluate RUN --data DIR")
    if not is_image_run(run):
        raise GfnemError("an image set is evaluated with an image run (family vae); this run "
                         "is not one", run, hint="give a corpus with --data for a grammar run")
    if not is_image_data(data):
        raise GfnemError("an image run is evaluated on a prepared image set", data,
                         hint="create one with `gfnem prepare shapes` or `gfnem prepare mnist`")
    at_least("--samples", samples, 0, f"0 means M={DEFAULT_SAMPLES}")
    at_least("--batch-size", batch_size, 1)
    at_least("--max-images", max_images, 0, "0 evaluates every image")
    checkpoint_name(checkpoint)
    if json_out is not None:
        check_output_file(json_out)
    samples = samples or DEFAULT_SAMPLES
    world = _join_torchrun(device)       # under torchrun: the images shared over the ranks
    trained = _load(run, checkpoint, device)
    images_set, images = _split_images(data, split)
    _check_shape(trained, images_set)
    split_size = images.shape[0]
    if max_images:
        images = images[:max_images]
    with work_progress(f"NLL (M={samples})", images.shape[0]) as advance:
        figures = run_nll(trained, images, samples, batch_size, seed,
                          progress=advance if world.is_main else None)
    if not world.is_main:                 # rank 0 reports and writes
        return
    true_nll = images_set.true_nll(split, images.shape[0])
    if true_nll is not None:
        true_nll, figures["true_nll_stderr"] = true_nll
        figures["true_nll"] = true_nll
    if images_set.fingerprint != trained.manifest.get("fingerprint"):
        warn(f"{data} is not the set the run was trained on")
    kind = "bound" if figures["nll_is_bound"] else "exact"
    text = (f"NLL {figures['nll_nats']:.3f} ± {figures['nll_stderr']:.3f} nats/image "
            f"({kind}, {figures['nll_method']}), {figures['bits_per_dim']:.4f} bits/pixel, "
            f"{figures['num_images']:,} {split} images"
            + (f" (the first of {split_size:,})" if figures["num_images"] < split_size else ""))
    for m in (1, 100):
        if f"nll_nats_m{m}" in figures and m != figures["samples"]:
            text += f"\n  M={m}: {figures[f'nll_nats_m{m}']:.3f} ± {figures[f'nll_stderr_m{m}']:.3f}"
    if true_nll is not None:
        text += f"\ntrue NLL (generating model) {true_nll:.3f} nats/image"
    console.print(text, highlight=False)
    if json_out is not None:
        payload = {**figures, "method": trained.method, "run": str(run),
                   "checkpoint_step": trained.step, "data": str(data), "split": split,
                   "fingerprint": images_set.fingerprint, "seed": seed,
                   "split_images": split_size, **provenance()}
        write_text_atomic(json_out, json.dumps(payload, indent=2) + "\n")
