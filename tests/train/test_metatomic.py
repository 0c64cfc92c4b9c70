"""Export to metatomic, TorchScript twins of both families, and model cards.

The round trip: a model trained by the training command, exported by the
export command, loaded in a fresh process that imports only torch, metatomic
and metatomic-ase, gives the energies, forces and stresses of our own
calculator on the same weights (float32 precision), with gradient and direct
forces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111
from ase.io import write

from tests.train.conftest import train_cli

pytest.importorskip("metatomic.torch")
pytest.importorskip("metatomic_ase")

# float32 models: energies of tens of eV agree to a few ulps, forces and stresses
# to round-off of sums over neighbours
ENERGY_ATOL, FORCE_ATOL, STRESS_ATOL = 2e-5, 2e-5, 2e-6


def _train(root, out, *overrides):
    train_cli(
        f"data.root={root}",
        "size=tiny",
        "logger=none",
        "data.max_atoms=64",
        "trainer.threads=1",
        "trainer.max_steps=6",
        "trainer.val_every=3",
        "trainer.checkpoint_every=6",
        f"run_dir={out}",
        *overrides,
    )
    return out


@pytest.fixture(scope="module")
def pet_run(emt_shards, tmp_path_factory):
    """A tiny pet with both heads, trained by the CLI (model.pt written at the end)."""
    return _train(emt_shards, tmp_path_factory.mktemp("pet") / "run", "model=pet", "forces=both")


@pytest.fixture(scope="module")
def pet_metatomic(pet_run):
    from train.export import main

    out = pet_run / "exported.pt"
    assert main([str(pet_run), "--format", "metatomic", "--forces", "both", "--out", str(out)]) == 0
    return out


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def structures() -> list[Atoms]:
    """Three periodic cells (one triclinic) and two non-periodic structures."""
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    cu.numbers[[1, 5]] = 79
    tri = bulk("Ni", "fcc", a=3.5).repeat((2, 2, 2))
    tri.set_cell(tri.cell.array + [[0.0, 0.2, 0.1], [0.1, 0.0, 0.0], [0.0, 0.0, 0.0]], True)
    tri.numbers[0] = 13
    small = bulk("Al", "fcc", a=4.05)  # one atom: every neighbour is an image
    slab = fcc111("Pd", (2, 2, 2), vacuum=4.0)
    slab.pbc = False  # an isolated island: no stress
    cluster = Atoms("Cu4Au2", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5],
                                         [2.5, 2.5, 0], [1.2, 1.3, 2.1]])  # fmt: skip
    out = [cu, tri, small, slab, cluster]
    for k, atoms in enumerate(out):
        atoms.rattle(0.05, seed=k)
    return out


FRESH_PROCESS = """
import json, sys, warnings
import numpy as np
from ase.io import read
import torch
from metatomic.torch import load_atomistic_model
from metatomic_ase import MetatomicCalculator

warnings.simplefilter("ignore")
model = load_atomistic_model(sys.argv[1])
results = {}
for mode, nc in (("conservative", False), ("direct", True)):
    calc = MetatomicCalculator(model, non_conservative=nc, check_consistency=True)
    rows = []
    for atoms in read(sys.argv[2], ":"):
        atoms.calc = calc
        row = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist()}
        if atoms.pbc.all():
            row["stress"] = atoms.get_stress().tolist()
        rows.append(row)
    results[mode] = rows
project = sorted(m for m in sys.modules if m.split(".")[0] in
                 ("train", "data_pipelines", "analysis", "slurm", "mace", "e3nn"))
