"""The README's `pipe:` data root, typed into a shell exactly as shown, trains
(with `cat` standing in for `aws s3 cp`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.train.conftest import REPO


def test_pipe_root_as_typed_in_the_readme(emt_shards, tmp_path):
    readme = (REPO / "README.md").read_text()
    shown = "'data.root=\"pipe:aws s3 cp s3://bucket/ds/{path} -\"'"
    assert shown in readme  # the form below is the one users read
    typed = shown.replace("aws s3 cp s3://bucket/ds/{path} -", f"cat {emt_shards}/{{path}}")
    run_dir = tmp_path / "run"
    line = (f"{sys.executable} -m train {typed} model=pet size=tiny trainer.max_steps=2 "
            f"trainer.val_every=0 logger=none engine=torch data.max_atoms=64 run_dir={run_dir}")
    proc = subprocess.run(line, shell=True, cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["data"]["root"].startswith("pipe:cat ")
