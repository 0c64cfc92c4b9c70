"""The field's axes and honesty checks: non-embedding N, the compute law and its
optimal allocation, equal-compute family comparisons, tuned envelopes, still-
improving runs, trivial predictors, WSD ladders and runs without these fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.scaling import report
from analysis.scaling.analyse import analyse
from analysis.scaling.command import main
from analysis.scaling.load import load_csv, load_study, write_csv
from analysis.scaling.types import FitEntry, Settings
from tests.analysis.scaling_synth import law, make_study, make_tuned_study, write_run

# pet-direct starts worse and scales better: it overtakes pet-conservative near C ~ 4e13
FREE = {"E": 0.01, "A": 60.0, "alpha": 0.45, "B": 900.0, "beta": 0.40}
CONS = {"E": 0.01, "A": 8.0, "alpha": 0.25, "B": 60.0, "beta": 0.24}
SIZES = [1e5, 3e5, 1e6, 3e6, 1e7]
DATA = [1e6, 1e7, 1e8]
GAMMA = 0.95  # the synthetic cost: flops per atom = 8 N^0.95
BASELINE = {"energy_per_atom_mae": 1.0, "forces_mae": 20.0}
FAST = dict(num_bootstrap=40, loo_bootstrap=10)


def _extra(family, i, j, value):
    """The newer summary fields: the largest two sizes at the most data were still
    improving when training stopped."""
    still = j == len(DATA) - 1 and i >= len(SIZES) - 2
    return {
        "convergence": {
            "metric": "val/forces_mae",
            "rel_slope": -0.04 if still else -0.002,
            "verdict": "still-improving" if still else "converged",
            "window": "last fifth",
        },
        "baseline": BASELINE,
    }


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    """A study written by the newer training code, analysed once."""
    root = tmp_path_factory.mktemp("rich")
    make_study(
        root,
        {"pet-direct": FREE, "pet-conservative": CONS},
        SIZES,
        DATA,
        noise=0.005,
        embedding=5e3,
        extra_for=_extra,
    )
    # a run that learned nothing: at the zero-force predictor's error
    write_run(
        root / "runs",
        "stuck",
        family="pet-conservative",
        n=1e5,
        d=1e6,
        metrics={"val/forces_mae": 19.5, "val/energy_per_atom_mae": 0.97},
        embedding=5e3,
        extra={"baseline": BASELINE, "convergence": _extra("", 0, 0, 0)["convergence"]},
    )
    an = analyse(load_study(root), Settings(**FAST), ["val/forces_mae"])
    return root, an


def test_non_embedding_parameters_are_n_by_default(rich):
    _, an = rich
    assert an.settings.param_measure == "non-embedding"
    nd = an.fits["pet-direct"]["val/forces_mae"]["ND"]
    assert sorted(set(nd.result.x["N"])) == SIZES  # not N + 5e3
    assert report.entry_json(nd)["variables"] == {
        "N": "num_params_non_embedding",
        "D": "atoms_seen",
    }
    assert not any("total parameter count" in n for n in an.notes)


def test_compute_optimal_exponents_recovered_within_their_intervals(rich):
    _, an = rich
    fr = an.frontiers["pet-direct"]["val/forces_mae"]
    a, b = FREE["alpha"], FREE["beta"]
    assert fr["status"] == "ok" and fr["cost_model"]["gamma"] == pytest.approx(GAMMA, abs=1e-6)
    for key, truth in (
        ("N_opt_exponent", b / (a + GAMMA * b)),
        ("D_opt_exponent", a / (a + GAMMA * b)),
    ):
        lo, hi = fr[key]["ci"]
        assert lo <= truth <= hi, (key, fr[key], truth)
        assert fr[key]["value"] == pytest.approx(truth, abs=0.05)
    env = fr["envelope"]
    assert env["status"] == "ok" and env["num_points"] >= 3 and env["N_opt_exponent"]["ci"]
    assert fr["headline"] == "L(N, D)"
    assert "the headline is the L(N, D) estimate" in report.report_md(an, {}, ["x"])
    law_c = an.fits["pet-direct"]["val/forces_mae"]["C"]
    assert law_c.result.law.axes == ("C",) and law_c.envelope_of == 15
    # the envelope: each run better than every cheaper one
    ys = [r.metrics["val/forces_mae"] for r in law_c.runs]
    assert [r.flops for r in law_c.runs] == sorted(r.flops for r in law_c.runs)
    assert ys == sorted(ys, reverse=True)


def test_unconstrained_family_overtakes_at_equal_compute(rich, tmp_path):
    _, an = rich
    rows = [r for r in report.fits_json(an, ["x"])["equal_compute"] if r["law"] == "C"]
    (row,) = rows
    assert (row["unconstrained"], row["constrained"]) == ("pet-direct", "pet-conservative")
    lo, hi = row["ratio_unconstrained_over_constrained"]
    assert lo > 1 > hi  # worse at small compute, better at large
    cr = row["crossover"]
    assert 4e12 < cr["value"] < 4.5e14 and cr["ci"] is not None
    assert cr["ci"][0] <= cr["value"] <= cr["ci"][1]
    md = report.report_md(an, {}, ["x"])
    assert "## Unconstrained against constrained at equal compute" in md
    assert "pet-direct overtakes pet-conservative at C = " in md


def test_still_improving_runs_are_refitted_without(rich):
    _, an = rich
    for law_name in ("ND", "C", "N"):
        e = an.fits["pet-direct"]["val/forces_mae"][law_name]
        assert e.still_improving, law_name
        conv = e.converged_only
        assert isinstance(conv, FitEntry), (law_name, conv)
        assert not {r.name for r in conv.runs} & set(e.still_improving)
        j = report.entry_json(e)
        assert j["converged_only"]["status"] == "ok"
        assert j["converged_only"]["num_runs"] == len(conv.runs)
        assert sum(p["still_improving"] for p in j["points"]) == len(e.still_improving)
    nd = an.fits["pet-direct"]["val/forces_mae"]["ND"]
    assert len(nd.runs) == 15 and len(nd.converged_only.runs) == 13
    md = report.report_md(an, {}, ["x"])
    assert "15 runs, 2 of them still improving" in md
    assert "Without the 2 still-improving run(s) (13 runs" in md
    assert "| still-improving (-0.04) |" in md


def test_trivial_predictors_fractions_and_not_learned(rich):
    _, an = rich
    data = report.fits_json(an, ["x"])
    assert data["trivial_predictors"]["forces_mae"] == [20.0, 20.0]
    assert {"name": "runs/stuck", "metric": "val/forces_mae"} in data["runs"]["not_learned"]
    nd = data["fits"]["pet-conservative"]["val/forces_mae"]["ND"]
    assert nd["baseline"]["value"] == 20.0 and nd["baseline"]["not_learned"] == ["runs/stuck"]
    stuck = next(p for p in nd["points"] if p["run"] == "runs/stuck")
    assert stuck["fraction_of_baseline"] == pytest.approx(19.5 / 20)
    md = report.report_md(an, {}, ["x"])
    assert "composition-baseline energy MAE 1 eV/atom; zero-force MAE 20 eV/Å" in md
    assert "NOT LEARNED (val/forces_mae)" in md and "| 97.0% | 97.5% |" in md


def test_fits_json_keeps_unrounded_values_and_figures(rich, tmp_path):
    _, an = rich
    paths = report.write_all(an, tmp_path / "r", ["x"], figures=True)
    data = json.loads(paths["fits"].read_text())
    assert data["schema_version"] == 2
    nd = an.fits["pet-direct"]["val/forces_mae"]["ND"]
    got = data["fits"]["pet-direct"]["val/forces_mae"]["ND"]["params"]
    assert {k: v["value"] for k, v in got.items()} == nd.result.params  # exact, no rounding
    assert got["alpha"]["ci"] == list(nd.result.ci["alpha"])
    figs = data["figures"]["val/forces_mae"]
    assert {"vs_N", "vs_D", "vs_compute", "residuals"} <= set(figs)
    assert all((tmp_path / "r" / f).stat().st_size > 1000 for f in figs["residuals"])


def test_tuned_study_picks_the_best_value_per_point_and_flags_edges(tmp_path):
    values = [1e-3, 3e-3, 1e-2]
    # the largest size wants 3e-4, below the grid; at size 1, lr 1e-2 diverged
    make_tuned_study(
        tmp_path / "s",
        FREE,
        [1e5, 1e6, 1e7, 1e8],
        [1e8],
        values,
        lambda i, j: 3e-4 if i == 3 else 3e-3,
        diverged={(1, 0, 1e-2)},
    )
    out = tmp_path / "r"
    code = main(
        [str(tmp_path / "s"), "--out", str(out), "--law", "N", "--bootstrap", "20"]
        + ["--workers", "1", "--wandb", "off"]
    )
    assert code == 0
    data = json.loads((out / "fits.json").read_text())
    sels = data["tuned"]["pet-direct"]["val/forces_mae"]
    chosen = {s["point"]["size"]: s["value"]["optim.lr"] for s in sels}
    assert chosen == {"n0": 3e-3, "n1": 3e-3, "n2": 3e-3, "n3": 1e-3}
    edges = {s["point"]["size"]: s["at_edge"] for s in sels}
    assert edges["n3"] == [{"key": "optim.lr", "side": "low"}]
    # the diverged 1e-2 brackets the optimum at n1: not an edge
    assert edges["n0"] == edges["n1"] == edges["n2"] == []
    n1 = next(s for s in sels if s["point"]["size"] == "n1")
    assert [t["metric"] is None for t in n1["tried"]] == [False, False, True]
    fit = data["fits"]["pet-direct"]["val/forces_mae"]["N"]
    assert sorted(fit["runs"]) == sorted(s["chosen"] for s in sels)
    assert data["settings"]["param_measure"] == "non-embedding"
    md = (out / "report.md").read_text()
    assert "### Tuned envelope" in md and "EDGE of the tuned grid for 1 of 4 grid points" in md
    assert "runs/pet-direct_n3_d0_lr0.001" in md
    assert "tuned" in data["figures"]["val/forces_mae"]


def test_ladder_mains_are_left_out_and_cooldown_branches_are_points(tmp_path):
    params = {"E": 0.02, "A": 30.0, "alpha": 0.35, "B": 200.0, "beta": 0.30}
    for i, n in enumerate([1e5, 1e6, 1e7]):
        main_name = f"m{i}"
        write_run(
            tmp_path,
            main_name,
            family="pet-direct",
            n=n,
            d=1e8,
            metrics={"val/forces_mae": 1.5 * law(n, 1e8, **params)},  # never cooled down
            extra={"ladder": {"role": "main"}},
        )
        for k, d in enumerate([1e6, 1e7, 1e8]):
            write_run(
                tmp_path,
                f"{main_name}_cd{k}",
                family="pet-direct",
                n=n,
                d=d,
                metrics={"val/forces_mae": law(n, d, **params)},
                extra={
                    "ladder": {
                        "role": "cooldown",
                        "main": main_name,
                        "decay_at": (k + 1) / 3,
                        "branch_step": 100 * (k + 1),
                        "cooldown_steps": 20,
                    }
                },
            )
    runs = load_study(tmp_path)
    an = analyse(runs, Settings(**FAST, laws=("ND",)), ["val/forces_mae"])
    nd = an.fits["pet-direct"]["val/forces_mae"]["ND"]
    assert len(nd.runs) == 9 and not any(r.ladder_main for r in nd.runs)
    assert any("3 WSD-ladder main run(s)" in n for n in an.notes)
    assert nd.result.params["beta"] == pytest.approx(0.30, abs=0.03)
    an = analyse(
        runs, Settings(**FAST, laws=("ND",), include_ladder_mains=True), ["val/forces_mae"]
    )
    assert len(an.fits["pet-direct"]["val/forces_mae"]["ND"].runs) == 12


def test_old_runs_without_the_new_fields_load_fit_and_say_so(tmp_path):
    make_study(tmp_path, {"mace": CONS}, SIZES, DATA, noise=0.005)
    runs = load_study(tmp_path)
    r = runs[0]
    assert r.num_params_non_embedding is None and r.train_flops is None and r.flops
    assert r.convergence is None and r.tune == {} and r.ladder is None and r.baseline == {}
    an = analyse(runs, Settings(**FAST, laws=("ND", "C")), ["val/forces_mae"])
    assert an.settings.param_measure == "total"
    assert set(an.fits["mace"]["val/forces_mae"]) == {"ND", "C"}
    notes = " ".join(an.notes)
    for said in (
        "no run records num_params_non_embedding",
        "N is the total parameter count",
        "have no train_flops",
        "carry no convergence verdict",
        "trivial predictors",
    ):
        assert said in notes, said
    assert report.entry_json(an.fits["mace"]["val/forces_mae"]["ND"])["converged_only"] is None
    md = report.report_md(an, {}, ["old"])
    assert "Trivial predictors: not recorded by any run" in md
    # one newer run among old ones: N stays the total count, and the note names it
    write_run(tmp_path / "runs", "new", family="mace", n=1e6, d=1e7, metrics={}, embedding=1.0)
    an = analyse(load_study(tmp_path), Settings(**FAST, laws=("N",)), ["val/forces_mae"])
    assert an.settings.param_measure == "total"
    assert any("15 of 16 runs lack num_params_non_embedding" in n for n in an.notes)


def test_new_fields_survive_the_csv_round_trip(rich, tmp_path):
    root, _ = rich
    runs = load_study(root)
    tuned = runs[0]
    tuned.tune = {"optim.lr": 0.003}
    tuned.ladder = {"role": "cooldown", "main": "m", "decay_at": 0.25}
    write_csv(runs, tmp_path / "runs.csv")
    back = {r.name: r for r in load_csv(tmp_path / "runs.csv")}
    for r in runs:
        b = back[r.name]
        assert b.num_params_non_embedding == r.num_params_non_embedding
        assert b.train_flops == pytest.approx(r.train_flops)
        assert b.convergence == r.convergence and b.baseline == r.baseline
        assert b.tune == r.tune and b.ladder == r.ladder


def test_params_total_is_used_when_asked(rich):
    root, _ = rich
    an = analyse(
        load_study(root), Settings(**FAST, laws=("N",), param_measure="total"), ["val/forces_mae"]
    )
    n_fit = an.fits["pet-direct"]["val/forces_mae"]["N"]
    assert sorted(set(n_fit.result.x["N"])) == [n + 5e3 for n in SIZES]
    assert report.entry_json(n_fit)["variables"] == {"N": "num_params"}
    assert Path(n_fit.runs[0].source).is_dir()
