"""The ASE calculator over an exported model file, and the practical-evaluation
command on a model trained by the training command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk

from tests.train.conftest import train_cli


@pytest.fixture(scope="module")
def both_model(emt_shards, tmp_path_factory):
    """A tiny pet trained with both heads through the real CLI, exported."""
    run = tmp_path_factory.mktemp("both") / "run"
    train_cli(
        f"data.root={emt_shards}",
        "model=pet",
        "size=tiny",
        "forces=both",
        "logger=none",
        "data.max_atoms=64",
        "trainer.threads=1",
        "trainer.max_steps=6",
        "trainer.val_every=0",
        "trainer.checkpoint_every=6",
        f"run_dir={run}",
    )
    return run / "model.pt"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rattled_cu():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    return atoms


def test_a_both_file_serves_each_force_mode(both_model):
    from train.calculator import load_calculator
    from train.export import load_model
    from train.models import DIRECT_FORCES

    direct_model, _ = load_model(both_model, forces="direct", dtype=torch.float64)
    assert direct_model.forces == "direct"  # heads only: no autograd at inference
    both, _ = load_model(both_model, forces="both", dtype=torch.float64)
    atoms = rattled_cu()

    direct = load_calculator(both_model, forces="direct", dtype=torch.float64)
    conservative = load_calculator(both_model, forces="conservative", dtype=torch.float64)
    from train.calculator import ModelCalculator

    reference = ModelCalculator(both, ["Cu"]).evaluate  # keys of the `both` build
    a = atoms.copy()
    a.calc = direct
    f_direct = a.get_forces()
    from data_pipelines.batching import batch_structures
    from train.calculator import _structure

    out = both(batch_structures([_structure(atoms)], both.cutoff, dtype=torch.float64))
    np.testing.assert_allclose(f_direct, out[DIRECT_FORCES].detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(
        reference([atoms])[0]["forces"], out["forces"].detach().numpy(), atol=1e-10
    )

    # conservative forces are minus the gradient of the energy
    b = atoms.copy()
    b.calc = conservative
    forces = b.get_forces()
    step = 1e-5
    for i, k in ((0, 0), (3, 2), (6, 1)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += step
        minus.positions[i, k] -= step
        plus.calc = minus.calc = conservative
        fd = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * step)
        assert forces[i, k] == pytest.approx(fd, abs=1e-6)
    assert not np.allclose(forces, f_direct)  # two different force fields


def test_batched_rotational_average_matches_serial(both_model):
    from train.calculator import load_calculator
    from train.corrections import RotationalAverage

    atoms = rattled_cu()
    batched = load_calculator(
        both_model, forces="direct", rotational_average=2, dtype=torch.float64
    )
    serial = RotationalAverage(
        load_calculator(both_model, forces="direct", dtype=torch.float64), l_max=2
    )
    a, b = atoms.copy(), atoms.copy()
    a.calc, b.calc = batched, serial
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-9)
    np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-11)
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-9)
    assert batched.results["forces_rot_std"].max() > 0  # the model is not equivariant


def test_practical_command_on_a_trained_model(both_model, emt_shards, tmp_path):
    from analysis.workflows.command import main as command

    out = tmp_path / "practical"
    args = [
        "--model",
        str(both_model),
        "--test-data",
        emt_shards,
        "--out",
        str(out),
        "--quick",
        "--num-test",
        "1000",  # the whole test split
        "--variants",
        "direct",
        "direct-rot2",
        "--speed-atoms",
        "32",
    ]
    summary = command("practical", args)
    rows = summary["variants"]
    assert set(rows) == {"direct", "direct-rot2"}
    # the label errors agree with train.evaluate on the same split and force head
    from data_pipelines.dataset import load_manifest
    from train.evaluate import evaluate

    reference = evaluate(both_model, emt_shards, split="test", forces="direct")
    num_test = load_manifest(emt_shards)["splits"]["test"]["num_structures"]
    direct = rows["direct"]
    assert direct["labels/force_mae"] == pytest.approx(reference["val/forces_mae"], rel=1e-4)
    assert direct["labels/energy_mae_per_atom"] == pytest.approx(
        reference["val/energy_per_atom_mae"], rel=1e-4
    )
    for name, m in rows.items():
        assert m["labels/num_structures"] == num_test
        assert m["relax-fixsym/spacegroup_kept_fraction"] == 1.0, name
        # a model this short-trained may not hold fcc Cu together: then the phonon
        # step says so and counts it, instead of running on a collapsed cell
        assert m["phonon/num_structures"] + m["phonon/num_failed"] == 1
        assert m["speed/us_per_atom"] > 0
    # the grid removes what the random rotations see, up to the grid's degree
    assert summary["rotational_error_drop"]["direct-rot2"] > 10
    assert rows["direct-rot2"]["speed/num_rotations"] == 30
    table = (out / "table.md").read_text()
    assert "| direct-rot2 |" in table and "force MAE" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["variants"]["direct"]["labels/force_mae"] == rows["direct"]["labels/force_mae"]
    # a second call reuses every finished part
    stamp = (out / "direct" / "phonons" / "metrics.json").stat().st_mtime_ns
    command("practical", args)
    assert (out / "direct" / "phonons" / "metrics.json").stat().st_mtime_ns == stamp


def test_practical_command_rejects_bad_variants(both_model, emt_shards, tmp_path):
    from analysis.workflows.command import main as command

    with pytest.raises(SystemExit):
        command(
            "practical",
            [
                "--model",
                str(both_model),
                "--test-data",
                emt_shards,
                "--out",
                str(tmp_path),
                "--variants",
                "sideways",
            ],
        )


def test_speed_times_each_mode_and_a_compared_model(both_model, tmp_path):
    from analysis.workflows.command import main as command

    result = command(
        "speed",
        [
            "--model",
            str(both_model),
            "--sizes",
            "32",
            "--rot-l-max",
            "1",
            "--repeats",
            "1",
            "--compare",
            str(both_model),
            "--out",
            str(tmp_path),
        ],
    )
    timings = result["timings"]
    assert set(timings) == {"direct", "conservative", "rot1", "spacegroup", "pet-tiny"}
    assert (
        result["settings"]["num_params"]["pet-tiny"] == result["settings"]["num_params"]["direct"]
    )
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["speed/pet-tiny/n32/us_per_atom"] > 0
    assert m["speed/rot1/n32/cost_vs_plain_per_rotation"] > 0


def test_neighbour_list_reused_only_for_rigid_rotations():
    from scipy.spatial.transform import Rotation

    from data_pipelines.batching import make_graph
    from train.calculator import _rotated_graph, _structure
    from train.corrections import transform_atoms

    atoms = rattled_cu()
    graph = make_graph(_structure(atoms), 4.0)
    rot = Rotation.random(random_state=1).as_matrix()
    turned = _rotated_graph(graph, _structure(transform_atoms(atoms, rot)))
    assert turned is not None and turned.edge_i is graph.edge_i
    fresh = make_graph(_structure(transform_atoms(atoms, rot)), 4.0)
    assert sorted(zip(fresh.edge_i, fresh.edge_j, map(tuple, fresh.shifts))) == sorted(
        zip(graph.edge_i, graph.edge_j, map(tuple, graph.shifts))
    )
    strained = atoms.copy()
    strained.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    assert _rotated_graph(graph, _structure(strained)) is None
    moved = atoms.copy()
    moved.positions[0] += 0.01
    assert _rotated_graph(graph, _structure(moved)) is None
    other = atoms.copy()
    other.numbers[0] = 79
    assert _rotated_graph(graph, _structure(other)) is None


def test_corrections_benchmark_reports_cost_per_rotation(tmp_path):
    from analysis.bench import corrections as bench_corrections

    out = tmp_path / "corrections.json"
    bench_corrections.main(["--out", str(out), "--sizes", "8", "--l-max", "1", "--repeats", "1"])
    result = json.loads(out.read_text())
    rot = result["timings"]["direct/n8"]["rot1"]
    assert rot["num_rotations"] == 18 and rot["cost_per_rotation"] > 0
    assert result["summary"]["target_per_rotation"] == 1.2
    assert isinstance(result["summary"]["target_met"], bool)
