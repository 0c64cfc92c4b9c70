"""A study's generated data is keyed by every generation setting and never
replaced under the runs trained on it."""

from __future__ import annotations

import json

import pytest

from slurm.study import StudyConfig, StudyDataConfig
from slurm.study_data import StudyDataMismatch, prepare_data


def study(**generate) -> StudyConfig:
    settings = {"calculator": "emt", "num_structures": 12, "seed": 0, "shard_size": 6}
    return StudyConfig(name="t", data=StudyDataConfig(generate={**settings, **generate}))


def test_same_settings_reuse_the_data(tmp_path):
    root = prepare_data(study(), tmp_path)
    manifest = (tmp_path / "data" / "manifest.json").read_text()
    assert prepare_data(study(), tmp_path) == root
    assert (tmp_path / "data" / "manifest.json").read_text() == manifest  # not regenerated
    options = json.loads(manifest)["sources"][0]["options"]
    assert options == {"calculator": "emt", "num_structures": 12, "seed": 0, "shard_size": 6}


@pytest.mark.parametrize(
    ("changed", "value"), [("seed", 1), ("num_structures", 10), ("shard_size", 4)]
)
def test_changed_settings_stop_and_touch_nothing(tmp_path, changed, value):
    prepare_data(study(), tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    with pytest.raises(StudyDataMismatch, match=rf"{changed}: .* there, {value!r} asked"):
        prepare_data(study(**{changed: value}), tmp_path)
    after = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    assert after == before


def test_unknown_generation_setting_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown settings \['sede'\]"):
        prepare_data(study(sede=3), tmp_path)
