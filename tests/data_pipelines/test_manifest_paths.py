"""Manifest paths cannot leave the root or run commands; `pipe:` roots still stream."""

from __future__ import annotations

import json

import pytest

from data_pipelines import schema as K
from data_pipelines.convert import parse_splits, write_dataset
from data_pipelines.dataset import Dataset, open_dataset, resolve
from data_pipelines.inspect import main as inspect_main
from data_pipelines.loader import LoaderConfig, StreamingLoader
from data_pipelines.schema import DataError
from tests.data_pipelines.helpers import emt_structures


@pytest.fixture()
def root(tmp_path):
    out = tmp_path / "ds"
    write_dataset(emt_structures(30), out, shard_size=8, pack_size=4,
                  splits={"train": 0.8, "val": 0.2}, stats_cutoff=None)
    return out


def _edit_first_shard(root, file: str) -> dict:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"]["train"]["shards"][0]["file"] = file
    path.write_text(json.dumps(manifest))
    return manifest


def _ids(data_root: str) -> list[list[str]]:
    cfg = LoaderConfig(root=data_root, cutoff=4.0, max_atoms=40, shuffle=False)
    return [b[K.IDS] for b in StreamingLoader(cfg)]


def test_a_shard_name_cannot_run_a_command(root, tmp_path):
    marker = tmp_path / "X"
    _edit_first_shard(root, f"train/shard-000000.tar; touch {marker} #")
    pipe_root = f"pipe:cat {root}/{{path}}"
    with pytest.raises(DataError) as err:
        _ids(pipe_root)
    msg = str(err.value)
    assert "manifest.json" in msg and "splits.train.shards[0]" in msg and "field 'file'" in msg
    assert "touch" in msg and "expected 'train/shard-NNNNNN.tar'" in msg
    assert not marker.exists()


def test_a_pipe_command_gets_the_path_as_one_quoted_word(root, tmp_path):
    marker = tmp_path / "X"
    evil = f"train/shard-000000.tar; touch {marker} #"
    assert resolve("pipe:cat /d/{path}", evil) == f"pipe:cat /d/'{evil}'"
    assert resolve("pipe:cat /d", evil) == f"pipe:cat /d/'{evil}'"
    # even past the manifest check (a Dataset built by hand), the shell sees one word
    manifest = _edit_first_shard(root, evil)
    shard = manifest["splits"]["train"]["shards"][0]
    data = Dataset(f"pipe:cat {root}/{{path}}", manifest)
    for verify in (True, False):
        with pytest.raises(DataError, match="cannot read shard|truncated"):
            list(data.read_shard(shard, verify=verify))
    assert not marker.exists()


@pytest.mark.parametrize("file", [
    "../outside/shard-000000.tar",
    "train/../../outside/shard-000000.tar",
    "/etc/shard-000000.tar",
    "val/shard-000000.tar",  # another split's folder
    "train/shard-000000.tar.gz",
    "train/shard-0.tar",
    "train\\shard-000000.tar",
])
def test_manifest_paths_outside_the_pattern_are_refused(root, tmp_path, file, capsys):
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "shard-000000.tar").write_bytes((root / "train/shard-000000.tar").read_bytes())
    _edit_first_shard(root, file)
    with pytest.raises(DataError, match=r"manifest\.json, record splits\.train\.shards\[0\]"):
        open_dataset(str(root))
    assert inspect_main([str(root), "--verify"]) == 2  # no "verify: ok"
    assert "splits.train.shards[0]" in capsys.readouterr().err


def test_other_manifest_fields_are_checked(root):
    path = root / "manifest.json"
    good = json.loads(path.read_text())
    for edit, field in [
        (lambda m: m["splits"].update({"a b": m["splits"].pop("val")}), "split name"),
        (lambda m: m.update(stats_file="../stats.json"), "stats_file"),
        (lambda m: m["splits"]["train"]["shards"][0].update(sha256="x"), "sha256"),
        (lambda m: m["splits"]["train"]["shards"][0].update(num_structures=-1), "num_structures"),
        (lambda m: m["splits"]["train"]["shards"].append(m["splits"]["train"]["shards"][0]),
         "listed twice"),
    ]:
        bad = json.loads(json.dumps(good))
        edit(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=field):
            open_dataset(str(root))


def test_convert_refuses_split_names_it_could_not_read_back(tmp_path):
    for text in ("train=0.9,../x=0.1", "train=0.9,a b=0.1", "train=0.9,a;b=0.1"):
        with pytest.raises(ValueError, match="split name"):
            parse_splits(text)
    with pytest.raises(ValueError, match="split name"):
        write_dataset(emt_structures(3), tmp_path / "x", splits={"tr/ain": 1.0})


def test_pipe_roots_as_a_user_types_them_still_stream(root):
    local = _ids(str(root))
    assert sum(map(len, local)) > 0
    assert _ids(f"pipe:cat {root}/{{path}}") == local  # template form
    assert _ids(f"pipe:cat {root}") == local  # prefix form
