"""tests/benchmarks/recovery_floor.py: a tabular PCFG started at the true grammar scores
(nearly) the true grammar's NLL and F1, one started at random does not, and bad arguments
are refused with argparse's exit 2."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import recovery_floor  # noqa: E402


def test_tabular_params_are_normalized():
    g = torch.Generator().manual_seed(0)
    logits = {"roots": torch.randn(3, generator=g), "rules": torch.randn(3, 7, 7, generator=g),
              "emissions": torch.randn(4, 11, generator=g)}
    ids, lengths = torch.tensor([[1, 5, 10], [2, 3, 0]]), torch.tensor([3, 2])
    p = recovery_floor.tabular_params(logits, ids, lengths)
    assert torch.allclose(p.roots.exp().sum(-1), torch.ones(2))
    assert torch.allclose(p.rules.exp().sum((-1, -2)), torch.ones(2, 3))
    emit = torch.log_softmax(logits["emissions"], -1)
    assert torch.equal(p.terms[0, 2], emit[:, 10]) and p.terms.shape == (2, 3, 4)


def test_the_truth_start_scores_the_true_grammar_and_a_random_start_does_not(
        synthetic_corpus, tmp_path, capsys):
    data = synthetic_corpus(200, 8)
    out = tmp_path / "floor.csv"
    assert recovery_floor.main(["--data", str(data), "--steps", "2", "--seeds", "1",
                                "--eval-every", "1", "--csv", str(out)]) == 0
    rows = {r["start"]: r for r in csv.DictReader(out.open())}
    truth, rand = rows["truth"], rows["random"]
    # the 2% uniform mixture costs about 0.035 nats/token (~1%) over the true grammar
    assert abs(float(truth["test_gap_pct"])) < 2.5 and float(truth["test_f1"]) > 85
    assert float(rand["test_gap_pct"]) > 10 and float(rand["test_f1"]) < float(truth["test_f1"])
    assert "true grammar test NLL/token" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--sizes", "40by60"], ["--steps", "0"], ["--lr", "-1"],
                                  ["--lr", "inf"], ["--csv", "/nonexistent/dir/floor.csv"],
                                  ["--sizes", "0x5"]])
def test_bad_arguments_exit_2(synthetic_corpus, argv):
    with pytest.raises(SystemExit) as exc:
        recovery_floor.main(["--data", str(synthetic_corpus(60, 8)), *argv])
    assert exc.value.code == 2


def test_a_corpus_without_a_true_grammar_is_refused(tmp_path):
    with pytest.raises(SystemExit) as exc:
        recovery_floor.main(["--data", str(tmp_path / "missing")])
    assert exc.value.code == 2
