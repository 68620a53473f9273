"""`gfnem --version` says which gfnem (and which commit) is running, without importing torch."""
from __future__ import annotations

import subprocess
import sys


def test_version_names_the_package_and_the_commit(runner, cli_app):
    from gfnem_cli.engine.provenance import gfnem_version, source_commit

    result = runner.invoke(cli_app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"gfnem {gfnem_version()}")
    commit = source_commit()
    if commit:                       # a git checkout (CI clones one)
        assert commit in result.output


def test_version_does_not_import_torch():
    code = ("import sys; from gfnem_cli.app import app\n"
            "try:\n    app(['--version'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr
