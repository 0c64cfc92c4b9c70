"""Foreign models in the workflows: metatomic files, mace-torch files, module:factory.

Models trained here by the training command are exported to metatomic and
mace-torch files; the workflows run on those files and give the metrics of
our own calculator on the same weights. Rotational averaging and the
space-group projection work on every kind: batched through metatomic-ase,
one structure at a time for mace-torch and any other ASE calculator.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from tests.train import conftest as train_conftest
from tests.train.conftest import train_cli

pytest.importorskip("metatomic_ase")

emt_shards = train_conftest.emt_shards  # the training tests' shards, as a fixture here


def _train(root, out, *overrides):
    train_cli(
        f"data.root={root}", "size=tiny", "logger=none", "data.max_atoms=64",
        "trainer.threads=1", "trainer.max_steps=6", "trainer.val_every=0",
        "trainer.checkpoint_every=6", f"run_dir={out}", *overrides,
    )  # fmt: skip
    return out / "model.pt"


@pytest.fixture(scope="module")
def pet_files(emt_shards, tmp_path_factory):
    """(our file, metatomic file) of a tiny pet with both heads."""
    from train.export import main

    ours = _train(emt_shards, tmp_path_factory.mktemp("pet") / "run", "model=pet", "forces=both")
    exported = ours.with_name("metatomic.pt")
    main([str(ours), "--format", "metatomic", "--out", str(exported)])
    return ours, exported


@pytest.fixture(scope="module")
def mace_files(emt_shards, tmp_path_factory):
    """(our file, mace-torch file, metatomic file) of a tiny mace."""
    from train.export import main

    ours = _train(emt_shards, tmp_path_factory.mktemp("mace") / "run", "model=mace")
    mace_file, exported = ours.with_name("mace.model"), ours.with_name("metatomic.pt")
    main([str(ours), "--format", "mace", "--out", str(mace_file)])
    main([str(ours), "--format", "metatomic", "--out", str(exported)])
    return ours, mace_file, exported


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rattled(element="Cu", seed=0):
    atoms = bulk(element, "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.numbers[2] = 79
    atoms.rattle(0.05, seed=seed)
    return atoms


def predict(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


def assert_same_predictions(a, b, atol=2e-5):
    assert a[0] == pytest.approx(b[0], abs=atol)
    np.testing.assert_allclose(a[1], b[1], atol=atol)
    np.testing.assert_allclose(a[2], b[2], atol=atol / 10)


def test_model_kind_tells_the_files_apart(pet_files, mace_files, tmp_path):
    from analysis.workflows.foreign import model_kind

    assert model_kind("emt") == "emt" and model_kind("my_pkg.calc:make") == "factory"
    assert [model_kind(str(p)) for p in pet_files] == ["ours", "metatomic"]
    assert [model_kind(str(p)) for p in mace_files] == ["ours", "mace", "metatomic"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        model_kind(str(tmp_path / "missing.pt"))
    plain = torch.jit.script(torch.nn.Linear(2, 2))
    plain.save(str(tmp_path / "plain.pt"))
    with pytest.raises(ValueError, match="not a metatomic model"):
        model_kind(str(tmp_path / "plain.pt"))


def test_mace_exports_predict_as_our_calculator(mace_files):
    from analysis.workflows.model import get_calculator

    ours, mace_file, exported = (str(p) for p in mace_files)
    atoms = rattled()
    reference = predict(get_calculator(ours), atoms)
    for spec in (mace_file, exported):
        assert_same_predictions(predict(get_calculator(spec), atoms), reference)
    with pytest.raises(ValueError, match="gradient forces only"):
        get_calculator(mace_file, forces="direct")
    with pytest.raises(ValueError, match="no non_conservative_force"):
        get_calculator(exported, forces="direct")


@pytest.mark.parametrize("forces", ["direct", "conservative"])
def test_corrections_on_a_metatomic_model_match_ours(pet_files, forces):
    from analysis.workflows.model import get_calculator

    ours, exported = (str(p) for p in pet_files)
    atoms = rattled(seed=1)
    options = {"forces": forces, "rotational_average": 2, "space_group": True}
    mine, theirs = get_calculator(ours, **options), get_calculator(exported, **options)
    got, expected = predict(theirs, atoms), predict(mine, atoms)
    if forces == "direct":  # metatomic-ase removes the net force of direct forces
        expected = (expected[0], expected[1] - expected[1].mean(axis=0), expected[2])
    assert_same_predictions(got, expected)
    # the batched metatomic path agrees with averaging one rotation at a time
    from train.corrections import RotationalAverage

    serial = RotationalAverage(get_calculator(exported, forces=forces), l_max=2)
    batched = get_calculator(exported, forces=forces, rotational_average=2)
    np.testing.assert_allclose(predict(serial, atoms)[1], predict(batched, atoms)[1], atol=1e-6)


def test_a_calculator_factory_from_the_users_code(tmp_path, monkeypatch):
    from analysis.workflows.model import get_calculator

    (tmp_path / "my_calcs.py").write_text(textwrap.dedent("""
        from ase.calculators.emt import EMT

        def make():
            return EMT()

        not_a_calculator = 3
    """))  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    atoms = rattled(seed=2)
    corrected = get_calculator("my_calcs:make", rotational_average=1, space_group=True)
    energy, forces, stress = predict(corrected, atoms)
    assert_same_predictions((energy, forces, stress), predict(EMT(), atoms), atol=1e-9)
    with pytest.raises(ValueError, match="no callable"):
        get_calculator("my_calcs:missing")
    with pytest.raises(ValueError, match="part of this project"):
        get_calculator("train.calculator:load_calculator")
    with pytest.raises(ValueError, match="gradient forces only"):
        get_calculator("my_calcs:make", forces="direct")


def _relax_and_symmetry(spec: str, forces: str) -> dict:
    from analysis.workflows import relax, symmetry
    from analysis.workflows.model import ModelOptions

    options = ModelOptions(spec=spec, forces=forces)
    cells = [("cu", rattled(seed=3)), ("cu-au", rattled(seed=4))]
    metrics = relax.run(
        options, cells, relax.RelaxSettings(fmax=0.05, max_steps=15, reference_model="emt")
    )["metrics"]
    settings = symmetry.SymmetrySettings(num_rotations=2, grid_l_max=1, jacobian_atoms=2,
                                         min_atoms=8, md_steps=5)  # fmt: skip
    metrics.update(symmetry.run(options, cells[:1], settings)["metrics"])
    return metrics


def test_relax_and_symmetry_workflows_give_our_metrics(pet_files, mace_files):
    # (the metatomic mace is checked against ours structure by structure above)
    cases = [(pet_files[0], pet_files[1], "conservative"), (pet_files[0], pet_files[1], "direct"),
             (mace_files[0], mace_files[1], "conservative")]  # fmt: skip
    for ours, foreign, forces in cases:
        expected = _relax_and_symmetry(str(ours), forces)
        got = _relax_and_symmetry(str(foreign), forces)
        keys = ["relax/energy_mae_per_atom", "relax/rmsd_mean", "relax/steps_mean",
                "symmetry/rot_error_stress", "symmetry/grid_std_stress"]  # fmt: skip
        if forces == "conservative":
            # direct forces: metatomic-ase removes their net force, which for an
            # unconstrained model carries much of the rotational error
            keys += ["symmetry/rot_error_forces", "symmetry/grid_std_forces"]
        for key in keys:
            assert got[key] == pytest.approx(expected[key], rel=1e-3, abs=1e-6), (foreign, key)
        kept = [m["relax/spacegroup_kept_fraction"] for m in (got, expected)]
        assert kept[0] == kept[1] or all(map(math.isnan, kept))  # nan: every start is P1
        assert not math.isnan(got["symmetry/lambda"])


def test_practical_workflow_on_a_metatomic_model(pet_files, emt_shards, tmp_path):
    from analysis.workflows.command import main as command

    def practical(spec, out):
        return command("practical", [
            "--model", str(spec), "--test-data", emt_shards, "--out", str(out), "--quick",
            "--num-test", "4", "--variants", "conservative-rot1", "--speed-atoms", "32",
        ])["variants"]  # fmt: skip

    ours = practical(pet_files[0], tmp_path / "ours")
    theirs = practical(pet_files[1], tmp_path / "metatomic")
    # the averaged variant: batched through metatomic-ase, through our calculator
    mine, other = ours["conservative-rot1"], theirs["conservative-rot1"]
    for key in ("labels/energy_mae_per_atom", "labels/force_mae", "labels/stress_mae",
                "relax/rmsd_mean", "relax-fixsym/rmsd_mean", "phonon/freq_mae_THz",
                "symmetry/rot_error_forces", "symmetry/rot_error_stress"):  # fmt: skip
        assert other[key] == pytest.approx(mine[key], rel=2e-3, abs=1e-6), key
    assert other["speed/us_per_atom"] > 0 and other["speed/num_rotations"] == 18
