"""train.evaluate: errors per configuration type and element that add up to the
totals, a table with units, keys named after the split, parity plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.convert import write_dataset
from tests.data_pipelines.helpers import emt_structures
from train.evaluate import evaluate, format_report

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "tests" / "assets" / "format-v2" / "model.pt"  # a tiny pet, Al..Au


@pytest.fixture(scope="module")
def typed_shards(tmp_path_factory) -> str:
    structures = emt_structures(24, seed=3, molecules=False)
    for k, s in enumerate(structures):
        if k % 4:  # a quarter without a type, as in a mixed dataset
            s.info["config_type"] = ["AIMD", "Surface", "Vacancy"][k % 3]
    out = tmp_path_factory.mktemp("typed")
    write_dataset(structures, out, splits={"test": 1.0}, shard_size=8, pack_size=4)
    return str(out)


def test_breakdowns_add_up_to_the_totals(typed_shards):
    result = evaluate(MODEL, typed_shards, split="test", prefix="test")
    types = result["by_config_type"]
    assert set(types) == {"AIMD", "Surface", "Vacancy", "(none)"}
    assert list(types)[-1] == "(none)"
    assert sum(t["num_structures"] for t in types.values()) == result["num_structures"] == 24
    assert sum(t["num_atoms"] for t in types.values()) == result["num_atoms"]
    for q in ("energy_per_atom", "forces", "stress"):
        # structure-weighted (energy, stress) or atom-weighted (forces) means of the parts
        weight = "num_atoms" if q == "forces" else "num_structures"
        total = sum(t[f"{q}_mae"] * t[weight] for t in types.values()) / sum(
            t[weight] for t in types.values())
        assert total == pytest.approx(result[f"test/{q}_mae"], rel=1e-9)
    elements = result["by_element"]
    assert sum(e["num_atoms"] for e in elements.values()) == result["num_atoms"]
    total = sum(e["forces_mae"] * e["num_atoms"] for e in elements.values()) / result["num_atoms"]
    assert total == pytest.approx(result["test/forces_mae"], rel=1e-9)
    assert result["test/forces_mae/Cu"] == elements["Cu"]["forces_mae"]
    assert result["units"]["forces"] == "eV/A"


def test_default_prefix_matches_metrics_jsonl(typed_shards):
    result = evaluate(MODEL, typed_shards, split="test")
    assert "val/forces_mae" in result and "test/forces_mae" not in result


def test_no_config_types_means_no_type_table(emt_shards):
    result = evaluate(MODEL, emt_shards, split="val", prefix="val")
    assert result["by_config_type"] == {}
    text = format_report(result, "val")
    assert "configuration type" not in text and "forces by element" in text


def test_cli_table_json_and_parity(typed_shards, tmp_path):
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [sys.executable, "-m", "train.evaluate", str(MODEL), "--data", typed_shards,
         "--split", "test", "--out", str(out), "--parity", str(tmp_path / "parity")],
        cwd=REPO, capture_output=True, text=True, check=True)
    text = proc.stdout
    for needle in ("meV/atom", "meV/A", "meV/A^3", "MAE by configuration type", "Surface",
                   "forces by element", "Cu"):
        assert needle in text, needle
    assert f"metrics (eV units, JSON): {out}" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("test MAE: energy ") and "meV/A" in last and "24 structures" in last
    data = json.loads(out.read_text())
    assert "test/forces_mae" in data and not any(k.startswith("val/") for k in data)
    shown = float(last.split("forces ")[1].split()[0])
    assert shown == pytest.approx(data["test/forces_mae"] * 1e3, rel=1e-2)
    pngs = sorted(Path(p).name for p in data["parity_plots"])
    assert pngs == ["parity_energy_per_atom.png", "parity_forces.png", "parity_stress.png"]
    for name in pngs:
        head = (tmp_path / "parity" / name).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n"
    as_json = subprocess.run(
        [sys.executable, "-m", "train.evaluate", str(MODEL), "--data", typed_shards, "--json"],
        cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(as_json.stdout)["test/forces_mae"] == data["test/forces_mae"]


def test_parity_points_are_the_labels(typed_shards, tmp_path):
    from train.parity import ParityPoints

    points = ParityPoints()
    points.add("forces", np.array([[1.0, 2.0, 3.0]]), np.array([[1.5, 2.0, 2.0]]))
    pred, ref = points.arrays("forces")
    assert np.array_equal(pred - ref, [-0.5, 0.0, 1.0])
    assert points.arrays("stress") is None


def test_parity_points_carry_each_values_configuration_type(typed_shards):
    """Every parity value is tagged with its structure's type: one per structure for
    energy, three per atom for forces, nine per structure for stress."""
    import torch

    from data_pipelines import schema as K
    from data_pipelines.loader import LoaderConfig, StreamingLoader
    from train.evaluate import _gather
    from train.export import load_model
    from train.parity import ParityPoints

    model, _ = load_model(MODEL)
    loader = StreamingLoader(LoaderConfig(root=typed_shards, split="test", cutoff=model.cutoff,
                                          max_atoms=512, shuffle=False))
    points, want = ParityPoints(), {"energy_per_atom": {}, "forces": {}, "stress": {}}
    for batch in loader:
        with torch.no_grad():
            out = model(batch)
        _gather(points, batch, out)
        for name, n in zip(batch[K.CONFIG_TYPE], batch[K.NUM_ATOMS].tolist()):
            name = name or "(none)"
            for q, per in (("energy_per_atom", 1), ("forces", 3 * n), ("stress", 9)):
                want[q][name] = want[q].get(name, 0) + per
    for q, counts in want.items():
        groups = points.groups(q)
        assert len(groups) == len(points.arrays(q)[0])
        got = {g: int((groups == g).sum()) for g in set(groups)}
        assert got == counts, q


def test_parity_figure_has_a_colour_and_an_mae_per_configuration_type():
    import matplotlib.pyplot as plt

    from train.parity import parity_figure

    ref = np.linspace(-1, 1, 12)
    pred = ref + np.repeat([0.1, -0.3, 0.0], 4)
    groups = np.array(["Surface"] * 4 + ["AIMD"] * 4 + ["(none)"] * 4, dtype=object)
    fig = parity_figure(pred, ref, "force components", "eV/Å", "t", groups)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["y = x", "AIMD: MAE 0.3", "Surface: MAE 0.1", "(none): MAE 0"]
    assert fig.axes[0].get_legend().get_title().get_text() == "configuration type (MAE, eV/Å)"
    colours = {tuple(c.get_facecolor()[0][:3]) for c in fig.axes[0].collections}
    assert len(colours) == 3
    plt.close(fig)
    one = parity_figure(pred, ref, "force components", "eV/Å", "t", None)
    assert [t.get_text() for t in one.axes[0].get_legend().get_texts()] == ["y = x"]
    plt.close(one)


def test_cli_bad_input_is_one_line_naming_it(typed_shards, tmp_path):
    runs = [
        ([str(MODEL), "--data", typed_shards, "--split", "tst"], "no split 'tst'"),
        ([str(tmp_path / "nope"), "--data", typed_shards], f"{tmp_path / 'nope'}"),
        ([str(tmp_path), "--data", typed_shards], "not a run directory"),
    ]
    for args, needle in runs:
        proc = subprocess.run([sys.executable, "-m", "train.evaluate", *args], cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
