"""study.grids: a study made of several cartesian grids, each with its own axes
and overrides (pet at widths under muP, mace at its own sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipelines.convert import write_dataset
from slurm.study import BudgetConfig, StudyConfig, expand
from tests.data_pipelines.helpers import emt_structures


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("grid_data")
    write_dataset(emt_structures(20, seed=1, molecules=False), out, shard_size=10,
                  splits={"train": 0.8, "val": 0.2})
    return str(out)


def test_grids_are_a_union_of_products_with_their_own_overrides(root, tmp_path):
    study = StudyConfig(
        name="g",
        axes={"data_fraction": [1.0]},
        grids=[
            {"model": ["pet-direct", "pet-conservative"], "size": ["w8", "w16"],
             "train": ["model.knobs.parametrization=mup", "model.knobs.mup_base_width=16"]},
            {"model": ["mace"], "size": ["tiny"]},
        ],
        budget=BudgetConfig(rule="steps", steps=5),
        train=["data.max_atoms=64"],
    )
    runs = expand(study, tmp_path, root, [])
    names = [r.name for r in runs]
    assert names == ["pet-direct_w8_f1", "pet-direct_w16_f1", "pet-conservative_w8_f1",
                     "pet-conservative_w16_f1", "mace_tiny_f1"]
    pet, mace = runs[0], runs[-1]
    assert "model.knobs.parametrization=mup" in pet.overrides
    assert not any("parametrization" in o for o in mace.overrides)
    assert "size=tiny" in mace.overrides and "model=mace" in mace.overrides
    assert all("data.fraction=1.0" in r.overrides for r in runs)  # the shared axis


def test_tune_at_names_an_axis_of_some_grid(root, tmp_path):
    grids = [{"model": ["pet-direct"], "size": ["w8"]}, {"model": ["mace"], "size": ["tiny"]}]
    study = StudyConfig(name="g", grids=grids, tune={"optim.lr": [1e-3, 1e-2]},
                        tune_at={"size": "tiny"})  # an axis value of the second grid only
    names = [r.name for r in expand(study, tmp_path, root, [])]
    assert names[-2:] == ["mace_tiny_lr0.001", "mace_tiny_lr0.01"]  # tuned at its point
    study.tune_at = {"seed": 0}
    with pytest.raises(ValueError, match="not axes"):
        expand(study, tmp_path, root, [])


@pytest.mark.parametrize("name", sorted(
    p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "study").glob("*.yaml")))
def test_every_committed_study_composes_and_expands(name, root, tmp_path):
    """Each configs/study/NAME.yaml composes through the sweep's own path and
    expands into named runs whose sizes are choices of configs/size/."""
    from slurm.sweep import compose_sweep

    cfg, _ = compose_sweep([f"study={name}", "cluster=local", f"study_dir={tmp_path}"])
    runs = [r for spec in expand(cfg.study, tmp_path, root, []) for r in spec.all_runs()]
    assert runs and len({r.name for r in runs}) == len(runs)
    sizes = {o.split("=", 1)[1] for r in runs for o in r.overrides if o.startswith("size=")}
    configs = {p.stem for p in (Path(__file__).resolve().parents[2] / "configs" / "size").glob(
        "*.yaml")}
    assert sizes <= configs, f"{name}: sizes without a configs/size/ file: {sizes - configs}"
