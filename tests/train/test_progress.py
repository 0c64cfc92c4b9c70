"""Progress lines: the ETA follows the step rate, and a time budget caps it."""

from __future__ import annotations

import time

from train.progress import ProgressReport


def _line(capsys, deadline):
    report = ProgressReport("lines", 100, 0, "train", deadline=deadline)
    report.t0 = time.time() - 50.0  # 10 steps took 50 s: 450 s to go at this rate
    report.update(10, 0.5, 100.0, {})
    return capsys.readouterr().err.strip()


def test_eta_follows_the_step_rate(capsys):
    line = _line(capsys, None)
    assert "step 10/100" in line and "eta 7m30s" in line and "time budget" not in line


def test_a_time_budget_caps_the_eta(capsys):
    line = _line(capsys, time.time() + 120.0)
    assert "(time budget)" in line
    assert "eta 2m00s" in line or "eta 1m59s" in line, line
