"""Packaging for gfnem: the packages gfnem_cli, grammars, vae and the `gfnem` console script."""
from setuptools import find_packages, setup

setup(
    name="gfnem",
    version="0.1.0",
    description="GFlowNet-EM for grammar induction and discrete latent-variable models",
    python_requires=">=3.10",
    packages=find_packages(include=["gfnem_cli", "gfnem_cli.*", "grammars", "grammars.*", "vae", "vae.*"]),
    # torch is deliberately unpinned here: the Makefile installs the CPU build 2.13.0 when no
    # torch is present, and otherwise the user's own (CUDA) build is kept.
    install_requires=[
        "torch",
        "typer>=0.12",
        "rich>=13",
        "datasets>=2.18",
        "pyyaml>=6",
        "numpy",
        "matplotlib>=3.6",     # `gfnem plot` draws training curves with it
    ],
    extras_require={
        # train.logger: tensorboard (RUN/tensorboard/); without it such a run is refused
        "tensorboard": ["tensorboard"],
        # train.logger: wandb (offline in RUN/wandb/ unless WANDB_MODE=online)
        "wandb": ["wandb"],
        # tensorboard, wandb: the loggers' tests read what they wrote back with each tool's own
        # reader (TensorBoard's EventAccumulator, `wandb leet inspect --json`)
        "test": ["pytest>=8", "torch-struct==0.5", "hypothesis>=6.100", "tensorboard",
                 "wandb>=0.22"],
    },
    entry_points={"console_scripts": ["gfnem=gfnem_cli.app:main"]},
)