results["project_modules"] = project
results["atomic_types"] = list(model.capabilities().atomic_types)
json.dump(results, open(sys.argv[3], "w"))
"""


def test_metatomic_file_runs_in_a_fresh_process_like_our_calculator(
    pet_run, pet_metatomic, tmp_path
):
    from train.calculator import load_calculator

    cells = structures()
    write(tmp_path / "structures.xyz", cells)
    script = tmp_path / "fresh.py"
    script.write_text(textwrap.dedent(FRESH_PROCESS))
    out = tmp_path / "out.json"
    subprocess.run(
        [sys.executable, str(script), str(pet_metatomic), str(tmp_path / "structures.xyz"),
         str(out)],
        cwd=tmp_path, check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    theirs = json.loads(out.read_text())
    assert theirs["project_modules"] == []  # nothing of ours (or of mace) was needed
    assert theirs["atomic_types"] == [13, 28, 29, 46, 79]
    worst = {}
    for mode in ("conservative", "direct"):
        ours = load_calculator(pet_run / "model.pt", forces=mode)
        for atoms, row in zip(cells, theirs[mode]):
            atoms = atoms.copy()
            atoms.calc = ours
            forces = atoms.get_forces()
            if mode == "direct":  # metatomic-ase removes the net force of direct forces
                forces = forces - forces.mean(axis=0)
            errors = {
                "energy": abs(row["energy"] - atoms.get_potential_energy()),
                "forces": float(np.abs(np.array(row["forces"]) - forces).max()),
            }
            if atoms.pbc.all():
                errors["stress"] = float(np.abs(np.array(row["stress"]) - atoms.get_stress()).max())
            for key, value in errors.items():
                worst[f"{mode}/{key}"] = max(worst.get(f"{mode}/{key}", 0.0), value)
    print("metatomic vs ours, max abs differences:", worst)
    for key, value in worst.items():
        limit = {"energy": ENERGY_ATOL, "forces": FORCE_ATOL, "stress": STRESS_ATOL}
        assert value < limit[key.split("/")[1]], (key, value)


def test_per_atom_energies_and_selected_atoms(pet_metatomic):
    from metatensor.torch import Labels
    from metatomic.torch import ModelOutput, load_atomistic_model
    from metatomic_ase import MetatomicCalculator

    model = load_atomistic_model(pet_metatomic)
    calc = MetatomicCalculator(model, check_consistency=True)
    atoms = structures()[0]
    per_atom = calc.compute_energy(atoms, per_atom=True)
    assert per_atom["energies"].sum() == pytest.approx(per_atom["energy"], abs=1e-4)
    chosen = [0, 3, 4]
    selected = Labels(["system", "atom"], torch.tensor([[0, i] for i in chosen]))
    out = calc.run_model(atoms, {"energy": ModelOutput(unit="eV")}, selected_atoms=selected)
    # the other atoms are neighbours only: the energy of the chosen ones alone
    assert float(out["energy"].block().values) == pytest.approx(
        per_atom["energies"][chosen].sum(), abs=1e-4
    )


def test_capabilities_name_units_range_and_direct_outputs(pet_run, pet_metatomic, tmp_path):
    from metatomic.torch import load_atomistic_model

    from train.export import load_model, main

    model, _ = load_model(pet_run / "model.pt")
    capabilities = load_atomistic_model(pet_metatomic).capabilities()
    outputs = capabilities.outputs
    assert {"energy", "non_conservative_force", "non_conservative_stress"} <= set(outputs)
    assert outputs["energy"].unit == "eV"
    assert outputs["non_conservative_force"].unit == "eV/Angstrom"
    assert outputs["non_conservative_stress"].unit == "eV/Angstrom^3"
    assert capabilities.length_unit == "angstrom" and capabilities.dtype == "float32"
    assert capabilities.interaction_range == pytest.approx(model.cutoff * 2)  # 2 GNN layers
    requests = load_atomistic_model(pet_metatomic).requested_neighbor_lists()
    assert [(r.cutoff, r.full_list, r.strict) for r in requests] == [(model.cutoff, True, True)]
    energy_only = tmp_path / "conservative.pt"
    main([str(pet_run / "model.pt"), "--format", "metatomic", "--forces", "conservative",
          "--dtype", "float64", "--out", str(energy_only)])  # fmt: skip
    capabilities = load_atomistic_model(energy_only).capabilities()
    assert "non_conservative_force" not in capabilities.outputs
    assert "energy" in capabilities.outputs and capabilities.dtype == "float64"


@pytest.mark.parametrize("forces", ["both", "direct", "conservative"])
def test_scripted_pet_equals_eager(forces):
    from data_pipelines.batching import batch_structures
    from train.calculator import _structure
    from train.models import build_model
    from train.scripted import scripted_potential

    torch.manual_seed(0)
    model = build_model("pet", "tiny", forces=forces, energy_scale=0.8,
                        composition_baseline={29: -3.5, 79: -3.0})  # fmt: skip
    with torch.no_grad():  # trained-looking weights: the heads start near zero
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = model.double().eval()
    scripted = scripted_potential(model)
    batch = batch_structures([_structure(a) for a in structures()], model.cutoff, torch.float64)
    reference = model(batch)
    gradient, direct = forces != "direct", forces != "conservative"
    out = scripted(*[batch[k] for k in ("species", "positions", "cell", "pbc", "batch",
                                        "edge_index", "cell_shifts")],
                   gradient=gradient, direct=direct)  # fmt: skip
    assert set(out) == set(reference)
    for key, value in reference.items():
        assert float(value.abs().max()) > 0, key
        torch.testing.assert_close(out[key], value, rtol=1e-10, atol=1e-12)


def test_show_prints_the_card_of_each_format(pet_run, pet_metatomic, capsys):
    from train.export import main

    for path in (pet_run / "model.pt", pet_metatomic):
        assert main(["--show", str(path)]) == 0
        text = capsys.readouterr().out
        assert "model card: pet-tiny-both" in text
        assert "theory       " in text and "validation   " in text
        assert "forces_mae" in text and "commit       " in text
        assert "config:" in text and "max_steps: 6" in text
    assert "as metatomic" in text
    with pytest.raises(SystemExit):
        main(["--show", str(pet_run / "config.yaml")])


def test_export_refuses_what_it_cannot_write(pet_run, tmp_path):
    from train.export import main

    with pytest.raises(SystemExit):  # --forces belongs to --format metatomic
        main([str(pet_run), "--forces", "direct"])
    with pytest.raises(SystemExit):  # a pet is no mace
        main([str(pet_run / "model.pt"), "--format", "mace", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing"), "--format", "metatomic"])


def test_scripted_benchmark_reports_ratios(tmp_path):
    from analysis.bench import scripted as bench

    out = tmp_path / "scripted.json"
    bench.main(["--out", str(out), "--sizes", "64", "--repeats", "1", "--models", "pet-direct"])
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["model"] == "pet-direct" and row["num_atoms"] == 64
    assert row["scripted_us_per_atom"] > 0 and row["metatomic_us_per_atom"] > 0
    assert row["max_abs_difference"] < 1e-5
    assert result["summary"]["scripted_vs_eager_geomean"] > 0
