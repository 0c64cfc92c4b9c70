"""`python -m train`: one-line config errors with the closest name; --help lists the
groups, their choices (read from configs/) and the contract overrides with units."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.__main__ import group_choices, main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("override", "expected"), [
    ("size=huge", "size=huge: no such choice in configs/size/; choose one of: tiny, mini, xxs"),
    ("forces=directt", "(did you mean 'direct'?)"),
    ("experiment=stage1", "(did you mean 'stage1-direct'?)"),
    ("trainr.max_steps=3", "(did you mean 'trainer'?)"),
    ("trainer.max_stepz=3", "(did you mean 'trainer.max_steps'?)"),
    ("trainer.max_steps=abc", "trainer.max_steps=abc: expected int or null, got 'abc'"),
])
def test_config_errors_are_one_line(override, expected, capsys, monkeypatch):
    monkeypatch.delenv("MLIP_DEBUG", raising=False)
    assert main([override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("config error: "), err
    assert expected in err
    assert "search path" not in err


def test_debug_shows_hydras_full_text():
    env = {**os.environ, "MLIP_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "train", "size=huge"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("config error: size=huge: no such choice")
    assert "Config search path:" in proc.stderr


def test_help_lists_groups_choices_and_contract(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for group in ("model", "size", "forces", "optim", "schedule", "engine", "logger",
                  "experiment", "data"):
        (line,) = [ln for ln in text.splitlines() if ln.startswith(f"  {group} ")]
        on_disk = {p.stem for p in (REPO / "configs" / group).glob("*.yaml")}
        assert {c.rstrip("*") for c in line.split()[1:] if c != "(default:" and c != "none)"} \
            >= on_disk, group
    assert "pet*" in text and "tiny*" in text and "wandb-offline*" in text
    for key in ("data.root=", "trainer.max_steps=", "trainer.checkpoint_every=",
                "schedule.total_steps=", "run_dir=", "seed=", "logger=",
                "model.knobs.KEY=VALUE"):
        assert key in text, key
    assert "(A)" in text and "atoms per batch" in text  # units


def test_sizes_in_ladder_order():
    sizes = group_choices("size")
    assert sizes[:3] == ["tiny", "mini", "xxs"]
    widths = [s for s in sizes if s.startswith("w")]
    assert widths == sorted(widths, key=lambda s: int(s[1:]))


def test_finished_line_gives_each_validation_error_its_unit():
    from train.__main__ import finished_line

    line = finished_line({
        "status": "finished", "steps": 400, "val/energy_per_atom_mae": 0.03489,
        "val/forces_mae": 0.1388, "val/stress_mae": 0.005391, "val/forces_rmse": 0.2,
        "val/mptrj/forces_mae": 0.2, "val/direct_forces_mae": 0.15,
    })
    assert line == (
        "finished: val/energy_per_atom_mae=0.03489 eV/atom, val/forces_mae=0.1388 eV/A, "
        "val/stress_mae=0.005391 eV/A^3, val/mptrj/forces_mae=0.2 eV/A, "
        "val/direct_forces_mae=0.15 eV/A"
    )
