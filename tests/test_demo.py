"""`make demo` (scripts/demo.sh) end to end with shortened training: every step runs, the
summary table has both grammar learners, right-branching, the true grammar and the image NLL,
and the PNGs exist. The full-length figures are in RESULTS.md ("The demo")."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_runs_end_to_end_and_prints_its_summary(tmp_path):
    env = {**os.environ, "DEMO_OUT": str(tmp_path / "demo"), "DEMO_STEPS": "12",
           "DEMO_GFNEM_STEPS": "6", "DEMO_IMAGE_STEPS": "6", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("== 8. summary"):]
    for row in ("N-PCFG, exact marginal", "N-PCFG, GFlowNet-EM", "right-branching",
                "the true grammar", "image NLL:"):
        assert row in summary, summary
    out = tmp_path / "demo"
    for name in ("model.json", "gfnem.json", "shapes-nll.json", "shapes-samples.png",
                 "shapes-recon.png", "test-parses.txt"):
        assert (out / name).stat().st_size > 0, name
