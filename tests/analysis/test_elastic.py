"""Cubic elastic constants from strain-stress data, and a model checked against them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.units import GPa

from analysis.workflows.elastic import (
    compare,
    deformation_of,
    fit_cubic,
    read_strain_set,
    voigt_strain,
)
from analysis.workflows.registry import WORKFLOWS

# VASP/pymatgen order of the six stress components: xx, yy, zz, xy, yz, zx
_VOIGT_TO_VASP = (0, 1, 2, 5, 3, 4)


def _record(atoms, stress_voigt_ase, note):
    vasp = -np.asarray(stress_voigt_ase)[list(_VOIGT_TO_VASP)] / (0.1 * GPa)
    return {
        "_id": note,
        "notes": {"Strain": note},
        "structure": {
            "lattice": {"matrix": atoms.cell[:].tolist()},
            "sites": [{"species": [{"element": s, "occu": 1}], "xyz": p.tolist()}
                      for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        },
        "outputs": {"energy": 0.0, "forces": [[0, 0, 0]] * len(atoms), "stress": vasp.tolist()},
    }


def _emt_elastic_set(path: Path, a: float = 3.59) -> None:
    """A maml-style Elastic set of fcc Cu labelled by EMT: six modes, +-1%, +-2%, +-5%."""
    ref = bulk("Cu", "fcc", a=a, cubic=True)
    records = []
    for mode in range(6):
        for mag in (-0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05):
            if mag == 0.0 and mode:
                continue
            f = np.eye(3)
            i, j = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)][mode]
            f[i, j] += mag if i == j else mag / 2
            if i != j:
                f[j, i] += mag / 2
            atoms = ref.copy()
            atoms.set_cell(ref.cell[:] @ f.T, scale_atoms=True)
            atoms.calc = EMT()
            records.append(_record(atoms, atoms.get_stress(voigt=True), f"{mode + 1}--{mag:.4f}"))
    with gzip.open(path, "wt") as fh:
        json.dump(records, fh)


def test_fit_recovers_known_constants():
    c11, c12, c44 = 300.0, 150.0, 80.0
    rng = np.random.default_rng(0)
    fs, sig = [], []
    for _ in range(20):
        e = rng.normal(0, 0.005, size=(3, 3))
        f = np.eye(3) + 0.5 * (e + e.T)
        v = voigt_strain(f)
        c = np.zeros((6, 6))
        c[:3, :3] = c12
        np.fill_diagonal(c[:3, :3], c11)
        c[3:, 3:] = np.eye(3) * c44
        fs.append(f)
        sig.append(c @ v * GPa + 0.2 * GPa * np.array([1, 1, 1, 0, 0, 0]))
    fit = fit_cubic(np.array(fs), np.array(sig))
    assert fit["C11"] == pytest.approx(c11) and fit["C12"] == pytest.approx(c12)
    assert fit["C44"] == pytest.approx(c44) and fit["p0"] == pytest.approx(0.2)
    assert deformation_of(np.diag([2.0, 2.0, 2.0]) @ fs[0].T, np.eye(3) * 2) == pytest.approx(fs[0])


def test_model_against_its_own_labels(tmp_path):
    path = tmp_path / "Cu_Elastic.json.gz"
    _emt_elastic_set(path)
    data = read_strain_set(path, max_strain=0.02)
    assert len(data.deformations) == 1 + 6 * 4  # the 5% cells lie outside the linear window
    result = compare([data], EMT())["Cu"]
    dft = result["dft"]
    assert dft["C11"] > dft["C12"] > 0 and dft["C44"] > 0
    # the labeller as the model: same constants; EMT's own fcc minimum near 3.59 A
    for key in ("C11", "C12", "C44"):
        assert result["relative_error"][key] == pytest.approx(0, abs=0.03), result
    assert result["model"]["a"] == pytest.approx(3.59, abs=0.01)


def test_stage_workflow_writes_flat_metrics(tmp_path):
    path = tmp_path / "Cu_Elastic.json.gz"
    _emt_elastic_set(path)
    workflow = WORKFLOWS["elastic"]
    model, structures, settings = workflow.inputs({"elastic_sets": [str(path)]}, "stage elastic")
    result = workflow.run(model, structures, settings, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics == pytest.approx(result["metrics"])
    assert metrics["elastic/C_mae_GPa"] < 3.0 and metrics["elastic/a_rel_error"] < 0.01
    assert metrics["elastic/Cu/C44"] > 0
    cu = result["elements"]["Cu"]
    assert metrics["elastic/C_mae_GPa"] == pytest.approx(
        np.mean([abs(cu["model"][k] - cu["dft"][k]) for k in ("C11", "C12", "C44")]))
    with pytest.raises(ValueError, match="at least one set"):
        workflow.run(model, None, type(settings)(), None)


def test_record_without_stress_is_named(tmp_path):
    path = tmp_path / "Cu_Elastic.json.gz"
    _emt_elastic_set(path)
    with gzip.open(path, "rt") as fh:
        records = json.load(fh)
    del records[3]["outputs"]["stress"]
    with gzip.open(path, "wt") as fh:
        json.dump(records, fh)
    with pytest.raises(ValueError, match=r"Cu_Elastic.json.gz#3: field outputs.stress"):
        read_strain_set(path)


def test_maml_elastic_sets_give_pbe_like_constants(shared_data):
    mo = read_strain_set(shared_data / "crystals/maml-MoNbTaW/Mo_Elastic.json.gz")
    fit = fit_cubic(mo.deformations, mo.stresses)
    assert len(mo.deformations) == 25 and mo.lattice_constant == pytest.approx(3.169, abs=1e-3)
    # PBE Mo: C11 ~470-480, C12 ~155-160, C44 ~100-110 GPa
    assert 440 < fit["C11"] < 520 and 130 < fit["C12"] < 180 and 90 < fit["C44"] < 120
    assert fit["rms_misfit_GPa"] < 1.0
