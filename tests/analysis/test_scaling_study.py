"""Loading run directories and tables, the study analysis, the CLI and its outputs."""

from __future__ import annotations

import csv
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from analysis.scaling import report
from analysis.scaling.analyse import analyse
from analysis.scaling.command import main
from analysis.scaling.frontier import compare_curves
from analysis.scaling.load import (
    LoadError,
    load_csv,
    load_inputs,
    load_study,
    resolve_metric,
    write_csv,
)
from analysis.scaling.types import Settings
from tests.analysis.scaling_synth import flops_per_atom, law, make_study, write_run

PET = {"E": 0.02, "A": 30.0, "alpha": 0.35, "B": 200.0, "beta": 0.30}
MACE = {"E": 0.025, "A": 12.0, "alpha": 0.30, "B": 300.0, "beta": 0.32}
SIZES = [1e5, 3e5, 1e6, 3e6, 1e7]
DATA = [1e6, 1e7, 1e8]
FAST = dict(num_bootstrap=40, loo_bootstrap=20)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    make_study(root, {"pet-direct": PET, "mace": MACE}, SIZES, DATA, noise=0.005)
    runs = root / "runs"
    write_run(
        runs,
        "killed",
        family="mace",
        n=1e5,
        d=1e6,
        metrics={},
        finished=False,
        error="RuntimeError: CUDA out of memory",
    )
    write_run(runs, "running", family="mace", n=1e5, d=1e6, metrics={}, finished=False)
    return root


def test_study_loads_finished_and_unfinished_runs_with_reasons(study):
    runs = load_study(study)
    assert len(runs) == 2 * 15 + 2
    by_name = {r.name: r for r in runs}
    killed, running = by_name["runs/killed"], by_name["runs/running"]
    assert not killed.finished and killed.reason.startswith("RuntimeError: CUDA out of memory")
    assert not running.finished
    assert running.reason.startswith("no summary.json (still running or killed)")
    done = by_name["runs/pet-direct_n2_d1_s0"]
    assert done.finished and done.family == "pet-direct" and done.size == "n2"
    assert done.num_params == 1e6 and done.atoms_seen == 1e7
    assert done.flops == pytest.approx(flops_per_atom(1e6) * 1e7)
    assert done.axes["data_fraction"] == 0.1 and done.num_train_atoms == 2.5e6
    assert {"val/forces_mae", "val/energy_per_atom_mae"} <= set(done.metrics)
    assert [h["step"] for h in done.history] == [50.0, 100.0]


def test_eval_files_torn_lines_and_nested_keys(tmp_path):
    run = write_run(
        tmp_path,
        "r",
        family="pet-direct",
        n=1e6,
        d=1e7,
        metrics={"val/forces_mae": 0.1},
        eval_metrics={
            "relax": {"rmsd": 0.02},
            "symmetry": {"symmetry/rot_error": 1e-3},
            "nonconservative": {"lambda": 0.004, "per": {"x": 2}},
        },
    )
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 101, "train/lo')  # killed mid-write
    (r,) = load_study(tmp_path)
    assert r.metrics["relax/rmsd"] == 0.02
    assert r.metrics["symmetry/rot_error"] == 1e-3
    assert r.metrics["nonconservative/lambda"] == 0.004
    assert r.metrics["nonconservative/per/x"] == 2
    assert r.finished and any("unparsable" in w for w in r.warnings)
    assert resolve_metric("lambda", [r]) == "nonconservative/lambda"
    assert resolve_metric("forces_mae", [r]) == "val/forces_mae"
    with pytest.raises(LoadError, match="not found"):
        resolve_metric("phonon/freq_mae", [r])


def test_csv_round_trip_and_errors_that_name_line_and_column(study, tmp_path):
    runs = load_study(study)
    path = tmp_path / "runs.csv"
    write_csv(runs, path)
    back = {r.name: r for r in load_csv(path)}
    for r in runs:
        b = back[r.name]
        assert b.finished == r.finished and b.family == r.family
        assert b.num_params == r.num_params and b.atoms_seen == r.atoms_seen
        assert b.flops == pytest.approx(r.flops) if r.flops else True
        assert b.metrics == pytest.approx(r.metrics)
        assert b.axes.get("data_fraction") == r.axes.get("data_fraction")
    bad = tmp_path / "bad.csv"
    bad.write_text("family,num_params,atoms_seen,forces_mae\nmace,1e6,1e7,0.1\nmace,big,1e7,0.2\n")
    with pytest.raises(LoadError, match=r"bad.csv:3: column 'num_params'.*'big'"):
        load_csv(bad)
    bad.write_text("family,num_params,forces_mae\nmace,1e6,0.1\n")
    with pytest.raises(LoadError, match="structures_seen or atoms_seen"):
        load_csv(bad)
    with pytest.raises(LoadError, match="no such file"):
        load_inputs([str(tmp_path / "missing.csv")])


