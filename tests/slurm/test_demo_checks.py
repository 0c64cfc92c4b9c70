"""The demo's target checks read a study's summaries and fits and say met or missed."""

from __future__ import annotations

import json
import shutil

from slurm.demo_checks import checks, lines


def _summary(root, name, family, size, n, atoms, energy, verdict, tune=None, role="cooldown"):
    run = root / "runs" / name
    run.mkdir(parents=True)
    s = {
        "run_name": name,
        "status": "finished",
        "family": family,
        "size": size,
        "num_params": 2 * n,
        "num_params_non_embedding": n,
        "atoms_seen": atoms,
        "budget": {"role": role},
        "val/energy_per_atom_mae": energy,
        "baseline": {"energy_per_atom_mae": 0.1},
        "convergence": {"verdict": verdict},
    }
    if tune:
        s["tune"] = tune
    (run / "summary.json").write_text(json.dumps(s))


def _fits(root, alpha_ci, beta_ci, tuned=None):
    fam = {
        "val/forces_mae": {
            "ND": {
                "params": {
                    "alpha": {"value": 0.3, "ci": alpha_ci},
                    "beta": {"value": 0.5, "ci": beta_ci},
                }
            }
        }
    }
    report = {
        "fits": {"pet-direct": fam},
        "equal_compute": [
            {
                "metric": "val/forces_mae",
                "law": "C",
                "status": "ok",
                "unconstrained": "pet-direct",
                "constrained": "mace",
                "ratio_unconstrained_over_constrained": [0.5, 0.8],
                "crossover": {"value": None},
            }
        ],
        "tuned": tuned or {},
    }
    (root / "report").mkdir()
    (root / "report" / "fits.json").write_text(json.dumps(report))


def _by_check(rows):
    return {r["check"]: r for r in rows}


def test_all_met(tmp_path):
    for i, n in enumerate((1_000, 4_000, 10_000, 20_000)):
        for k, atoms in enumerate((1e4, 2e4, 4e4)):
            _summary(tmp_path, f"w{i}_cd{k}", "pet-direct", f"w{i}", n, atoms, 0.02, "converged")
    _summary(tmp_path, "w0", "pet-direct", "w0", 1_000, 4e4, 0.09, "unknown", role="main")
    _fits(tmp_path, [0.1, 0.9], [0.2, 1.0])
    rows = _by_check(checks(tmp_path))
    assert all(r["met"] for r in rows.values()), lines(rows.values())
    assert "20-20%" in rows["energy learned (pet-direct)"]["measured"]
    assert "4 sizes over 1.30 decades" in rows["L(N) (pet-direct)"]["measured"]
    assert "12 of 12" in rows["convergence"]["measured"]


def test_each_target_can_be_missed(tmp_path):
    # three widths spanning under a decade, one unlearned energy at the top D,
    # an alpha interval reaching 0, and half the points still improving
    for i, n in enumerate((1_000, 2_000, 5_000)):
        for k, atoms in enumerate((1e4, 4e4)):
            energy = 0.05 if (i, k) == (2, 1) else 0.01
            verdict = "converged" if k else "still-improving"
            _summary(tmp_path, f"w{i}_cd{k}", "pet-direct", f"w{i}", n, atoms, energy, verdict)
    _fits(tmp_path, [0.0, 0.9], [0.2, 1.0])
    rows = _by_check(checks(tmp_path))
    assert not rows["energy learned (pet-direct)"]["met"]
    assert "10-50%" in rows["energy learned (pet-direct)"]["measured"]
    assert not rows["L(N) (pet-direct)"]["met"]
    assert not rows["convergence"]["met"]
    assert rows["L(D) (pet-direct)"]["met"] and rows["equal compute"]["met"]


def test_tuned_points_count_only_the_chosen_run(tmp_path):
    for lr, energy in (("0.001", 0.01), ("0.003", 0.09)):
        _summary(tmp_path, f"w8_lr{lr}_cd0", "pet-direct", "w8", 1_000, 1e4, energy,
                 "converged", tune={"optim.lr": float(lr)})
    tuned = {"pet-direct": {"val/forces_mae": [{"chosen": "runs/w8_lr0.001_cd0"}]}}
    _fits(tmp_path, [0.1, 0.9], [0.2, 1.0], tuned=tuned)
    rows = _by_check(checks(tmp_path))
    assert rows["energy learned (pet-direct)"]["met"]
    assert "1 of 1" in rows["convergence"]["measured"]


def test_energy_is_judged_on_the_energy_envelope(tmp_path):
    """Where the report chose tuned runs on the energy too, the energy check
    counts those, not the force envelope's choice."""
    for lr, energy in (("0.001", 0.2), ("0.003", 0.01)):
        _summary(tmp_path, f"w8_lr{lr}_cd0", "pet-direct", "w8", 1_000, 1e4, energy,
                 "converged", tune={"optim.lr": float(lr)})
    forces_only = {"pet-direct": {"val/forces_mae": [{"chosen": "runs/w8_lr0.001_cd0"}]}}
    _fits(tmp_path, [0.1, 0.9], [0.2, 1.0], tuned=forces_only)
    assert not _by_check(checks(tmp_path))["energy learned (pet-direct)"]["met"]
    shutil.rmtree(tmp_path / "report")
    both = {"pet-direct": {**forces_only["pet-direct"],
                           "val/energy_per_atom_mae": [{"chosen": "runs/w8_lr0.003_cd0"}]}}
    _fits(tmp_path, [0.1, 0.9], [0.2, 1.0], tuned=both)
    rows = _by_check(checks(tmp_path))
    assert rows["energy learned (pet-direct)"]["met"]
    assert "1 of 1" in rows["convergence"]["measured"]  # still the force envelope


def test_equal_compute_falls_back_to_the_measured_fronts(tmp_path):
    _summary(tmp_path, "w8_cd0", "pet-direct", "w8", 1_000, 1e4, 0.02, "converged")
    _fits(tmp_path, [0.1, 0.9], [0.2, 1.0])
    path = tmp_path / "report" / "fits.json"
    report = json.loads(path.read_text())
    report["equal_compute"] = [{"metric": "val/forces_mae", "law": "C", "status": "skipped",
                                "reason": "the fit of mace is poor"}]
    # pet direct: better at low compute, worse at high: the fronts cross
    report["pareto"] = {
        "pet-direct": {"val/forces_mae": [{"C": 1e9, "L": 0.2}, {"C": 1e11, "L": 0.15}]},
        "mace": {"val/forces_mae": [{"C": 1e9, "L": 0.3}, {"C": 1e10, "L": 0.1}]},
    }
    path.write_text(json.dumps(report))
    row = _by_check(checks(tmp_path))["equal compute"]
    assert row["met"] and "the fit of mace is poor" in row["measured"]
    assert "pet-direct/mace measured fronts 0.67 -> 2.00" in row["measured"]
    assert "they cross" in row["measured"]
