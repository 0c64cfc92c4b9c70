"""An in-process sweep shows a progress bar on a terminal only: redirected to a
file (or in a SLURM log) its runs print periodic lines."""

from __future__ import annotations

import train.run
from slurm.task import train_once
from train.progress import resolve_mode


def _mode_of(monkeypatch, tmp_path, progress: bool) -> str:
    seen = {}

    def fake_run(cfg):
        seen["mode"] = cfg.trainer.progress
        return {"status": "finished"}

    monkeypatch.setattr(train.run, "run", fake_run)
    overrides = ["data.root=unused", "model=pet", "size=tiny", "logger=none",
                 f"run_dir={tmp_path / 'run'}"]
    assert train_once(overrides, tmp_path, progress=progress) == {"status": "finished"}
    return seen["mode"]


def test_sweep_progress_is_a_bar_only_on_a_terminal(monkeypatch, tmp_path):
    mode = _mode_of(monkeypatch, tmp_path, progress=True)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert resolve_mode(mode) == "lines"
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert resolve_mode(mode) == "bar"
    assert resolve_mode(_mode_of(monkeypatch, tmp_path, progress=False)) == "lines"
