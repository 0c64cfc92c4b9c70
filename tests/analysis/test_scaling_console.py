"""analysis scaling is quiet on the terminal: one line per fit and one line for
all the laws it could not fit (their reasons are in report.md)."""

from __future__ import annotations

from analysis.scaling.analyse import analyse
from analysis.scaling.load import load_study
from analysis.scaling.report import summary_lines
from analysis.scaling.types import Settings
from tests.analysis.scaling_synth import make_study


def test_laws_not_fitted_are_one_line(tmp_path):
    make_study(tmp_path, {"pet-direct": {"E": 0.3, "B": 1.0, "beta": 0.3},
                          "pet-conservative": {"E": 0.2, "B": 1.0, "beta": 0.3}},
               [5e3], [2e3, 4e3], noise=0.0)
    an = analyse(load_study(tmp_path), Settings(num_bootstrap=10, loo_bootstrap=5, workers=1),
                 ["val/forces_mae", "val/energy_per_atom_mae"])
    assert len(an.skipped) >= 8  # L(N), L(N, D), L(C) of two families and two metrics
    lines = summary_lines(an)
    skipped = [ln for ln in lines if "fitted" in ln and "report.md" in ln]
    assert len(skipped) == 1 and len(lines) == 1 + len(list(an.entries())) + 1
    assert skipped[0].startswith(f"not fitted ({len(an.skipped)}, why: report.md, Not fitted): ")
    assert "pet-direct L(N)" in skipped[0] and "pet-conservative L(N)" in skipped[0]
    assert skipped[0].count("pet-direct") == 1
