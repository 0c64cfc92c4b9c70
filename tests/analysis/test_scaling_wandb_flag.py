"""`analysis scaling` touches W&B only when asked (--wandb), and is quiet otherwise."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from analysis.scaling import report
from analysis.scaling.command import main
from tests.analysis.scaling_synth import law


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "published.csv"
    rng = np.random.default_rng(3)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["family", "num_params", "structures_seen", "forces_mae"])
        for n in np.geomspace(4.5e6, 7.3e8, 6):
            value = law(n, 1, E=0.04, A=20.0, alpha=0.4) * np.exp(rng.normal(0, 0.003))
            w.writerow(["pet", f"{n:.4g}", "1.1e8", f"{value:.6g}"])
    return path


@pytest.mark.parametrize(("flag", "mode"), [([], "off"), (["--wandb"], "auto"),
                                            (["--wandb", "offline"], "offline")])
def test_wandb_only_when_asked(table, tmp_path, monkeypatch, capsys, flag, mode):
    seen = []

    def target(an, got_mode, *args):
        seen.append(got_mode)
        return None if got_mode == "off" else {"mode": got_mode}

    uploads = []
    monkeypatch.setattr(report, "wandb_target", target)
    monkeypatch.setattr(report, "upload_wandb", lambda an, out, **kw: uploads.append(kw))
    args = [str(table), "--out", str(tmp_path / "r"), "--law", "N", "--bootstrap", "20",
            "--workers", "1", "--no-figures", *flag]
    assert main(args) == 0
    assert seen == [mode]
    assert uploads == ([] if mode == "off" else [{"mode": mode}])
    if not flag:
        out = capsys.readouterr().out
        assert "W&B" not in out and "wandb:" not in out  # wandb's own lines start so
