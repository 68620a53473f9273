"""Images per second of the discrete-VAE methods (issue 12): training steps and the NLL estimate.

28×28 binary images from the embedded shapes model (`vae.data.shapes.ShapesModel`, seed 0; no
data on disk), 4×4 grid, K = 4, D = 1, uniform prior, at two sizes: `small` (channels 32,
batch 32, as recipes/shapes-dvae-gfnem.yaml) and `paper` (channels 128, batch 128, as
recipes/mnist-*-k4.yaml). Every method is built as `gfnem train` builds it
(`vae.training.em_methods.build_vae` / `build_method` on a deep copy of `VAE_DEFAULTS` with
the recipes' overrides: sampler and encoder channels = model channels, 4 trajectories per
image, sleep weight 0.3, the M-step on the E-step's grids, gate open). On CPU:

  training  per method, one `train_step` (optimizer steps included) of gfnem-raster,
            gfnem-any, vqvae, gumbel, reinforce (exact_em does not enumerate a 4×4 grid);
            for GFlowNet-EM also its two halves, timed alone: `estep` = E-step loss + sleep
            loss + backward (φ's work), `mstep` = the M-step's draw (the E-step's grids) +
            log p_θ(x, z) + backward (θ's work)
  nll       `importance_sampled_nll` at M = --nll-samples (5000) on --nll-images images, with
            the GFlowNet proposals (raster, any order) and a factorized encoder proposal
            (`FactorizedProposal` on the Gumbel-softmax method's encoder)

Reference (the floor of each figure, timed in the same interleaved rounds): the decoder's own
`log_likelihood` on the same number of (image, grid) rows a candidate decodes, forward and
backward for training (B·4 rows for gfnem and reinforce, B for vqvae and gumbel), forward
only under no_grad, in the estimate's chunks, for the NLL (images·M rows). Each figure is
printed as images/s (from the median) and as a multiple of its reference's median (and of
the minima). The shared protocol (`harness.py`): threads pinned (--threads, default 1), one
warm-up each (the NLL's: one chunk of 256 draws), --repeats (≥ 3) interleaved rotated rounds,
load before/after with a warning above the cores in use, one `BENCH-ROW` per (size, part).
Untrained parameters: the cost does not depend on them. Never a timed test.

    python tests/benchmarks/bench_images.py [--sizes small paper] [--repeats 3]
        [--nll-samples 5000] [--nll-images 2] [--threads 1] [--quick] [--json rows.jsonl]
        [--cprofile]

--quick (or GFNEM_BENCH_QUICK=1): the small size only, M = 100 on 2 images, 5 repeats: about
15 s on one core. The full run (both sizes, M = 5000) takes roughly 7 minutes on one core.
--cprofile: a cProfile summary of one gfnem-raster train_step at the first size, with the
number of `GridPolicy.features` calls (16 per rollout, whatever the batch: no image loop).
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.set_thread_env(harness.threads_from_argv())
if str(harness.REPO) not in sys.path:
    sys.path.insert(0, str(harness.REPO))

import torch  # noqa: E402

from vae.data.batching import ImageBatch  # noqa: E402
from vae.data.shapes import ShapesModel  # noqa: E402
from vae.evaluation.likelihood import importance_sampled_nll  # noqa: E402
from vae.inference.proposals import FactorizedProposal  # noqa: E402
from vae.recipe import VAE_DEFAULTS  # noqa: E402
from vae.training.em_methods import build_method, build_vae  # noqa: E402

SIZES = {"small": 32, "paper": 128}          # channels = batch size
METHODS = ("gfnem-raster", "gfnem-any", "vqvae", "gumbel", "reinforce")
NLL_PROPOSALS = ("gfnem-raster", "gfnem-any", "factorized")
NLL_CHUNK = 256                              # importance_sampled_nll's default chunk
QUICK = dict(sizes=["small"], nll_samples=100, nll_images=2, repeats=5)
CPU = torch.device("cpu")


def recipe(method: str, width: int) -> dict:
    """VAE_DEFAULTS with the recipes' overrides, at `width` channels and batch `width`."""
    config = copy.deepcopy(VAE_DEFAULTS)
    name, _, order = method.partition("-")
    config["method"] = name
    config["model"].update(grid=[4, 4], num_codes=4, embedding_dim=1, channels=width,
                           prior="uniform")
    config["sampler"].update(order=order or "raster", channels=width, samples_per_input=4)
    config["em"].update(sleep_weight=0.3, sleep_period=1, mstep_reuse_samples=True)
    config["baseline"]["encoder_channels"] = width
    config["train"]["batch_size"] = width
    return config