def test_analysis_recovers_the_laws_of_each_family(study):
    an = analyse(load_study(study), Settings(**FAST), ["forces_mae"])
    assert an.metrics == ["val/forces_mae"]
    for fam, truth in (("pet-direct", PET), ("mace", MACE)):
        nd = an.fits[fam]["val/forces_mae"]["ND"].result
        assert nd.params["alpha"] == pytest.approx(truth["alpha"], abs=0.06)
        assert nd.params["beta"] == pytest.approx(truth["beta"], rel=0.1)
        n_fit = an.fits[fam]["val/forces_mae"]["N"]
        assert n_fit.fixed["quantity"] == "atoms_seen" and n_fit.fixed["min"] == 1e8
        assert len(n_fit.runs) == len(SIZES)
        d_fit = an.fits[fam]["val/forces_mae"]["D"]
        assert d_fit.fixed == {"quantity": "num_params", "min": 1e7, "max": 1e7, "num_slices": 5}
        assert d_fit.result.quality["verdict"] == "unverified"  # 3 runs, 3 parameters
        fr = an.frontiers[fam]["val/forces_mae"]
        assert fr["status"] == "ok" and fr["cost_model"]["gamma"] == pytest.approx(0.95)
        a, b = nd.params["alpha"], nd.params["beta"]
        assert fr["N_opt_exponent"]["value"] == pytest.approx(b / (a + 0.95 * b))
        # C = c N^gamma D: the two growth exponents satisfy gamma a + b = 1
        assert 0.95 * fr["N_opt_exponent"]["value"] + fr["D_opt_exponent"][
            "value"
        ] == pytest.approx(1.0)
    assert {(c["law"], c["status"]) for c in an.comparisons} == {
        ("N", "ok"),
        ("D", "ok"),
        ("ND", "ok"),
        ("C", "ok"),
    }


def test_crossover_found_with_interval_or_reported_absent():
    n = np.geomspace(1e4, 1e8, 40)
    a = law(n, 1, E=0.01, A=1.0, alpha=0.2)  # crosses b where the terms meet
    b = law(n, 1, E=0.01, A=10.0, alpha=0.4)
    true_x = (10.0 / 1.0) ** (1 / 0.2)  # A_a x^-0.2 = A_b x^-0.4
    rng = np.random.default_rng(0)
    ba = a * np.exp(rng.normal(0, 0.02, (200, 1)))
    bb = b * np.exp(rng.normal(0, 0.02, (200, 1)))
    out = compare_curves("a", "b", "N", n, a, b, ba, bb, 0.95)
    cr = out["crossover"]
    assert cr["value"] == pytest.approx(true_x, rel=0.05)
    assert cr["ci"][0] < true_x < cr["ci"][1]
    assert "b overtakes a" in cr["statement"]
    out = compare_curves("a", "b", "N", n, 0.5 * b, b, None, None, 0.95)
    assert out["crossover"]["value"] is None
    assert out["crossover"]["statement"].startswith("no crossover in range")


def test_cli_writes_fits_json_figures_and_report(study, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            str(study),
            "--out",
            str(out),
            "--metric",
            "val/forces_mae",
            "--bootstrap",
            "40",
            "--workers",
            "1",
            "--wandb",
            "off",
        ]
    )
    assert code == 0
    fits = json.loads((out / "fits.json").read_text())
    assert fits["schema_version"] == 2
    assert fits["runs"]["total"] == 32 and fits["runs"]["finished"] == 30
    reasons = {u["name"]: u["reason"] for u in fits["runs"]["unfinished"]}
    assert reasons["runs/killed"].startswith("RuntimeError")
    nd = fits["fits"]["pet-direct"]["val/forces_mae"]["ND"]
    assert set(nd["params"]) == {"E", "A", "alpha", "B", "beta"}
    for p in nd["params"].values():
        assert set(p) == {"value", "ci"} and len(p["ci"]) == 2 and p["ci"][0] <= p["ci"][1]
    assert nd["quality"]["verdict"] == "good" and nd["num_runs"] == 15
    assert nd["loo_largest"]["status"] == "ok"
    assert fits["fits"]["mace"]["val/forces_mae"]["D"]["params"]["beta"]["ci"] is None
    for files in fits["figures"]["val/forces_mae"].values():
        assert {Path(f).suffix for f in files} == {".png", ".pdf"}
        assert all((out / f).stat().st_size > 1000 for f in files)
    assert {"vs_N", "vs_D", "vs_compute", "residuals", "ratio", "training"} <= set(
        fits["figures"]["val/forces_mae"]
    )
    md = (out / "report.md").read_text()
    assert "![val/forces_mae vs_N](figures/val-forces_mae_vs_N.png)" in md
    assert "runs/killed" in md and "CUDA out of memory" in md
    assert "doubling the parameters removes" in md and "N_opt ~ C^" in md
    assert (out / "runs.csv").is_file()
    assert "report:" in capsys.readouterr().out


