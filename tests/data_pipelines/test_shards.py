"""Source -> shard -> batch round trips, manifest contracts, atomic writes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from ase.data import chemical_symbols

from data_pipelines import schema as K
from data_pipelines.convert import split_of, write_dataset
from data_pipelines.dataset import iter_split, open_dataset
from data_pipelines.loader import LoaderConfig, StreamingLoader
from data_pipelines.schema import DataError
from data_pipelines.shards import decode_pack, encode_pack, iter_shard_packs
from tests.data_pipelines.helpers import emt_structures


@pytest.fixture(scope="module")
def structures():
    return emt_structures(120)


@pytest.fixture(scope="module")
def dataset(structures, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    manifest = write_dataset(structures, out, shard_size=16, pack_size=5, stats_cutoff=4.0)
    return out, manifest


def test_pack_round_trip_is_bit_exact(structures):
    back = decode_pack(encode_pack(structures[:10]))
    for a, b in zip(structures[:10], back):
        assert a.source_id == b.source_id
        assert np.array_equal(a.numbers, b.numbers)
        assert np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.cell, b.cell) and np.array_equal(a.pbc, b.pbc)
        assert a.energy == b.energy
        assert np.array_equal(a.forces, b.forces)
        assert (a.stress is None and b.stress is None) or np.array_equal(a.stress, b.stress)


def test_source_to_batch_bit_exact(structures, dataset):
    root, manifest = dataset
    by_id = {s.source_id: s for s in structures}
    seen = 0
    for split in manifest["splits"]:
        loader = StreamingLoader(LoaderConfig(root=str(root), split=split, cutoff=4.0,
                                              max_atoms=40, shuffle=False))
        for batch in loader:
            ptr = batch[K.PTR].numpy()
            for k, sid in enumerate(batch[K.IDS]):
                s = by_id[sid]
                sl = slice(ptr[k], ptr[k + 1])
                assert np.array_equal(batch[K.POSITIONS][sl].numpy(), s.positions)
                assert np.array_equal(batch[K.SPECIES][sl].numpy(), s.numbers)
                assert np.array_equal(batch[K.FORCES][sl].numpy(), s.forces)
                assert batch[K.ENERGY][k].item() == s.energy
                assert np.array_equal(batch[K.CELL][k].numpy(), s.cell)
                assert bool(batch[K.HAS_STRESS][k]) == (s.stress is not None)
                if s.stress is not None:
                    assert np.array_equal(batch[K.STRESS][k].numpy(), s.stress)
                seen += 1
    assert seen == len(structures)


def test_manifest_counts_and_equal_shards(dataset, structures):
    root, manifest = dataset
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["num_structures"] == len(structures)
    assert manifest["num_atoms"] == sum(s.num_atoms for s in structures)
    for sp in manifest["splits"].values():
        sizes = [sh["num_structures"] for sh in sp["shards"]]
        assert all(n == 16 for n in sizes[:-1]) and 0 < sizes[-1] <= 16
        assert sum(sizes) == sp["num_structures"]
        assert all(len(sh["sha256"]) == 64 for sh in sp["shards"])
    zs = sorted({int(z) for s in structures for z in s.numbers})
    assert manifest["elements"] == [chemical_symbols[z] for z in zs]  # sorted by Z
    assert open_dataset(str(root)).verify() == []


def test_split_is_stable_when_files_are_added():
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    keys = [f"file{k // 50}.xyz#{k}" for k in range(400)]
    first = {k: split_of(k, fractions) for k in keys[:200]}
    again = {k: split_of(k, fractions) for k in keys}
    assert all(again[k] == v for k, v in first.items())
    counts = {name: list(again.values()).count(name) for name in fractions}
    assert 280 < counts["train"] < 360  # hash spreads keys by the fractions


def test_split_key_groups_records(tmp_path):
    structures = emt_structures(30)
    for k, s in enumerate(structures):
        s.info["split_key"] = f"material-{k % 3}"
    write_dataset(structures, tmp_path, shard_size=8)
    where = {}
    for split in ("train", "val", "test"):
        for s in iter_split(str(tmp_path), split):
            where.setdefault(s.info["split_key"], set()).add(split)
    assert all(len(v) == 1 for v in where.values())


def test_rerun_is_byte_identical(tmp_path, structures):
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(structures[:40], a, shard_size=8, pack_size=3, name="x")
    write_dataset(structures[:40], b, shard_size=8, pack_size=3, name="x")
    for f in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_interrupted_conversion_leaves_nothing_that_looks_complete(tmp_path, structures):
    def dies_midway():
        for k, s in enumerate(structures):
            if k == 50:
                raise KeyboardInterrupt  # as a kill would, mid-stream
            yield s

    out = tmp_path / "ds"
    write_dataset(structures[:20], out, shard_size=8)  # an older, finished run
    with pytest.raises(KeyboardInterrupt):
        write_dataset(dies_midway(), out, shard_size=8)
    assert not (out / "manifest.json").exists()
    with pytest.raises(DataError, match="no manifest"):
        next(iter(StreamingLoader(LoaderConfig(root=str(out)))))
    for tar in out.rglob("shard-*.tar"):  # every shard with a final name is whole
        with open(tar, "rb") as fh:
            assert sum(len(decode_pack(b)) for _, b in iter_shard_packs(fh, str(tar))) == 8
    clean = tmp_path / "clean"
    write_dataset(structures, clean, shard_size=8)
    write_dataset(structures, out, shard_size=8)
    assert (out / "manifest.json").read_text() == (clean / "manifest.json").read_text().replace(
        '"name": "clean"', '"name": "ds"')


def test_invalid_records_error_or_are_counted(tmp_path):
    structures = emt_structures(12)
    structures[3].energy = float("nan")
    structures[5].forces = structures[5].forces[:-1]
    with pytest.raises(DataError) as err:
        write_dataset(structures, tmp_path / "a")
    msg = str(err.value)
    assert "t, record t#3, field 'energy'" in msg and "not finite" in msg
    manifest = write_dataset(structures, tmp_path / "b", skip_invalid=True)
    assert manifest["num_structures"] == 10
    assert manifest["skipped"]["total"] == 2
    assert any(r.startswith("forces: expected shape") for r in manifest["skipped"]["by_reason"])


def test_truncated_and_corrupted_shards_are_named(tmp_path, structures):
    root = tmp_path / "ds"
    manifest = write_dataset(structures, root, shard_size=64, pack_size=4)
    shard = root / manifest["splits"]["train"]["shards"][0]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="shard-000000.tar"):
        for _ in StreamingLoader(LoaderConfig(root=str(root), shuffle=False)):
            pass
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    problems = open_dataset(str(root)).verify()
    assert problems and "shard-000000.tar" in problems[0]


def test_bad_pack_bytes_name_the_member():
    with pytest.raises(DataError, match="x.tar:k1.*bad magic"):
        decode_pack(b"NOTAPACK" + b"\0" * 64, "x.tar:k1")
    with pytest.raises(DataError, match="truncated"):
        decode_pack(encode_pack(emt_structures(2))[:-40], "x.tar:k2")
    with pytest.raises(DataError):
        list(iter_shard_packs(io.BytesIO(b"garbage" * 100), "bad.tar"))


def _flip_a_position_byte(root, manifest, split, index):
    """Changes one byte of a stored position of the shard (same size, still decodes)."""
    shard = manifest["splits"][split]["shards"][index]
    path = root / shard["file"]
    first = next(iter(open_dataset(str(root)).read_shard(shard, 0, 1, verify=False)))
    data = bytearray(path.read_bytes())
    at = bytes(data).find(first.positions.tobytes())
    assert at > 0
    data[at] ^= 0x01  # lowest mantissa byte: a plausible, wrong position
    path.write_bytes(bytes(data))
    return shard


def test_loader_checks_each_shard_before_using_it(tmp_path, structures):
    root = tmp_path / "ds"
    manifest = write_dataset(structures, root, shard_size=16, pack_size=4,
                             splits={"train": 1.0})
    shard = _flip_a_position_byte(root, manifest, "train", 1)
    before = (root / shard["file"]).stat().st_size
    assert before == shard["bytes"]  # same size: only a checksum can tell
    cfg = LoaderConfig(root=str(root), cutoff=4.0, max_atoms=40, shuffle=False)
    bad_ids = {s.source_id for s in open_dataset(str(root)).read_shard(shard, verify=False)}
    seen: list[str] = []
    with pytest.raises(DataError) as err:
        for batch in StreamingLoader(cfg):
            seen.extend(batch[K.IDS])
    msg = str(err.value)
    assert "train/shard-000001.tar" in msg and "sha256" in msg
    assert f"python -m data_pipelines.inspect {root} --verify" in msg and "reconvert" in msg
    assert seen and not bad_ids & set(seen)  # nothing of the changed shard was used
    for workers in (2,):  # the check runs inside DataLoader workers too
        with pytest.raises(DataError, match="shard-000001.tar.*sha256"):
            list(StreamingLoader(LoaderConfig(root=str(root), cutoff=4.0, max_atoms=40,
                                              num_workers=workers)))
    off = LoaderConfig(root=str(root), cutoff=4.0, max_atoms=40, shuffle=False,
                       verify_checksums=False)  # an explicit opt-out streams it
    assert sum(len(b[K.IDS]) for b in StreamingLoader(off)) == len(structures)