def grids_per_image(config: dict) -> int:
    """How many grids per image a training step decodes with gradients (its M-step's rows)."""
    if config["method"] == "gfnem":
        em = config["em"]
        return config["sampler"]["samples_per_input"] if em["mstep_reuse_samples"] \
            else em["mstep_samples"]
    if config["method"] == "reinforce":
        return config["baseline"]["samples"]
    return config["baseline"]["gumbel_samples"] if config["method"] == "gumbel" else 1


def build(method: str, width: int, image_shape) -> tuple[object, dict]:
    config = recipe(method, width)
    torch.manual_seed(config["train"]["seed"])
    model = build_vae(config, image_shape)
    return build_method(config, model, [], CPU), config


def zero_grads(loop) -> None:
    for module in loop.modules.values():
        module.zero_grad(set_to_none=True)


def gfnem_halves(loop, batch: ImageBatch):
    """(E-step, M-step) of an EMLoop as `EMLoop.train_step` runs them, without the steps."""
    estep, family = loop.estep, loop.family

    def e_half():
        loss, _, _ = estep.loss(batch)
        loss.backward()
        sleep, _ = estep.sleep_loss(batch, 0)
        sleep.backward()
        zero_grads(loop)

    def m_half():
        draw = estep.draw(batch, loop.options.mstep_samples, loop.options.importance_weighted)
        (-family.log_joint(batch, draw.z, draw.n).mean()).backward()
        zero_grads(loop)
    return e_half, m_half