def test_cli_on_a_csv_table_of_published_runs(tmp_path):
    path = tmp_path / "published.csv"
    rng = np.random.default_rng(3)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["family", "num_params", "structures_seen", "forces_mae", "note"])
        for n in np.geomspace(4.5e6, 7.3e8, 6):
            value = law(n, 1, E=0.04, A=20.0, alpha=0.4) * np.exp(rng.normal(0, 0.003))
            w.writerow(["pet", f"{n:.4g}", "1.1e8", f"{value:.6g}", "OMat24"])
    out = tmp_path / "r"
    assert (
        main(
            [
                str(path),
                "--out",
                str(out),
                "--law",
                "N",
                "--bootstrap",
                "40",
                "--workers",
                "1",
                "--no-figures",
                "--wandb",
                "off",
            ]
        )
        == 0
    )
    fit = json.loads((out / "fits.json").read_text())["fits"]["pet"]["forces_mae"]["N"]
    assert fit["params"]["alpha"]["value"] == pytest.approx(0.4, rel=0.1)
    assert fit["variables"] == {"N": "num_params"}


def test_tiny_study_falls_back_and_says_so(tmp_path):
    # the smoke study: a 2x2 grid of one family
    make_study(tmp_path, {"pet-direct": PET}, [1e5, 1e6], [1e6, 1e7], noise=0.01)
    an = analyse(load_study(tmp_path), Settings(**FAST), ["val/forces_mae"])
    fits = an.fits["pet-direct"]["val/forces_mae"]
    assert fits["N"].result.law.form == "pure"
    assert any("fell back to the pure power law" in n for n in fits["N"].notes)
    assert fits["N"].result.quality["verdict"] == "unverified"
    assert fits["ND"].result.law.form == "pure"  # 4 runs cannot carry 5 parameters
    md = report.report_md(an, {}, ["tiny"])
    assert "fell back to the pure power law" in md
    # a single run: nothing can be fitted, and the report says why
    one = tmp_path / "one"
    write_run(one, "r", family="mace", n=1e6, d=1e7, metrics={"val/forces_mae": 0.1})
    an = analyse(load_study(one), Settings(**FAST, laws=("N",)), ["val/forces_mae"])
    assert not an.fits and "only 1 runs" in an.skipped[0]["reason"]


def test_zero_metrics_are_left_out_with_the_reason(tmp_path):
    for i, n in enumerate([1e5, 1e6, 1e7]):
        write_run(
            tmp_path,
            f"c{i}",
            family="pet-conservative",
            n=n,
            d=1e7,
            metrics={"val/forces_mae": 0.1},
            eval_metrics={"nc": {"lambda": 0.0}},
        )
    an = analyse(load_study(tmp_path), Settings(**FAST, laws=("N",)), ["lambda"])
    assert len(an.excluded) == 3 and "positive" in an.excluded[0]["reason"]
    assert "no finished run" in an.skipped[0]["reason"]


