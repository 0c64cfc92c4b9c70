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


def test_a_grid_tunes_on_its_own_terms(root, tmp_path):
    """A grid's own tune/tune_at replace the study's: pet tunes at its narrowest
    width and transfers, mace (tune: {}) runs its default once per size."""
    grids = [
        {"model": ["pet-direct"], "size": ["w8", "w16"], "tune_at": {"size": "w8"}},
        {"model": ["mace"], "size": ["tiny", "mini"], "tune": {}},
    ]
    study = StudyConfig(name="g", grids=grids, tune={"optim.lr": [1e-3, 1e-2]})
    runs = expand(study, tmp_path, root, [])
    assert [r.name for r in runs] == ["pet-direct_w8_lr0.001", "pet-direct_w8_lr0.01",
                                      "pet-direct_w16_lr0.001", "mace_tiny", "mace_mini"]
    assert "waits for the tuning runs of pet-direct_w8" in runs[2].waiting
    assert runs[3].waiting is None and not any("optim.lr" in o for o in runs[3].overrides)


def test_a_tuned_ladder_is_judged_by_its_last_cooldown(root, tmp_path):
    """The main run of a WSD ladder never decays: the transferred value is the
    one whose last cooldown branch is best, even where the mains disagree."""
    import json

    study = StudyConfig(
        name="g", grids=[{"model": ["pet-direct"], "size": ["w8", "w16"]}],
        tune={"optim.lr": [1e-3, 1e-2]}, tune_at={"size": "w8"},
        budget=BudgetConfig(rule="wsd-ladder", steps=20, decay_at=[0.5, 1.0]),
    )
    # mains: the low rate looks better; last cooldowns: the high rate is better
    scores = {"lr0.001": 0.1, "lr0.001_cd1": 0.09, "lr0.01": 0.2, "lr0.01_cd1": 0.05,
              "lr0.001_cd0": 0.3, "lr0.01_cd0": 0.3}
    for suffix, value in scores.items():
        run = tmp_path / "runs" / f"pet-direct_w8_{suffix}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(
            json.dumps({"status": "finished", "val/forces_mae": value}))
    runs = expand(study, tmp_path, root, [])
    transferred = [r for r in runs if r.name.startswith("pet-direct_w16")]
    assert [r.name for r in transferred] == ["pet-direct_w16_lr0.01"]
    assert transferred[0].waiting is None
    assert [b.name for b in transferred[0].branches] == ["pet-direct_w16_lr0.01_cd0",
                                                         "pet-direct_w16_lr0.01_cd1"]