def decoder_reference(decoder, images: torch.Tensor, rows: int, backward: bool,
                      chunk_rows: int | None = None):
    """The decoder's log-likelihood on `rows` (image, grid) rows: forward + backward, or
    forward only under no_grad in chunks of `chunk_rows` (as the NLL estimate scores them)."""
    g = torch.Generator().manual_seed(1)
    x = images.repeat_interleave(-(-rows // images.shape[0]), 0)[:rows]
    codes = torch.randint(0, decoder.num_codes, (rows, *decoder.grid), generator=g)

    def fwd_bwd():
        (-decoder.log_likelihood(x, codes).mean()).backward()
        decoder.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward():
        for start in range(0, rows, chunk_rows):
            decoder.log_likelihood(x[start:start + chunk_rows], codes[start:start + chunk_rows])
    return fwd_bwd if backward else forward


def report(timing: dict, images: dict[str, int], refs: dict[str, str]) -> dict:
    """Per candidate: images/s and the multiple of its reference (medians, minima)."""
    st, out = timing["stats"], {}
    for name, s in st.items():
        fig = {"images": images[name], "images_per_s_median": images[name] / s["median_s"],
               "images_per_s_best": images[name] / s["min_s"], "median_s": s["median_s"]}
        if name in refs:
            r = st[refs[name]]
            fig.update(reference=refs[name], x_reference_median=s["median_s"] / r["median_s"],
                       x_reference_min=s["min_s"] / r["min_s"])
        out[name] = fig
        ref = (f"{fig['x_reference_median']:6.2f}x {refs[name]} (mins "
               f"{fig['x_reference_min']:.2f}x)") if name in refs else "(reference)"
        print(f"  {name:26s} {fig['images_per_s_median']:9.1f} images/s  "
              f"{s['median_s'] * 1e3:9.1f} ms  {ref}", flush=True)
    return out


def bench_size(size: str, args, pool: torch.Tensor, threads: dict) -> list[dict]:
    width = SIZES[size]
    batch = ImageBatch(pool[:width], torch.arange(width))
    loops, configs = {}, {}
    for method in METHODS:
        loops[method], configs[method] = build(method, width, tuple(pool.shape[1:]))
    decoder = build_vae(recipe("gumbel", width), tuple(pool.shape[1:])).decoder

    # ---------------------------------------------------------------- training steps
    fns, images, refs = {}, {}, {}
    for r in sorted({width * grids_per_image(c) for c in configs.values()}):
        fns[f"decoder fwd+bwd@{r}"] = decoder_reference(decoder, batch.images, r, True)
        images[f"decoder fwd+bwd@{r}"] = width
    for method, loop in loops.items():
        ref = f"decoder fwd+bwd@{width * grids_per_image(configs[method])}"
        fns[f"{method} step"] = lambda loop=loop: loop.train_step(batch)
        if method.startswith("gfnem"):
            fns[f"{method} estep"], fns[f"{method} mstep"] = gfnem_halves(loop, batch)
        for name in [k for k in fns if k.startswith(method + " ")]:
            images[name], refs[name] = width, ref
    print(f"{size}: channels {width}, batch {width}, 28x28, grid 4x4, K=4; training "
          f"(one step each), threads {threads['intra_op_threads']}, {args.repeats} interleaved "
          f"repeats; load {harness.load()}", flush=True)
    timing = harness.interleaved(fns, args.repeats, warmup=1, cores_in_use=args.threads,
                                 label=f"images {size} training")
    rows = [{"bench": "images", "part": "training", "size": size, "channels": width,
             "batch": width, "quick": args.quick, **threads, **timing,
             "figures": report(timing, images, refs)}]

    # ---------------------------------------------------------------- NLL estimate
    n_img, m = args.nll_images, args.nll_samples
    nll_batch = [ImageBatch(pool[:n_img], torch.arange(n_img))]
    gumbel = loops["gumbel"]
    proposals = {"gfnem-raster": (loops["gfnem-raster"].modules["model"],
                                  loops["gfnem-raster"].modules["sampler"]),
                 "gfnem-any": (loops["gfnem-any"].modules["model"],
                               loops["gfnem-any"].modules["sampler"]),
                 "factorized": (gumbel.vae, FactorizedProposal(gumbel.vae,
                                                               gumbel.modules["encoder"]))}
    ref = f"decoder forward@{n_img * m}"
    fns = {ref: decoder_reference(decoder, nll_batch[0].images, n_img * m, False,
                                  n_img * NLL_CHUNK)}
    warm = {ref: decoder_reference(decoder, nll_batch[0].images, n_img * min(m, NLL_CHUNK),
                                   False, n_img * NLL_CHUNK)}
    for name in NLL_PROPOSALS:
        model, proposal = proposals[name]
        for target, samples in ((fns, m), (warm, min(m, NLL_CHUNK))):
            target[f"nll {name} M={m}"] = (lambda model=model, proposal=proposal, samples=samples:
                                        importance_sampled_nll(model, proposal, nll_batch,
                                                               samples, also=()))
    print(f"{size}: importance-sampled NLL, M = {m}, {n_img} images; load {harness.load()}",
          flush=True)
    timing = harness.interleaved(fns, args.repeats, warmup=1, cores_in_use=args.threads,
                                 label=f"images {size} nll", warm=warm)
    figures = report(timing, dict.fromkeys(fns, n_img), {k: ref for k in fns if k != ref})
    rows.append({"bench": "images", "part": "nll", "size": size, "channels": width,
                 "nll_samples": m, "nll_images": n_img, "quick": args.quick, **threads,
                 **timing, "figures": figures})
    return rows


def profile_step(size: str, pool: torch.Tensor, rows: int) -> None:
    """cProfile of one gfnem-raster train_step (after one warm-up), Python side."""
    width = SIZES[size]
    loop, _ = build("gfnem-raster", width, tuple(pool.shape[1:]))
    batch = ImageBatch(pool[:width], torch.arange(width))
    loop.train_step(batch)
    prof = cProfile.Profile()
    prof.enable()
    loop.train_step(batch)
    prof.disable()
    stats = pstats.Stats(prof)
    calls = sum(v[1] for (path, _, fn), v in stats.stats.items()
                if fn == "features" and path.endswith("policy.py"))
    print(f"=== cProfile: one gfnem-raster train_step at {size} (batch {width}): "
          f"GridPolicy.features called {calls} times (a rollout is 16 calls)")
    stats.sort_stats("cumulative").print_stats(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nll-samples", type=int, default=5000, help="M of the NLL estimate")
    p.add_argument("--nll-images", type=int, default=2, help="images of the NLL estimate")
    p.add_argument("--threads", type=harness.thread_count, default=harness.default_threads(),
                   help="every thread pool")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="append the rows to this JSON-lines file")
    p.add_argument("--cprofile", action="store_true", help="also profile one gfnem step")
    p.add_argument("--rows", type=int, default=25, help="rows of the cProfile summary")
    args = p.parse_args(argv)
    if harness.quick_mode(args.quick):
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
        args.quick = True
    threads = harness.pin_threads(args.threads)
    count = max([SIZES[s] for s in args.sizes] + [args.nll_images])
    pool, _ = ShapesModel().sample(count, torch.Generator().manual_seed(0))
    for size in args.sizes:
        for row in bench_size(size, args, pool, threads):
            harness.emit(row, args.json)
    if args.cprofile:
        profile_step(args.sizes[0], pool, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