def test_wandb_target_and_upload_with_a_stand_in_module(study, tmp_path, monkeypatch):
    an = analyse(load_study(study), Settings(**FAST, laws=("N",)), ["val/forces_mae"])
    assert report.wandb_target(an, "auto", None, None, None, {}) is None  # logger kind none
    next(r for r in an.runs if r.finished).config = {
        "logger": {"kind": "wandb", "mode": "online", "project": "p", "group": "g"}
    }
    assert report.wandb_target(an, "auto", None, None, None, {}) == {
        "mode": "online",
        "project": "p",
        "entity": None,
        "group": "g",
    }
    # an offline environment never goes online, and disabled means off
    assert (
        report.wandb_target(an, "online", None, None, None, {"WANDB_MODE": "offline"})["mode"]
        == "offline"
    )
    assert report.wandb_target(an, "online", None, None, None, {"WANDB_MODE": "disabled"}) is None

    calls = {}

    class FakeRun:
        summary = {}

        def log(self, data):
            calls["log"] = data

        def log_artifact(self, art):
            calls["artifact"] = art.files

        def finish(self):
            calls["finished"] = True

    class Artifact:
        def __init__(self, name, type):  # noqa: A002 - wandb's own signature
            self.files = []

        def add_file(self, path):
            self.files.append(Path(path).name)

    class Table:
        def __init__(self, columns):
            self.rows = []

        def add_data(self, *row):
            self.rows.append(row)

    def init(**kw):
        calls["init"] = kw
        return FakeRun()

    fake = types.SimpleNamespace(init=init, Table=Table, Artifact=Artifact, Image=lambda p: p)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "r"
    report.write_all(an, out, ["x"], figures=True)
    assert report.upload_wandb(an, out, "offline", "p", None, "g")
    assert calls["init"]["mode"] == "offline" and calls["init"]["group"] == "g"
    assert any(k.startswith("figures/") for k in calls["log"])
    assert calls["log"]["scaling/fits"].rows
    assert "fits.json" in calls["artifact"] and calls["finished"]


def test_wandb_input_refuses_offline_mode(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(LoadError, match="online mode"):
        load_inputs(["wandb:me/proj"])


def test_wandb_input_maps_runs(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)

    class WRun:
        def __init__(self, i, state):
            self.name, self.state, self.path = f"r{i}", state, ["me", "proj", f"id{i}"]
            self.summary = {
                "family": "mace",
                "num_params": 1e5 * 10**i,
                "atoms_seen": 1e7,
                "val/forces_mae": 0.1 / (i + 1),
            }
            self.config = {"seed": 0}

    class Api:
        def runs(self, path, filters):
            assert path == "me/proj" and filters == {"group": "g"}
            return [WRun(0, "finished"), WRun(1, "running")]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    runs = load_inputs(["wandb:me/proj/g"])
    assert [r.finished for r in runs] == [True, False]
    assert runs[0].metrics == {"val/forces_mae": 0.1} and runs[1].reason == "W&B state is 'running'"


def test_wandb_offline_upload_writes_locally(study, tmp_path, monkeypatch):
    """The real client in offline mode: the run lands under the report directory."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    an = analyse(load_study(study), Settings(**FAST, laws=("N",)), ["val/forces_mae"])
    out = tmp_path / "r"
    report.write_all(an, out, ["x"], figures=False)
    target = report.wandb_target(an, "online", "mlip-scaling-test", None, "g", dict(os.environ))
    assert target["mode"] == "offline"
    assert report.upload_wandb(an, out, **target)
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))


def test_metrics_of_a_single_run_are_not_fitted_by_default(tmp_path):
    for i, n in enumerate([1e5, 1e6, 1e7]):
        write_run(
            tmp_path,
            f"r{i}",
            family="mace",
            n=n,
            d=1e7,
            metrics={"val/forces_mae": law(n, 1, E=0.02, A=3.0, alpha=0.3)},
            eval_metrics={"phonon": {"freq_mae": 0.1}} if i == 2 else None,
        )
    an = analyse(load_study(tmp_path), Settings(**FAST, laws=("N",)))
    assert an.metrics == ["val/forces_mae"]
    assert any("phonon/freq_mae" in n for n in an.notes)
    # asked for by name, it is attempted and the reason is given
    an = analyse(load_study(tmp_path), Settings(**FAST, laws=("N",)), ["freq_mae"])
    assert an.skipped[0]["metric"] == "phonon/freq_mae" and "only 1 runs" in an.skipped[0]["reason"]


def test_constant_metrics_are_not_fitted_by_default(tmp_path):
    for i, n in enumerate([1e5, 1e6, 1e7]):
        write_run(
            tmp_path,
            f"r{i}",
            family="pet-direct",
            n=n,
            d=1e7,
            metrics={"val/forces_mae": law(n, 1, E=0.02, A=3.0, alpha=0.3)},
            eval_metrics={"relax": {"relax/num_structures": 6, "relax/rmsd_mean": 0.1 / (i + 1)}},
        )
    an = analyse(load_study(tmp_path), Settings(**FAST, laws=("N",)))
    assert sorted(an.metrics) == ["relax/rmsd_mean", "val/forces_mae"]
    assert any("same value in every run" in n and "relax/num_structures" in n for n in an.notes)
