"""The FLOPs reference batch is measured once per configuration: a repeat is
read from the cache, and anything that changes the count changes the key."""

from __future__ import annotations

from train.flops_cache import cached_flops, flops_key
from train.models import build_model

MANIFEST = {"name": "d", "splits": {"train": {"shards": [{"sha256": "aa"}]}}}
BATCH = {"split": "train", "cutoff": 4.0, "max_atoms": 64, "device": "cpu", "dtype": "float32"}


def test_a_repeat_is_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIP_CACHE_DIR", str(tmp_path))
    calls = []

    def measure():
        calls.append(1)
        return {"energy": 1.0, "forward": 2.0, "forward_backward": 5.0}

    key = flops_key(build_model("pet", "tiny"), MANIFEST, BATCH)
    first = cached_flops(key, measure)
    again = cached_flops(key, measure)
    assert first == again == {"energy": 1.0, "forward": 2.0, "forward_backward": 5.0}
    assert len(calls) == 1 and (tmp_path / "flops-per-atom.json").is_file()


def test_the_key_changes_with_what_changes_the_count():
    pet = build_model("pet", "tiny")
    key = flops_key(pet, MANIFEST, BATCH)
    assert key == flops_key(build_model("pet", "tiny"), MANIFEST, BATCH)  # stable
    others = [
        flops_key(build_model("pet", "tiny", d_edge=16), MANIFEST, BATCH),
        flops_key(build_model("pet", "tiny", forces="direct"), MANIFEST, BATCH)
        if pet.forces != "direct" else flops_key(build_model("pet", "tiny", forces="both"),
                                                 MANIFEST, BATCH),
        flops_key(build_model("mace", "tiny"), MANIFEST, BATCH),
        flops_key(pet, {**MANIFEST, "splits": {"train": {"shards": [{"sha256": "bb"}]}}}, BATCH),
        flops_key(pet, MANIFEST, {**BATCH, "max_atoms": 128}),
        flops_key(pet, MANIFEST, {**BATCH, "cutoff": 5.0}),
        flops_key(pet.double(), MANIFEST, BATCH),
    ]
    assert len({key, *others}) == len(others) + 1


def test_an_unwritable_cache_still_measures(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MLIP_CACHE_DIR", str(blocker / "sub"))  # cannot be created
    assert cached_flops("k", lambda: {"forward": 3.0}) == {"forward": 3.0}
