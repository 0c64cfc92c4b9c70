"""Readers on the real files in ../shared/data, checked number by number.

References: ASE's own readers (`ase.io.read`, `ase.db`) for ASE-readable files;
hand calculations for unit and sign conversions; the Elastic sets of mlearn/maml
(a known shear strain must give stress in the matching slot) for Voigt order.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import re
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from data_pipelines.schema import DataError
from data_pipelines.sources import (
    FORMATS,
    ReaderOptions,
    add_reader_arguments,
    detect_format,
    options_from_args,
    read_structures,
)
from data_pipelines.sources.textio import JsonStream

pytestmark = pytest.mark.shared_data

KBAR_VASP = -0.1 / 160.21766208  # kBar, compression positive -> eV/A^3, tension positive
MO_ORDER = "xx,yy,zz,xy,zx,yz"  # mlearn Mo/training.json.gz, last two swapped
THIN_DB = "formats/ase-db-mptrj/10_thin_mp_traj_systems.db"
MPTRJ_JSON = "formats/mptrj-json-derived/mptrj_layout_from_orb_10_thin.json"


def read_all(path, fmt="auto", **kwargs) -> list:
    return list(read_structures(path, fmt, ReaderOptions(**kwargs)))


def collecting() -> tuple[list[DataError], ReaderOptions]:
    """Skip mode: an on_error that counts instead of raising."""
    errors: list[DataError] = []
    return errors, ReaderOptions(on_error=errors.append)


# --- formats, counts, ids ------------------------------------------------------------

COUNTS = [
    ("molecules/botnet/dataset_3BPA/train_300K.xyz", "extxyz", 500),
    ("molecules/botnet/dataset_3BPA/train_mixedT.xyz", "extxyz", 500),
    ("molecules/botnet/dataset_3BPA/iso_atoms.xyz", "extxyz", 4),
    ("molecules/botnet/dataset_acac/train_300K.xyz", "extxyz", 500),
    ("molecules/botnet/dataset_acac/train_600K.xyz", "extxyz", 500),
    ("molecules/botnet/dataset_ethanol/train.xyz", "extxyz", 1000),
    ("molecules/botnet/dataset_ethanol/train_eth_meth.xyz", "extxyz", 1300),
    ("formats/extxyz-odd-keys/carbon_reduced_100.xyz", "extxyz", 100),
    ("formats/extxyz-odd-keys/ethanol_reduced_100.xyz", "extxyz", 100),
    ("formats/ase-db-mptrj/10_mptraj_systems.db", "ase-db", 10),
    (THIN_DB, "ase-db", 11),
    ("formats/fairchem/oc20_slab_atoms_asejson.json", "ase-db", 1),
    ("formats/fairchem/omat_computed_structure_entries.json", "alexandria", 4),
    ("formats/fairchem/mp_computed_structure_entries.json", "alexandria", 4),
    (MPTRJ_JSON, "mptrj", 11),
    ("formats/vasp/NbCO_relax_vasprun.xml.gz", "vasp", 49),
    ("formats/vasp/oc20_27998_vasprun.xml.gz", "vasp", 1),
    ("crystals/mlearn/Si/training.json.gz", "pymatgen-json", 214),
    ("crystals/mlearn/Ge/training.json.gz", "pymatgen-json", 228),
    ("crystals/mlearn/Li/training.json.gz", "pymatgen-json", 241),
    ("crystals/mlearn/Mo/training.json.gz", "pymatgen-json", 194),
]


@pytest.mark.parametrize("rel, fmt, count", COUNTS, ids=[c[0].split("/", 1)[1] for c in COUNTS])
def test_detect_and_count(shared_data, rel, fmt, count):
    path = shared_data / rel
    assert detect_format(path) == fmt
    structures = read_all(path)
    assert len(structures) == count
    ids = [s.source_id for s in structures]
    assert len(set(ids)) == count, "source ids must be unique within a file"
    assert all(i.startswith(path.name + "#") for i in ids)
    for s in structures:
        s.validate(path.name)
        json.dumps(s.info)  # info must travel in a shard


def test_maml_counts_per_group(shared_data):
    """The data README: 6 x 658 solid solutions, 4 x 200 AIMD, 4 x 121 Elastic, 50 surfaces."""
    files = sorted((shared_data / "crystals/maml-MoNbTaW").glob("*.json.gz"))
    counts = {p.name.split(".")[0]: len(read_all(p)) for p in files}
    assert sum(counts.values()) == 5282
    assert all(counts[k] == 658 for k in counts if k.endswith("_SS"))
    assert all(counts[k] == 200 for k in counts if k.endswith("_AIMD"))
    assert all(counts[k] == 121 for k in counts if k.endswith("_Elastic"))


def test_detect_format_errors_name_the_file(shared_data, tmp_path):
    for path in (
        shared_data / "formats/vasp/LICENSE-chgnet",
        shared_data / "formats/matbench-diatomics/diatomics-dft.json.gz",  # no reader
        shared_data / "formats/matbench-diatomics/mp-elemental-reference-entries.json.gz",
    ):
        with pytest.raises(DataError, match=re.escape(str(path))):
            detect_format(path)
    assert detect_format(tmp_path / "OUTCAR") == "vasp"
    assert detect_format(tmp_path / "run.extxyz.bz2") == "extxyz"
    with pytest.raises(DataError, match="file not found"):
        read_structures(tmp_path / "missing.xyz")
    with pytest.raises(ValueError, match="unknown format"):
        read_structures(shared_data / MPTRJ_JSON, "npz")
    assert set(FORMATS) == {"extxyz", "ase-db", "mptrj", "alexandria", "pymatgen-json", "vasp"}


# --- extended XYZ --------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [
        "molecules/botnet/dataset_3BPA/train_300K.xyz",
        "molecules/botnet/dataset_ethanol/train_eth_meth.xyz",  # 6- and 9-atom frames
        "molecules/botnet/dataset_acac/isolated_atoms.xyz",  # no forces
    ],
)
def test_extxyz_matches_ase(shared_data, rel):
    ours = read_all(shared_data / rel)
    ref = ase.io.read(shared_data / rel, ":")
    assert len(ours) == len(ref)
    for s, a in zip(ours, ref):
        np.testing.assert_array_equal(s.numbers, a.numbers)
        np.testing.assert_array_equal(s.positions, a.positions)
        np.testing.assert_array_equal(s.cell, a.cell.array)
        np.testing.assert_array_equal(s.pbc, a.pbc)
        assert s.energy == a.get_potential_energy()
        if "forces" in a.calc.results:
            np.testing.assert_array_equal(s.forces, a.get_forces())
        else:
            assert s.forces is None
        assert s.stress is None


def test_extxyz_carbon_force_key_and_virial(shared_data):
    """CASTEP carbon: forces under `force`, `virial` (eV) and no stress: -virial / V."""
    path = shared_data / "formats/extxyz-odd-keys/carbon_reduced_100.xyz"
    ours = read_all(path)
    for s, a in zip(ours, ase.io.read(path, ":")):
        np.testing.assert_array_equal(s.forces, a.arrays["force"])
        expected = -np.asarray(a.info["virial"]) / a.get_volume()
        np.testing.assert_allclose(s.stress, expected, rtol=1e-14, atol=0)
    # First frame by hand from the header line: virial xx = 17.67401361 eV.
    volume = abs(np.linalg.det(ours[0].cell))
    assert ours[0].stress[0, 0] == pytest.approx(-17.67401361 / volume, rel=1e-14)
    assert ours[0].info["config_type"] == "bulk_cryst"


def test_extxyz_ethanol_kcal_per_mol(shared_data):
    path = shared_data / "formats/extxyz-odd-keys/ethanol_reduced_100.xyz"
    raw = read_all(path)
    ev = read_all(path, energy_unit="kcal/mol")
    scale = units.kcal / units.mol
    assert raw[0].energy == -97079.92222178938  # as written in the file
    # by hand: 1 kcal/mol = 4184 J / (e * N_A) eV (CODATA 2018; ASE's 2014 differs by 1e-8)
    kcal_mol = 4184 / (1.602176634e-19 * 6.02214076e23)
    assert ev[0].energy == pytest.approx(-97079.92222178938 * kcal_mol, rel=1e-7)
    for r, s in zip(raw, ev):
        assert s.energy == pytest.approx(r.energy * scale, rel=1e-15)
        np.testing.assert_allclose(s.forces, r.forces * scale, rtol=1e-15)


def test_extxyz_custom_keys_everywhere_ase_puts_them(tmp_path):
    rng = np.random.default_rng(0)
    atoms = Atoms(
        "Cu2", positions=[[0, 0, 0], [1.2, 1.1, 1.0]], cell=np.diag([3.0, 3.1, 3.2]), pbc=True
    )
    f = rng.normal(size=(2, 3)).round(6)  # ASE writes 8 decimals
    voigt = np.array([1.0, 2.0, 3.0, 0.4, 0.5, 0.6])  # xx yy zz xy yz zx, GPa
    atoms.info.update(REF_energy=-1.5, REF_stress=voigt)
    atoms.arrays["REF_forces"] = f
    path = tmp_path / "custom.extxyz"
    ase.io.write(path, atoms, format="extxyz")
    (s,) = read_all(
        path,
        energy_key="REF_energy",
        forces_key="REF_forces",
        stress_key="REF_stress",
        stress_unit="GPa",
        stress_order="xx,yy,zz,xy,yz,zx",
    )
    assert s.energy == -1.5
    np.testing.assert_allclose(s.forces, f, rtol=1e-15)
    assert s.stress[0, 1] == pytest.approx(0.4 * units.GPa)
    assert s.stress[1, 2] == pytest.approx(0.5 * units.GPa)
    assert s.stress[0, 2] == pytest.approx(0.6 * units.GPa)
    # A 3x3 `stress` that ASE converts to its own Voigt order stays right whatever order is set.
    atoms = atoms.copy()
    sigma = np.array([[1.0, 0.6, 0.5], [0.6, 2.0, 0.4], [0.5, 0.4, 3.0]]) * 1e-3
    atoms.calc = SinglePointCalculator(atoms, energy=-2.0, stress=sigma)
    ase.io.write(path, atoms, format="extxyz")
    (s,) = read_all(path, stress_order="xx,yy,zz,xy,yz,zx")
    np.testing.assert_allclose(s.stress, sigma, rtol=1e-12)


# --- ASE databases -------------------------------------------------------------------


def assert_matches_row(s, row):
    np.testing.assert_array_equal(s.numbers, row.numbers)
    np.testing.assert_array_equal(s.positions, row.positions)
    np.testing.assert_array_equal(s.cell, np.asarray(row.cell))
    np.testing.assert_array_equal(s.pbc, row.pbc)
    assert s.energy == row.energy
    np.testing.assert_array_equal(s.forces, row.forces)
    np.testing.assert_allclose(s.stress, row.toatoms().get_stress(voigt=False), rtol=0, atol=0)


@pytest.mark.parametrize(
    "rel",
    [
        "formats/ase-db-mptrj/10_mptraj_systems.db",
        THIN_DB,
        "formats/fairchem/oc20_slab_atoms_asejson.json",  # JSON backend, 3x3 stress
    ],
)
def test_ase_db_matches_ase(shared_data, rel):
    ours = read_all(shared_data / rel)
    rows = list(ase.db.connect(str(shared_data / rel)).select())
    assert [s.source_id for s in ours] == [f"{Path(rel).name}#{r.id}" for r in rows]
    for s, row in zip(ours, rows):
        assert_matches_row(s, row)
        if "mp_id" in (row.get("data") or {}):
            assert s.info["split_key"] == s.info["mp_id"] == row.data["mp_id"]


def test_aselmdb_roundtrip(shared_data, tmp_path):
    """An OMat24-style .aselmdb written with the LMDB backend reads back row for row."""
    src = list(ase.db.connect(str(shared_data / THIN_DB)).select())
    path = tmp_path / "thin.aselmdb"
    with ase.db.connect(str(path), type="aselmdb") as db:
        for row in src:
            db.write(row.toatoms(), data=row.data, sid=row.data["uid"])
    assert detect_format(path) == "ase-db"
    ours = read_all(path)
    assert len(ours) == len(src)
    for s, row in zip(ours, src):
        assert_matches_row(s, row)
        assert s.info["sid"] == row.data["uid"]
        assert s.info["split_key"] == row.data["mp_id"]


def test_ase_db_keys_from_row_data(shared_data):
    """An explicit key is looked up in key-value pairs, then row data (MPtrj metadata)."""
    rows = list(ase.db.connect(str(shared_data / THIN_DB)).select())
    ours = read_all(shared_data / THIN_DB, energy_key="corrected_total_energy")
    assert [s.energy for s in ours] == [r.data["corrected_total_energy"] for r in rows]


def test_ase_db_bad_rows_and_files(shared_data, tmp_path):
    path = tmp_path / "bad.db"
    with ase.db.connect(str(path)) as db:
        db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
    with pytest.raises(DataError, match=r"bad\.db, record 1, field 'energy'"):
        read_all(path)
    data = (shared_data / "formats/ase-db-mptrj/10_mptraj_systems.db").read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(data[: len(data) // 2])
    errors, options = collecting()
    assert list(read_structures(cut, options=options)) == []
    assert len(errors) == 1 and "cut.db" in str(errors[0]) and "malformed" in str(errors[0])


# --- MPtrj JSON ----------------------------------------------------------------------


def test_mptrj_matches_ase_db_frames(shared_data):
    """Same frames as the thin ASE db (matched by frame id), kBar VASP sign -> ASE."""
    rows = {r.data["uid"]: r for r in ase.db.connect(str(shared_data / THIN_DB)).select()}
    raw = json.loads((shared_data / MPTRJ_JSON).read_text())
    corrected = read_all(shared_data / MPTRJ_JSON)
    uncorrected = read_all(shared_data / MPTRJ_JSON, mptrj_energy="uncorrected")
    assert len(rows) == len(corrected) == 11
    for s, u in zip(corrected, uncorrected):
        frame_id = s.source_id.split("#", 1)[1]
        row = rows[frame_id]
        frame = raw[row.data["mp_id"]][frame_id]
        assert u.energy == row.energy == frame["uncorrected_total_energy"]
        assert s.energy == row.data["corrected_total_energy"] == frame["corrected_total_energy"]
        np.testing.assert_array_equal(s.positions, row.positions)
        np.testing.assert_array_equal(s.forces, row.forces)
        # by hand: stress_ase = -value * 0.1 / 160.21766208
        hand = np.asarray(frame["stress"]) * KBAR_VASP
        np.testing.assert_allclose(s.stress, (hand + hand.T) / 2, rtol=1e-14, atol=1e-20)
        np.testing.assert_allclose(
            s.stress, row.toatoms().get_stress(voigt=False), rtol=1e-12, atol=1e-18
        )
        assert s.info["split_key"] == s.info["mp_id"] == row.data["mp_id"]
    assert {s.info["split_key"] for s in corrected} == {"mp-1205402", "mp-1020019"}


# --- Alexandria ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["omat", "mp"])
def test_alexandria_entries(shared_data, name):
    path = shared_data / f"formats/fairchem/{name}_computed_structure_entries.json"
    entries = json.loads(path.read_text())
    ours = read_all(path)
    assert [s.source_id for s in ours] == [f"{path.name}#{k}" for k in entries]
    for s, entry in zip(ours, entries.values()):
        st = entry["structure"]
        # pymatgen keeps `energy` uncorrected; the correction is recorded, not applied.
        assert s.energy == entry["energy"]
        assert s.info["energy_correction"] == entry["correction"]
        assert s.info["entry_id"] == entry["entry_id"]
        np.testing.assert_array_equal(s.cell, st["lattice"]["matrix"])
        np.testing.assert_array_equal(s.positions, [site["xyz"] for site in st["sites"]])
        frac = np.array([site["abc"] for site in st["sites"]])
        np.testing.assert_allclose(frac @ s.cell, s.positions, atol=1e-9)
        symbols = [site["species"][0]["element"] for site in st["sites"]]
        assert list(s.numbers) == list(Atoms(symbols).numbers)
        assert s.forces is None and s.stress is None


def test_alexandria_layouts_and_compression(shared_data, tmp_path):
    entries = list(
        json.loads(
            (shared_data / "formats/fairchem/omat_computed_structure_entries.json").read_text()
        ).values()
    )
    ref = [
        s.energy
        for s in read_all(shared_data / "formats/fairchem/omat_computed_structure_entries.json")
    ]
    text = json.dumps({"entries": entries})
    (tmp_path / "alex.json").write_text(text)
    with bz2.open(tmp_path / "alex.json.bz2", "wt") as fh:
        fh.write(text)
    with gzip.open(tmp_path / "alex.json.gz", "wt") as fh:
        fh.write(text)
    (tmp_path / "list.json").write_text(json.dumps(entries))
    for name in ("alex.json", "alex.json.bz2", "alex.json.gz", "list.json"):
        assert detect_format(tmp_path / name) == "alexandria"
        ours = read_all(tmp_path / name)
        assert [s.energy for s in ours] == ref
        assert [s.source_id for s in ours] == [f"{name}#{i}" for i in range(4)]


def test_alexandria_relaxation_paths(shared_data, tmp_path):
    """{alex_id: [{"steps": [...]}]}: forces eV/A, stress kBar VASP sign, one split per id."""
    entry = next(
        iter(
            json.loads(
                (shared_data / "formats/fairchem/mp_computed_structure_entries.json").read_text()
            ).values()
        )
    )
    n = len(entry["structure"]["sites"])
    forces = np.arange(3 * n, dtype=float).reshape(n, 3) / 10
    stress = [[10.0, 1.0, 2.0], [1.0, 20.0, 3.0], [2.0, 3.0, 30.0]]
    step = {
        "structure": entry["structure"],
        "energy": -10.5,
        "forces": forces.tolist(),
        "stress": stress,
    }
    (tmp_path / "paths.json").write_text(json.dumps({"agm001": [{"steps": [step, step]}]}))
    ours = read_all(tmp_path / "paths.json")
    assert [s.source_id for s in ours] == ["paths.json#agm001/0/0", "paths.json#agm001/0/1"]
    assert all(s.info["split_key"] == "agm001" for s in ours)
    np.testing.assert_array_equal(ours[0].forces, forces)
    np.testing.assert_allclose(ours[0].stress, np.array(stress) * KBAR_VASP, rtol=1e-15)


# --- mlearn / maml -------------------------------------------------------------------


def test_mlearn_units_by_hand(shared_data):
    path = shared_data / "crystals/mlearn/Si/training.json.gz"
    raw = json.loads(gzip.decompress(path.read_bytes()))
    ours = read_all(path)
    for s, rec in zip(ours, raw):
        out = rec["outputs"]
        assert s.energy == out["energy"]
        np.testing.assert_array_equal(s.forces, out["forces"])
        xx, yy, zz, xy, yz, zx = np.asarray(out["virial_stress"]) * KBAR_VASP
        hand = np.array([[xx, xy, zx], [xy, yy, yz], [zx, yz, zz]])
        np.testing.assert_allclose(s.stress, hand, rtol=1e-14, atol=0)
        assert s.info["group"] == rec["group"] and "split_key" not in s.info
        np.testing.assert_array_equal(s.cell, rec["structure"]["lattice"]["matrix"])
        assert s.pbc.all()
    # compressive strain -> positive VASP value -> negative (compressive) ASE stress
    elastic = [s for s in ours if s.info["group"] == "Elastic"]
    assert any(s.stress[0, 0] < 0 for s in elastic) and any(s.stress[0, 0] > 0 for s in elastic)


def shear_slots(structures) -> tuple[int, int]:
    """(agree, disagree): cells sheared in one off-diagonal slot vs the largest shear stress.

    A positive shear strain in slot (i, j) gives a positive (tension-like) ASE stress
    in the same slot, so slot and sign must both agree when the Voigt order is right.
    """
    agree = disagree = 0
    for s in structures:
        off = s.cell - np.diag(np.diag(s.cell))
        nz = np.argwhere(np.abs(off) > 1e-6)
        if len(nz) != 1:
            continue
        (i, j), shear = nz[0], np.abs(s.stress - np.diag(np.diag(s.stress)))
        a, b = np.unravel_index(np.argmax(shear), (3, 3))
        ok = {int(a), int(b)} == {int(i), int(j)} and np.sign(s.stress[a, b]) == np.sign(off[i, j])
        agree, disagree = agree + ok, disagree + (not ok)
    return agree, disagree


def test_mo_voigt_order_trap(shared_data):
    """mlearn Mo stores (xy, zx, yz) in the last three slots; Si and Ge the stated order."""
    mo = shared_data / "crystals/mlearn/Mo/training.json.gz"
    elastic = [s for s in read_all(mo, stress_order=MO_ORDER) if s.info["group"] == "Elastic"]
    assert shear_slots(elastic) == (28, 0)
    # The yz shear strain case, spelled out: stress lands in the yz slot, with its sign.
    yz = [s for s in elastic if abs(s.cell[1, 2]) > 1e-6 and np.count_nonzero(s.cell) == 4]
    assert yz and all(np.sign(s.stress[1, 2]) == np.sign(s.cell[1, 2]) for s in yz)
    assert all(abs(s.stress[1, 2]) > 10 * abs(s.stress[0, 2]) for s in yz)
    default = [s for s in read_all(mo) if s.info["group"] == "Elastic"]
    assert shear_slots(default)[1] > 0, "the stated order puts Mo's shear in the wrong slot"
    for el in ("Si", "Ge"):
        path = shared_data / f"crystals/mlearn/{el}/training.json.gz"
        structures = [s for s in read_all(path) if s.info["group"] == "Elastic"]
        assert shear_slots(structures) == (27, 0)


@pytest.mark.parametrize("el", ["Mo", "Ta", "W"])
def test_maml_elastic_sign_and_order(shared_data, el):
    """maml's `stress`: VASP kBar, stated order, checked on its own Elastic set."""
    path = shared_data / f"crystals/maml-MoNbTaW/{el}_Elastic.json.gz"
    assert shear_slots(read_all(path)) == (60, 0)
    raw = json.loads(gzip.decompress(path.read_bytes()))[1]
    (s, *_) = read_all(path)[1:2]
    xx, yy, zz, xy, yz, zx = np.asarray(raw["outputs"]["stress"]) * KBAR_VASP
    np.testing.assert_allclose(s.stress, [[xx, xy, zx], [xy, yy, yz], [zx, yz, zz]], rtol=1e-14)


