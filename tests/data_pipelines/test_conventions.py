"""The manifest says which convention each reader applied, and holds no absolute paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
from ase.build import bulk
from ase.calculators.emt import EMT

from data_pipelines.convert import main, source_root
from data_pipelines.sources import FORMATS, ReaderOptions
from data_pipelines.sources.conventions import describe

REPO = Path(__file__).resolve().parents[2]


def test_every_format_states_energy_forces_and_stress():
    for fmt in FORMATS:
        got = describe(fmt)
        assert set(got) == {"energy", "forces", "stress", "config_type"}, fmt
        assert got["energy"].startswith("eV total") and got["forces"].startswith("eV/A")
        assert got["stress"].startswith("eV/A^3, ASE sign (tension positive)")


def test_pymatgen_stress_convention_is_vasp_turned_into_ase():
    stress = describe("pymatgen-json")["stress"]
    assert "kBar, VASP sign (compression positive)" in stress
    assert "Voigt xx,yy,zz,xy,yz,zx" in stress
    mo = describe("pymatgen-json", ReaderOptions(stress_order="xx,yy,zz,xy,zx,yz"))
    assert "Voigt xx,yy,zz,xy,zx,yz" in mo["stress"]  # the option shows
    xyz = describe("extxyz", ReaderOptions(energy_unit="kcal/mol", forces_key="force"))
    assert xyz["energy"] == "eV total, from energy in kcal/mol"
    assert xyz["forces"] == "eV/A, from force in kcal/mol/A"
    assert "virial" in xyz["stress"]
    assert "uncorrected_total_energy" in describe("mptrj", ReaderOptions(
        mptrj_energy="uncorrected"))["energy"]


def _xyz(path: Path, seed: int) -> None:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.get_potential_energy()
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, [atoms], format="extxyz")


def test_manifest_records_conventions_and_relative_paths(tmp_path, shared_data):
    inputs = tmp_path / "inputs"
    _xyz(inputs / "a" / "md.xyz", 0)
    _xyz(inputs / "b" / "md.xyz", 1)
    mlearn = shared_data / "crystals/mlearn/Si/training.json.gz"
    out = tmp_path / "out"
    args = [str(inputs / "a" / "md.xyz"), str(inputs / "b" / "md.xyz"), "--out", str(out),
            "--no-progress", "--split", "train=1.0"]
    assert main(args) == 0
    text = (out / "manifest.json").read_text()
    assert str(tmp_path) not in text  # nothing of where the inputs lay on this machine
    manifest = json.loads(text)
    assert manifest["sources_root"] == "inputs"
    assert [s["path"] for s in manifest["sources"]] == ["a/md.xyz", "b/md.xyz"]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in manifest["sources"])
    assert manifest["sources"][0]["conventions"] == describe("extxyz")

    assert main([str(mlearn), "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (source,) = manifest["sources"]
    assert manifest["sources_root"] == "Si" and source["path"] == "training.json.gz"
    assert source["conventions"]["stress"] == (
        "eV/A^3, ASE sign (tension positive), from outputs.stress (else outputs.virial_stress) "
        "in kBar, VASP sign (compression positive), Voigt xx,yy,zz,xy,yz,zx when 6 values")
    assert str(shared_data) not in json.dumps(manifest)


def test_source_root_of_one_file_is_its_folder(tmp_path):
    assert source_root([str(tmp_path / "x" / "f.xyz")]) == ("x", {str(tmp_path / "x" / "f.xyz"):
                                                                  "f.xyz"})


def test_help_lists_each_readers_conventions():
    text = subprocess.run([sys.executable, "-m", "data_pipelines.convert", "--help"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    for fmt in FORMATS:
        assert f"  {fmt}:" in text
    assert "kBar, VASP sign (compression positive)" in text
    assert "--config-type-key" in text
