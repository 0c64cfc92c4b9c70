"""The convert and inspect commands on real files: source -> shard -> batch exact."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from ase.io import read

from data_pipelines import schema as K
from data_pipelines.convert import main as convert
from data_pipelines.inspect import main as inspect_main
from data_pipelines.loader import LoaderConfig, StreamingLoader
from tests.conftest import REPO


def test_real_extxyz_round_trip_is_bit_exact(shared_data, tmp_path):
    src = shared_data / "formats" / "extxyz-odd-keys" / "carbon_reduced_100.xyz"
    out = tmp_path / "carbon"
    assert convert([str(src), "--out", str(out), "--forces-key", "force", "--virial-key",
                    "virial", "--split", "train=1.0", "--shard-size", "30", "--no-progress",
                    "--level-of-theory", "CASTEP LDA"]) == 0
    frames = read(src, index=":")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_structures"] == len(frames) == 100
    assert manifest["level_of_theory"] == "CASTEP LDA"
    assert [s["num_structures"] for s in manifest["splits"]["train"]["shards"]] == [30, 30, 30, 10]
    seen = 0
    for batch in StreamingLoader(LoaderConfig(root=str(out), cutoff=3.0, max_atoms=40,
                                              shuffle=False)):
        ptr = batch[K.PTR].numpy()
        for k, sid in enumerate(batch[K.IDS]):
            atoms = frames[int(sid.split("#")[1])]
            sl = slice(ptr[k], ptr[k + 1])
            assert np.array_equal(batch[K.POSITIONS][sl].numpy(), atoms.positions)
            assert np.array_equal(batch[K.FORCES][sl].numpy(), atoms.arrays["force"])
            assert batch[K.ENERGY][k].item() == atoms.info.get("energy",
                                                               atoms.calc.results.get("energy"))
            virial = np.array(atoms.info["virial"], dtype=float).reshape(3, 3)
            expected = -virial / atoms.get_volume()
            assert np.allclose(batch[K.STRESS][k].numpy(), expected, rtol=1e-12, atol=0)
            seen += 1
    assert seen == 100


def test_inspect_export_reads_back_with_ase(shared_data, tmp_path):
    src = shared_data / "formats" / "extxyz-odd-keys" / "ethanol_reduced_100.xyz"
    out = tmp_path / "ethanol"
    convert([str(src), "--out", str(out), "--energy-unit", "kcal/mol", "--split",
             "train=1.0", "--no-progress"])
    assert inspect_main([str(out), "--export", "extxyz", str(tmp_path / "back.xyz")]) == 0
    back = read(tmp_path / "back.xyz", index=":")
    orig = read(src, index=":")
    from ase.units import kcal, mol

    for a in back:
        ref = orig[int(a.info["source_id"].split("#")[1])]
        assert np.array_equal(a.positions, ref.positions)
        assert np.isclose(a.get_potential_energy(), ref.get_potential_energy() * kcal / mol,
                          rtol=1e-12)
        assert np.allclose(a.get_forces(), ref.get_forces() * kcal / mol, rtol=1e-12)


def test_cli_error_names_file_record_field(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=nan pbc=\"F F F\"\n"
                   "H 0 0 0 0 0 0\nH 0 0 0.74 0 0 0\n")
    proc = subprocess.run([sys.executable, "-m", "data_pipelines.convert", str(bad), "--out",
                           str(tmp_path / "o"), "--no-progress"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bad.xyz" in proc.stderr and "field 'energy'" in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "data_pipelines.convert", str(bad), "--out",
                         str(tmp_path / "o"), "--no-progress", "--skip-invalid",
                         "--allow-empty"], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "skipped 1 invalid records" in ok.stdout
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["skipped"]["total"] == 1


def test_a_conversion_that_keeps_nothing_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.xyz"
    frame = ("2\nProperties=species:S:1:pos:R:3:forces:R:3 energy={e} pbc=\"F F F\"\n"
             "H 0 0 0 0 0 0\nH 0 0 0.74 0 0 0\n")
    bad.write_text(frame.format(e="nan") * 2 + frame.format(e="inf"))
    out = tmp_path / "o"
    args = [str(bad), "--out", str(out), "--no-progress", "--skip-invalid"]
    assert convert(args) == 2
    err = capsys.readouterr().err
    assert "no structures to write" in err and "all 3 records were skipped" in err
    assert "2 x energy: energy is not finite (nan)" in err and "1 x energy: " in err
    assert "--allow-empty" in err
    assert not (out / "manifest.json").exists()  # nothing that looks like a dataset
    assert convert([*args, "--allow-empty"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_structures"] == 0 and manifest["skipped"]["total"] == 3
