"""Shared fixtures: the real PTB sample beside the repo, a tiny in-repo treebank, a CLI runner."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PTB_SAMPLE = REPO.parent / "shared" / "data" / "ptb-sample"

# Every protocol corner in six trees: a comment, the empty outer bracket, function tags, a
# trace whose constituent empties, a multi-line tree, a 2-word and a 1-word sentence, a unary
# chain at the root, digits, and a tree left with no words at all.
TINY_TREEBANK = """\
# a comment line between trees
( (S (NP-SBJ-1 (DT The) (NN dog)) (VP (VBD barked) (NP (-NONE- *T*-1))) (. .)) )
( (S (NP-SBJ (PRP He))
     (VP (VBD left))) )
( (FRAG (INTJ (UH Hello)) (. !)) )
(ROOT (S (NP (DT the) (NNS cats))))
( (S (NP-SBJ (CD 1,000) (NNS Dollars)) (VP (VBD fell) (PP-CLR (IN in) (NP (CD 1999))))) )
( (X (, ,) (-NONE- *)) )
"""


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests run tiny tensors, where intra-op threads only add contention (OpenMP stalls
    of 10-20x were seen on a shared 2-core machine); restored after the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ptb_sample() -> Path:
    """The 199-file PTB sample at `<repo>/../shared/data/ptb-sample`, or skip."""
    if not PTB_SAMPLE.is_dir():
        pytest.skip(f"shared PTB sample not found at {PTB_SAMPLE}")
    return PTB_SAMPLE


@pytest.fixture
def tiny_treebank() -> str:
    return TINY_TREEBANK


@pytest.fixture
def tiny_mrg(tmp_path: Path) -> Path:
    """The tiny treebank written as one `.mrg` file."""
    path = tmp_path / "tiny.mrg"
    path.write_text(TINY_TREEBANK, encoding="utf-8")
    return path


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="session")
def cli_app():
    from gfnem_cli.app import app

    return app


@pytest.fixture(scope="session")
def ptb_sample_none(ptb_sample: Path, tmp_path_factory) -> Path:
    """The PTB sample prepared once per session with `--split none` (one split, `test`)."""
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    out = tmp_path_factory.mktemp("ptb") / "none"
    result = CliRunner().invoke(app, ["prepare", "ptb", str(ptb_sample), "--out", str(out),
                                      "--split", "none"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory):
    """`make(sentences, max_length)`: a `gfnem prepare synthetic` corpus, drawn once a session
    for each size and shared read-only by the tests that train on it."""
    from typer.testing import CliRunner

    from gfnem_cli.app import app

    made: dict[tuple[int, int], Path] = {}

    def make(sentences: int = 60, max_length: int = 8) -> Path:
        if (sentences, max_length) not in made:
            out = tmp_path_factory.mktemp("synthetic") / "data"
            done = CliRunner().invoke(app, ["prepare", "synthetic", "--out", str(out),
                                            "--num-sentences", str(sentences),
                                            "--max-length", str(max_length)])
            assert done.exit_code == 0, done.output
            made[sentences, max_length] = out
        return made[sentences, max_length]

    return make
