"""Configuration types (AIMD, Vacancy, Elastic, Surface...) travel from the files
through the shards into the batch, and old shards without one stay readable."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from data_pipelines import schema as K
from data_pipelines.convert import write_dataset
from data_pipelines.loader import LoaderConfig, StreamingLoader
from data_pipelines.schema import Structure, config_type_of
from data_pipelines.shards import ShardWriter, decode_pack, encode_pack
from data_pipelines.sources import ReaderOptions, read_structures
from data_pipelines.sources.pymatgen_json import data_group, is_composition
from tests.data_pipelines.helpers import emt_structures


def test_mlearn_group_is_the_config_type(shared_data):
    got = Counter(
        s.info["config_type"]
        for s in read_structures(shared_data / "crystals/mlearn/Si/training.json.gz")
    )
    assert got == {"AIMD-NVT": 90, "Vacancy": 57, "Elastic": 55, "Surface": 12}


@pytest.mark.parametrize(("name", "expected"), [("Mo_Elastic", "Elastic"), ("MoW_SS", "SS"),
                                                ("Nb_Surface", "Surface"), ("W_AIMD", "AIMD")])
def test_maml_data_group_is_the_config_type(shared_data, name, expected):
    path = shared_data / f"crystals/maml-MoNbTaW/{name}.json.gz"
    structures = list(read_structures(path))
    assert {s.info["config_type"] for s in structures} == {expected}
    assert all("group" in s.info for s in structures)  # the raw fields stay too


def test_composition_and_data_group_names():
    assert is_composition("Mo") and is_composition("W-Mo") and is_composition("Ni3Mo")
    assert not is_composition("AIMD-NVT") and not is_composition("Vacancy")
    assert not is_composition("Surface") and not is_composition("Elastic")
    assert data_group(Path("x/Mo_AIMD.json.gz")) == "AIMD"
    assert data_group(Path("training.json.gz")) is None
    assert data_group(Path("Vacancy_set.json")) is None  # head is not a composition


def _labelled(config_type: str, seed: int):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.info["config_type"] = config_type
    atoms.info["kind_of_cell"] = config_type.upper()
    return atoms


def test_extxyz_config_type_and_its_key(tmp_path):
    path = tmp_path / "a.xyz"
    ase.io.write(path, [_labelled("bulk", 0), _labelled("surface", 1)], format="extxyz")
    assert [s.info["config_type"] for s in read_structures(path)] == ["bulk", "surface"]
    other = ReaderOptions(config_type_key="kind_of_cell")
    assert [s.info["config_type"] for s in read_structures(path, options=other)] == [
        "BULK", "SURFACE"]


def test_ase_db_config_type(tmp_path):
    path = tmp_path / "a.db"
    with ase.db.connect(path) as db:
        db.write(_labelled("bulk", 0), config_type="bulk")
        db.write(_labelled("vac", 1), data={"label": 7})
        db.write(_labelled("none", 2))
    got = [s.info.get("config_type") for s in read_structures(path)]
    assert got == ["bulk", None, None]
    keyed = read_structures(path, options=ReaderOptions(config_type_key="label"))
    assert [s.info.get("config_type") for s in keyed] == [None, "7", None]


def test_config_type_reaches_the_batch_and_the_manifest(tmp_path):
    structures = emt_structures(30, molecules=False)
    for k, s in enumerate(structures):
        if k % 3:
            s.info["config_type"] = "AIMD" if k % 3 == 1 else "Surface"
    manifest = write_dataset(structures, tmp_path, splits={"train": 1.0}, shard_size=8,
                             pack_size=3)
    expected = {s.source_id: s.info.get("config_type") for s in structures}
    loader = StreamingLoader(LoaderConfig(root=str(tmp_path), split="train", cutoff=4.0,
                                          max_atoms=40, shuffle=False))
    seen = {}
    for batch in loader:
        assert len(batch[K.CONFIG_TYPE]) == len(batch[K.IDS])
        seen.update(zip(batch[K.IDS], batch[K.CONFIG_TYPE]))
    assert seen == expected
    assert manifest["splits"]["train"]["config_types"] == {"(none)": 10, "AIMD": 10,
                                                           "Surface": 10}


def _old_style_pack(structures: list[Structure]) -> bytes:
    """A pack as written before readers kept config types: info without the key."""
    for s in structures:
        s.info = {"mp_id": "mp-1"}
    return encode_pack(structures)


def test_old_shards_without_config_type_read_as_none(tmp_path):
    structures = emt_structures(4, molecules=False)
    blob = _old_style_pack(structures)
    back = decode_pack(blob)
    assert [config_type_of(s.info) for s in back] == [None] * 4
    # and through the loader: a data root whose shard holds that pack
    write_dataset(emt_structures(4, molecules=False), tmp_path, splits={"train": 1.0})
    shard = tmp_path / "train" / "shard-000000.tar"
    buf = io.BytesIO()
    writer = ShardWriter(buf)
    writer.add("s000000p000000", blob)
    writer.close()
    shard.write_bytes(buf.getvalue())
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    entry.update(bytes=len(buf.getvalue()), sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    loader = StreamingLoader(LoaderConfig(root=str(tmp_path), split="train", cutoff=4.0,
                                          max_atoms=400, shuffle=False))
    types = [t for b in loader for t in b[K.CONFIG_TYPE]]
    assert types == [None] * 4


def test_generated_kind_counts_as_config_type():
    s = Structure("g#0", [29], np.zeros((1, 3)), np.eye(3) * 3, [True] * 3,
                  info={"kind": "vacancy"})
    assert config_type_of(s.info) == "vacancy"
    assert config_type_of({"config_type": "AIMD", "kind": "md"}) == "AIMD"