# --- VASP ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["NbCO_relax_vasprun.xml.gz", "oc20_27998_vasprun.xml.gz"])
def test_vasp_matches_ase(shared_data, name):
    path = shared_data / "formats/vasp" / name
    ours = read_all(path)
    ref = ase.io.read(path, ":", format="vasp-xml")
    assert len(ours) == len(ref)
    for k, (s, a) in enumerate(zip(ours, ref)):
        assert s.source_id == f"{name}#{k}" and s.info["split_key"] == name
        np.testing.assert_array_equal(s.positions, a.positions)
        np.testing.assert_array_equal(s.cell, a.cell.array)
        assert s.energy == a.get_potential_energy()
        # Raw DFT forces: a.get_forces() would zero the atoms fixed by FixAtoms (OC20 slab).
        np.testing.assert_array_equal(s.forces, a.calc.results["forces"])
        if "stress" in a.calc.results:
            np.testing.assert_allclose(s.stress, a.get_stress(voigt=False), rtol=0, atol=0)
        else:
            assert s.stress is None
        for c in a.constraints:  # the OC20 slab's fixed atoms still carry DFT forces
            assert np.abs(s.forces[c.index]).max() > 1e-3


def test_vasp_stress_by_hand(shared_data):
    """First ionic step: <varray name="stress"> xx = 92.91407355 kBar (compression positive)."""
    path = shared_data / "formats/vasp/NbCO_relax_vasprun.xml.gz"
    text = gzip.decompress(path.read_bytes()).decode()
    block = re.search(r'<varray name="stress" >(.*?)</varray>', text, re.S).group(1)
    kbar = np.array([[float(x) for x in v.split()] for v in re.findall(r"<v>(.*?)</v>", block)])
    s = read_all(path)[0]
    np.testing.assert_allclose(s.stress, kbar * KBAR_VASP, rtol=1e-14, atol=1e-20)
    assert s.stress[0, 0] < 0  # a compressed cell
    with pytest.warns(UserWarning, match="ignoring energy_unit"):
        assert read_all(path, energy_unit="Hartree")[0].energy == s.energy


