"""What `analysis symmetry` and `analysis relax` tell a person: progress, "n/a"
for what was not measured, a glossary of every diagnostic, work sized to the
model's cost, the relaxation reference named and P1 starts counted apart."""

from __future__ import annotations

import math

import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from analysis.workflows import relax, symmetry
from analysis.workflows.command import main as command
from analysis.workflows.model import ModelOptions
from analysis.workflows.results import fmt
from analysis.workflows.symmetry import SymmetrySettings, evaluations_per_call, planned_work


class CountingEMT(EMT):
    """EMT that counts its calculations (each is one model call)."""

    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        super().calculate(*args, **kwargs)


def test_symmetry_prints_progress_and_na_without_labels(capsys):
    result = command("symmetry", ["--model", "emt", "--structures", "builtin:cu-fcc",
                                  "--num-rotations", "2", "--grid-l-max", "1",
                                  "--jacobian-atoms", "2", "--md-steps", "5", "--min-atoms", "8"])
    captured = capsys.readouterr()
    progress = captured.err.splitlines()
    assert any("[1/1] cu-fcc: rotational error: 3 calls, 8 atoms" in line for line in progress)
    assert any("lambda: Jacobian of 2 atoms, 12 calls" in line for line in progress)
    assert any("NVE: 5 steps" in line for line in progress) and "done" in progress[-1]
    line = captured.out.strip()
    assert "force MAE vs labels n/a (the structures carry no force labels)" in line
    assert "nan" not in line.lower()
    assert result["labelled"] is False


def test_fmt_writes_na_for_what_was_not_measured():
    assert fmt(math.nan) == "n/a" and fmt(None) == "n/a"
    assert fmt(1.5e-3) == "1.50e-03" and fmt(2.0, ".0f") == "2"


def test_glossary_explains_every_metric():
    doc = symmetry.__doc__
    for key in symmetry.METRIC_KEYS:
        stem = key.rsplit("_", 1)[0] if key.startswith(("rot_error_", "grid_std_")) else key
        assert stem in doc, key
    for word in ("eV/A", "meV/atom/ps", "dimensionless", "good"):
        assert word in doc


def test_work_is_sized_by_the_cost_of_a_call():
    assert evaluations_per_call(ModelOptions()) == 1
    assert evaluations_per_call(ModelOptions(rotational_average=3)) == 42
    assert planned_work(SymmetrySettings(), 1) == (8, 8, 100)
    assert planned_work(SymmetrySettings(), 42) == (2, 2, 0)  # no 2-step NVE run
    assert planned_work(SymmetrySettings(), 2) == (4, 4, 50)
    given = SymmetrySettings(num_rotations=5, jacobian_atoms=3, md_steps=7)
    assert planned_work(given, 42) == (5, 3, 7)  # what a person sets is what runs


def test_averaged_model_defaults_keep_the_call_count_small():
    """With a grid of 42 (rotational average 3) the default diagnostics call the
    model 1 (labels) + 3 (rotations) + 12 (Jacobian) times, no MD: about 16 x 42
    evaluations, a minute or two for a 64-atom cell on 2 cores (it was 258 x 42)."""
    CountingEMT.calls = 0
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    out = symmetry.diagnose(CountingEMT(), None, atoms, SymmetrySettings(min_atoms=8), cost=42)
    assert CountingEMT.calls == 16
    assert out["md_steps"] == 0 and math.isnan(out.get("nve_drift_meV_per_atom_per_ps", math.nan))


def test_relax_names_its_reference_and_sets_p1_starts_apart(capsys):
    rattled = bulk("Cu", "fcc", a=3.6, cubic=True)
    rattled.rattle(0.05, seed=1)
    structures = [("cu", bulk("Cu", "fcc", a=3.62)), ("rattled", rattled)]
    settings = relax.RelaxSettings(fmax=0.02, max_steps=100)
    result = relax.run(ModelOptions(), structures, settings)
    m = result["metrics"]
    assert m["relax/num_p1_starts"] == 1 and m["relax/spacegroup_kept_fraction"] == 1.0
    assert m["relax/p1_symmetry_found_fraction_loose"] == 1.0  # the rattle relaxes away
    line = relax.summary(ModelOptions(), settings, result, None)
    assert "vs emt (the default reference: the model itself, so RMSD 0 by construction" in line
    assert "1/1 (symprec 1e-05; 1 P1 start apart, 0 found symmetry)" in line
    assert "reference: emt (the default reference" in capsys.readouterr().err
    pet = ModelOptions(spec="model.pt", forces="direct")
    label = relax.reference_label(pet, settings)
    assert label.startswith("model.pt[conservative] (the default reference: the same model "
                            "with conservative forces")
    assert relax.reference_label(pet, relax.RelaxSettings(reference_model="emt")) == "emt"


def test_only_p1_starts_give_na_not_a_perfect_score():
    rattled = bulk("Cu", "fcc", a=3.6, cubic=True)
    rattled.rattle(0.05, seed=2)
    settings = relax.RelaxSettings(fmax=0.05, max_steps=5, reference_model="none")
    result = relax.run(ModelOptions(), [("r", rattled)], settings)
    assert math.isnan(result["metrics"]["relax/spacegroup_kept_fraction"])
    line = relax.summary(ModelOptions(), settings, result, None)
    assert "space group kept n/a (symprec 1e-05; 1 P1 start apart" in line
    assert "nan" not in line.lower()


@pytest.mark.parametrize("name", ["relax", "symmetry"])
def test_help_still_builds(name, capsys):
    with pytest.raises(SystemExit):
        command(name, ["--help"])
    assert "usage" in capsys.readouterr().out


def test_practical_table_counts_kept_groups_out_of_starts_above_p1():
    from analysis.workflows.practical import _cell

    m = {"relax/spacegroup_kept_fraction": 1.0, "relax/num_p1_starts": 1}
    assert _cell(m, "relax/spacegroup_kept_fraction", None, "", 9) == "8/8"
