"""Training with a head per level of theory, and fine-tuning from a parent run:
per-head baselines from each head's own sources, the head chosen at inference,
and a fine-tune that starts exactly at its parent's error."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.convert import write_dataset
from data_pipelines.dataset import open_dataset
from tests.data_pipelines.helpers import emt_structures
from train.config import ConfigError, compose, to_object
from train.run import run

BASE = ["model=pet", "size=tiny", "forces=direct", "data.max_atoms=64", "engine=torch",
        "trainer.threads=1", "logger=none", "trainer.log_every=1", "trainer.val_every=0"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Two EMT sets labelled with different levels, and a third at the first level."""
    out = {}
    for key, level, seed in (("emt", "EMT", 20), ("pbe", "PBE", 21), ("emt2", "EMT", 22)):
        path = tmp_path_factory.mktemp(key)
        structures = emt_structures(60, seed=seed, prefix=key, molecules=False)
        if key == "pbe":  # another "level of theory": energies shifted per atom
            for s in structures:
                s.energy = s.energy - 0.75 * s.num_atoms
        write_dataset(structures, path, shard_size=30, pack_size=8,
                      splits={"train": 0.8, "val": 0.2}, level_of_theory=level)
        out[key] = str(path)
    return out


def _sources(*entries):
    return "data.sources=[" + ",".join("{" + e + "}" for e in entries) + "]"