def test_vasp_outcar_by_hand(tmp_path):
    """No OUTCAR ships in ../shared/data; ASE's own test OUTCAR (Ni18) stands in."""
    path = Path(ase.__file__).parent / "test/testdata/vasp/OUTCAR_example_1"
    if not path.is_file():
        pytest.skip("ASE's test data is not installed")
    gz = tmp_path / "OUTCAR.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert detect_format(gz) == "vasp"
    (s,) = read_all(gz)
    (a,) = ase.io.read(path, ":", format="vasp-out")
    assert s.energy == a.get_potential_energy()
    np.testing.assert_array_equal(s.forces, a.calc.results["forces"])
    # "in kB" line of the OUTCAR, order xx yy zz xy yz zx, compression positive
    kb = [float(x) for x in re.findall(r"in kB(.*)", path.read_text())[-1].split()]
    xx, yy, zz, xy, yz, zx = np.array(kb) * KBAR_VASP
    np.testing.assert_allclose(s.stress, [[xx, xy, zx], [xy, yy, yz], [zx, yz, zz]], rtol=1e-12)


def test_vasp_truncated_run_reports_the_lost_step(shared_data, tmp_path):
    path = shared_data / "formats/vasp/NbCO_relax_vasprun.xml.gz"
    text = gzip.decompress(path.read_bytes()).decode()
    cuts = [m.start() for m in re.finditer("<calculation>", text)]
    path = tmp_path / "vasprun.xml"
    path.write_text(text[: cuts[5] + 2000])  # 5 complete steps, the 6th cut short
    errors, options = collecting()
    ours = list(read_structures(path, options=options))
    assert len(ours) == 5 and len(errors) == 1
    assert (errors[0].record, errors[0].field) == (5, "calculation")
    assert "vasprun.xml" in str(errors[0]) and "truncated" in str(errors[0])


# --- bad input -----------------------------------------------------------------------


def botnet_frames(shared_data, num: int) -> list[str]:
    lines = (shared_data / "molecules/botnet/dataset_3BPA/train_300K.xyz").read_text()
    lines = lines.splitlines(keepends=True)
    return ["".join(lines[k * 29 : (k + 1) * 29]) for k in range(num)]  # 27 atoms + 2


def test_extxyz_truncated_file(shared_data, tmp_path):
    frames = botnet_frames(shared_data, 4)
    path = tmp_path / "cut.xyz"
    path.write_text("".join(frames[:3]) + frames[3][: len(frames[3]) // 2])
    with pytest.raises(DataError) as info:
        read_all(path)
    msg = str(info.value)
    assert "cut.xyz" in msg and "record 3 (line 88)" in msg and "field 'atoms'" in msg
    errors, options = collecting()
    assert len(list(read_structures(path, options=options))) == 3 and len(errors) == 1


def test_extxyz_truncated_gzip(shared_data, tmp_path):
    """A .xyz.gz cut short: the frames before the cut are read, then one error."""
    data = gzip.compress("".join(botnet_frames(shared_data, 40)).encode())
    path = tmp_path / "cut.xyz.gz"
    path.write_bytes(data[: len(data) // 2])
    errors, options = collecting()
    ours = list(read_structures(path, options=options))
    assert 0 < len(ours) < 40 and len(errors) == 1
    assert errors[0].record.startswith(f"{len(ours)} ") and "cut.xyz.gz" in str(errors[0])
    ref = ase.io.read(shared_data / "molecules/botnet/dataset_3BPA/train_300K.xyz", f":{len(ours)}")
    assert [s.energy for s in ours] == [a.get_potential_energy() for a in ref]


def test_extxyz_skip_mode_continues(shared_data, tmp_path):
    frames = botnet_frames(shared_data, 6)
    bad = list(frames)
    bad[1] = bad[1].replace(" energy=", " nrg=")  # no energy
    atom_lines = bad[2].split("\n")
    atom_lines[5] = "C 0.1 zero 0.3 0.0 0.0 0.0"  # not a number
    bad[2] = "\n".join(atom_lines)
    bad[3] = "twenty-seven\n" + bad[3].split("\n", 1)[1]  # broken count line
    bad[4] = bad[4].replace("energy=", "energy=nan ignored=")  # NaN passes through
    path = tmp_path / "bad.xyz"
    path.write_text("".join(bad))
    with pytest.raises(DataError, match=r"bad\.xyz, record 1 \(line 30\), field 'energy'"):
        read_all(path)
    errors, options = collecting()
    ours = list(read_structures(path, options=options))
    assert [(e.record, e.field) for e in errors] == [
        ("1 (line 30)", "energy"),
        ("2 (line 59)", "atom lines 61-87"),
        ("3 (line 88)", "atom count"),
    ]
    assert [s.source_id for s in ours] == ["bad.xyz#0", "bad.xyz#4", "bad.xyz#5"]
    ref = ase.io.read(io.StringIO("".join(frames)), ":", format="extxyz")
    np.testing.assert_array_equal(ours[2].forces, ref[5].get_forces())
    assert np.isnan(ours[1].energy)
    with pytest.raises(DataError, match="not finite"):
        ours[1].validate("bad.xyz")


def mlearn_records(shared_data, num: int) -> list[dict]:
    path = shared_data / "crystals/mlearn/Si/training.json.gz"
    return json.loads(gzip.decompress(path.read_bytes()))[:num]


def test_json_records_bad_fields(shared_data, tmp_path):
    recs = mlearn_records(shared_data, 7)
    del recs[1]["outputs"]["energy"]
    recs[2]["outputs"]["forces"] = recs[2]["outputs"]["forces"][:-1]
    recs[3]["outputs"]["energy"] = "lots"
    del recs[4]["structure"]
    recs[5]["structure"]["sites"][0]["species"].append({"element": "Ge", "occu": 0.5})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(recs))
    with pytest.raises(DataError, match=r"bad\.json, record 1, field 'outputs\.energy'"):
        read_all(path)
    errors, options = collecting()
    ours = list(read_structures(path, options=options))
    assert [s.source_id for s in ours] == ["bad.json#0", "bad.json#6"]
    assert [(e.record, e.field) for e in errors] == [
        (1, "outputs.energy"),
        (2, "outputs.forces"),
        (3, "outputs.energy"),
        (4, "structure"),
        (5, "structure.sites[0].species"),
    ]
    assert "expected shape (63, 3), got (62, 3)" in str(errors[1])


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_json_truncated_file(shared_data, tmp_path, suffix):
    data = json.dumps(mlearn_records(shared_data, 5)).encode()
    path = tmp_path / f"cut{suffix}"
    if suffix == ".json.gz":
        path.write_bytes(gzip.compress(data)[:-100])  # also cuts the gzip trailer
    else:
        path.write_bytes(data[: len(data) * 3 // 4])
    errors, options = collecting()
    ours = list(read_structures(path, "pymatgen-json", options))
    assert len(ours) in (3, 4) and len(errors) == 1
    assert errors[0].file == str(path) and errors[0].record == len(ours)
    with pytest.raises(DataError, match=re.escape(f"cut{suffix}, record {len(ours)}")):
        read_all(path, "pymatgen-json")


def test_mptrj_frame_without_energy(shared_data, tmp_path):
    raw = json.loads((shared_data / MPTRJ_JSON).read_text())
    del raw["mp-1020019"]["mp-1095441-1-9"]["corrected_total_energy"]
    path = tmp_path / "mptrj.json"
    path.write_text(json.dumps(raw))
    errors, options = collecting()
    assert len(list(read_structures(path, options=options))) == 10
    assert str(errors[0]) == (
        f"{path}, record mp-1095441-1-9, field 'corrected_total_energy': "
        "missing; expected the total energy (a number)"
    )
    assert len(read_all(path, mptrj_energy="uncorrected")) == 11


# --- options and plumbing ------------------------------------------------------------


def test_cli_options():
    parser = argparse.ArgumentParser()
    add_reader_arguments(parser)
    args = parser.parse_args(
        [
            "--energy-key",
            "REF_energy",
            "--forces-key",
            "REF_forces",
            "--stress-key",
            "S",
            "--virial-key",
            "V",
            "--energy-unit",
            "kcal/mol",
            "--stress-unit",
            "kBar-vasp",
            "--stress-order",
            "xx,yy,zz,xy,zx,yz",
            "--mptrj-energy",
            "uncorrected",
        ]
    )
    opts = options_from_args(args)
    assert (opts.energy_key, opts.forces_key, opts.stress_key, opts.virial_key) == (
        "REF_energy",
        "REF_forces",
        "S",
        "V",
    )
    assert (opts.energy_unit, opts.stress_unit, opts.mptrj_energy) == (
        "kcal/mol",
        "kBar-vasp",
        "uncorrected",
    )
    assert opts.stress_order == MO_ORDER
    defaults = options_from_args(parser.parse_args([]))
    assert defaults.mptrj_energy == "corrected" and defaults.energy_unit is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--stress-order", "xx,yy,zz,xy,xy,yz"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--energy-unit", "Ry"])
    with pytest.raises(ValueError, match="stress unit"):
        ReaderOptions(stress_unit="atm")


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_json_stream_tiny_chunks(chunk):
    doc = {"a": [1.25, {"b": []}, -3e-5], "entries": [{"x": 12345.5}, {}, [True, None]], "z": {}}
    stream = JsonStream(io.StringIO(json.dumps(doc, indent=1)), chunk_chars=chunk)
    assert stream.open() == "{"
    got = dict(stream.members("{"))
    assert got == doc