@pytest.fixture(scope="module")
def heads_run(roots, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "heads"
    mix = _sources(f"root:'{roots['emt']}',name:emt", f"root:'{roots['pbe']}',name:pbe")
    cfg = to_object(compose([*BASE, mix, "model.knobs.heads=[EMT,PBE]", "trainer.max_steps=6",
                             f"run_dir={out}"]))
    return out, run(cfg)


def test_a_head_per_level_of_theory(roots, heads_run):
    run_dir, summary = heads_run
    tmp_path = run_dir.parent
    assert [s["head"] for s in summary["data"]["sources"]] == ["EMT", "PBE"]
    from train.calculator import load_calculator
    from train.export import load_model

    model, payload = load_model(tmp_path / "heads" / "model.pt")
    assert model.head_names == ("EMT", "PBE")
    for k, key in enumerate(("emt", "pbe")):  # each head's baseline is its own source's
        refs = open_dataset(roots[key]).stats["element_reference_energies_by_z"]
        for z, e in refs.items():
            assert float(model.composition_baseline[k, int(z)]) == pytest.approx(e, abs=1e-5)
    assert payload["card"]["sources"]["pbe"]["head"] == "PBE"
    atoms = emt_structures(1, seed=5, prefix="x", molecules=False)[0]
    from ase import Atoms

    energies = {}
    for head in ("EMT", "PBE"):
        calc = load_calculator(tmp_path / "heads" / "model.pt", head=head)
        a = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        a.calc = calc
        energies[head] = a.get_potential_energy()
    # the PBE-labelled data sits 0.75 eV/atom lower, and so does its head: by its
    # own baseline (fitted on its source), up to what 6 steps taught the readouts
    shift = sum(float(model.composition_baseline[0, z] - model.composition_baseline[1, z])
                for z in atoms.numbers)
    assert shift == pytest.approx(0.75 * atoms.num_atoms, rel=0.2)
    assert energies["EMT"] - energies["PBE"] == pytest.approx(shift, abs=0.1 * atoms.num_atoms)
    from data_pipelines.batching import batch_structures

    batch = batch_structures([atoms], model.cutoff, dtype=model.dtype)
    for head in ("EMT", "PBE"):  # the calculator's head is the model's head
        alone = model.single_head(head)(batch)["energy"]
        assert energies[head] == pytest.approx(float(alone.detach()), abs=1e-5)
    with pytest.raises(ValueError, match="unknown head 'r2SCAN'; this model's heads: EMT, PBE"):
        load_calculator(tmp_path / "heads" / "model.pt", head="r2SCAN")


def test_a_source_whose_level_is_no_head_is_refused(roots, tmp_path):
    mix = _sources(f"root:'{roots['emt']}',name:emt", f"root:'{roots['pbe']}',name:pbe")
    cfg = to_object(compose([*BASE, mix, "model.knobs.heads=[EMT,r2SCAN]", "trainer.max_steps=2",
                             f"run_dir={tmp_path / 'x'}"]))
    with pytest.raises(ConfigError, match=r"pbe: its level of theory 'PBE' is not one of "
                                          r"model.knobs.heads \(EMT, r2SCAN\)"):
        run(cfg)
    # an explicit head: entry sends a source to a head on purpose
    mix = _sources(f"root:'{roots['emt']}',name:emt", f"root:'{roots['pbe']}',name:pbe,head:r2SCAN")
    cfg = to_object(compose([*BASE, mix, "model.knobs.heads=[EMT,r2SCAN]", "trainer.max_steps=2",
                             f"run_dir={tmp_path / 'y'}"]))
    assert run(cfg)["data"]["sources"][1]["head"] == "r2SCAN"


def test_fine_tune_starts_at_the_parents_error(roots, tmp_path):
    """Step-0 validation error of a fine-tune equals the parent's final one on the
    same data, to 1e-6: the parent's baselines and scale are kept, not recomputed
    from the fine-tune's data (here a mixture whose references differ)."""
    parent = tmp_path / "parent"
    summary = run(to_object(compose([*BASE, f"data.root={roots['emt']}", "trainer.max_steps=8",
                                     f"run_dir={parent}"])))
    mix = _sources(f"root:'{roots['emt']}',name:a", f"root:'{roots['emt2']}',name:b")
    # the fine-tune's own statistics differ from the parent's: recomputing them would jump
    from train.build import open_data

    fresh = open_data(to_object(compose([*BASE, mix]))).stats
    own = open_dataset(roots["emt"]).stats
    assert max(abs(fresh["element_reference_energies_by_z"][z] - e)
               for z, e in own["element_reference_energies_by_z"].items()) > 1e-4
    # optim.lr=0: one step leaves weights and EMA exactly as loaded, so the final
    # validation is the fine-tune's step-0 validation
    child = run(to_object(compose([*BASE, mix, f"trainer.init_from={parent}", "optim.lr=0",
                                   "trainer.max_steps=1", f"run_dir={tmp_path / 'child'}"])))
    for key in ("energy_per_atom_mae", "energy_per_atom_rmse", "forces_mae", "stress_mae"):
        assert child[f"val/a/{key}"] == pytest.approx(summary[f"val/{key}"], abs=1e-6), key
    card = torch.load(tmp_path / "child" / "model.pt", weights_only=True)
    assert card["statistics_origin"]["from"] == str(parent)
    assert card["energy_scale"] == pytest.approx(
        torch.load(parent / "model.pt", weights_only=True)["energy_scale"])


def test_fine_tune_refuses_other_heads(roots, tmp_path):
    parent = tmp_path / "parent"
    run(to_object(compose([*BASE, f"data.root={roots['emt']}", "trainer.max_steps=2",
                           f"run_dir={parent}"])))
    mix = _sources(f"root:'{roots['emt']}',name:emt", f"root:'{roots['pbe']}',name:pbe")
    cfg = to_object(compose([*BASE, mix, "model.knobs.heads=[EMT,PBE]", "trainer.max_steps=1",
                             f"trainer.init_from={parent}", f"run_dir={tmp_path / 'c'}"]))
    with pytest.raises(ConfigError, match="weights do not fit this model .*heads EMT, PBE"):
        run(cfg)


def test_metatomic_export_takes_the_head(heads_run, tmp_path, capsys):
    """One metatomic file per head (--head), each computing that head's energy."""
    from ase import Atoms
    from metatomic.torch import load_atomistic_model
    from metatomic_ase import MetatomicCalculator

    from train.calculator import load_calculator
    from train.card import read_card
    from train.export import main

    run_dir, _ = heads_run
    s = emt_structures(1, seed=9, prefix="m", molecules=False)[0]
    for head in ("EMT", "PBE"):
        out = tmp_path / f"{head}.pt"
        assert main([str(run_dir / "model.pt"), "--format", "metatomic", "--head", head,
                     "--dtype", "float64", "--out", str(out)]) == 0
        assert read_card(out)["head"] == head
        a = Atoms(s.numbers, s.positions, cell=s.cell, pbc=s.pbc)
        a.calc = MetatomicCalculator(load_atomistic_model(str(out)))
        ours = Atoms(s.numbers, s.positions, cell=s.cell, pbc=s.pbc)
        ours.calc = load_calculator(run_dir / "model.pt", head=head, dtype=torch.float64)
        assert a.get_potential_energy() == pytest.approx(ours.get_potential_energy(), abs=1e-6)
    with pytest.raises(SystemExit):  # an unknown head: argparse's error names the heads
        main([str(run_dir / "model.pt"), "--format", "metatomic", "--head", "r2SCAN",
              "--out", str(tmp_path / "x.pt")])
    assert "unknown head 'r2SCAN'; this model's heads: EMT, PBE" in capsys.readouterr().err


def test_one_root_trains_its_own_head_and_a_fine_tune_keeps_every_head(roots, heads_run, tmp_path):
    """One root with heads trains the head of its level (the others keep their
    references: zeros when fresh, the parent's when fine-tuned)."""
    from train.export import load_model

    args = [*BASE, f"data.root={roots['pbe']}", "model.knobs.heads=[EMT,PBE]",
            "trainer.max_steps=2"]
    summary = run(to_object(compose([*args, f"run_dir={tmp_path / 'one'}"])))
    assert summary["data"]["head"] == "PBE"
    model, _ = load_model(tmp_path / "one" / "model.pt")
    assert float(model.composition_baseline[0].abs().sum()) == 0.0  # EMT: no data
    assert float(model.composition_baseline[1, 29]) == pytest.approx(
        open_dataset(roots["pbe"]).stats["element_reference_energies_by_z"]["29"], abs=1e-5)
    parent_dir, _ = heads_run
    parent, _ = load_model(parent_dir / "model.pt")
    run(to_object(compose([*args, f"trainer.init_from={parent_dir}",
                           f"run_dir={tmp_path / 'ft'}"])))
    child, payload = load_model(tmp_path / "ft" / "model.pt")
    torch.testing.assert_close(child.composition_baseline, parent.composition_baseline,
                               rtol=0, atol=0)
    assert payload["statistics_origin"]["heads"] == ["EMT", "PBE"]


def test_a_model_file_whose_weights_and_statistics_disagree_is_refused(heads_run, tmp_path):
    from train.export import load_model

    run_dir, _ = heads_run
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    z = next(iter(payload["baselines"]["PBE"]))
    payload["baselines"]["PBE"][z] += 0.5
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=f"baseline of head PBE element Z={z} is .* eV in the "
                                         "weights but .* in the recorded statistics"):
        load_model(tmp_path / "bad.pt")
