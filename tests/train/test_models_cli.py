"""`python -m train.models`: cached parameter counts equal real builds; --show overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train.models as models
from train.models import build_model, count_parameters
from train.models.count_cache import CACHE_FILE, count_key

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MLIP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_FILE


@pytest.mark.parametrize(("family", "knobs"), [("pet", {}), ("pet", {"d_edge": 16}),
                                               ("mace", {})])
def test_cached_count_equals_the_built_model(cache, monkeypatch, family, knobs):
    built = build_model(family, "tiny", **knobs).num_parameters()
    assert count_parameters(family, "tiny", **knobs) == built  # computed, then stored
    stored = json.loads(cache.read_text())
    assert stored[count_key(family, models.PRESETS[family]["tiny"], knobs)] == built

    def no_build(*args, **kwargs):
        raise AssertionError("a cached count must not build or count again")

    monkeypatch.setattr(models, "_count_parameters", no_build)
    assert count_parameters(family, "tiny", **knobs) == built  # from the cache


def test_key_depends_on_overrides_and_ignores_none():
    preset = models.PRESETS["pet"]["tiny"]
    assert count_key("pet", preset, {}) == count_key("pet", preset, {"cutoff": None})
    assert count_key("pet", preset, {}) != count_key("pet", preset, {"d_edge": 16})
    assert count_key("pet", preset, {}) != count_key("mace", preset, {})


def test_bad_knob_and_bad_cache_file(cache):
    with pytest.raises(KeyError, match="did you mean 'd_edge'"):
        count_parameters("pet", "tiny", d_egde=16)
    with pytest.raises(KeyError, match="did you mean 'tiny'"):
        count_parameters("pet", "tinyy")
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert count_parameters("pet", "tiny") == build_model("pet", "tiny").num_parameters()
    assert json.loads(cache.read_text())  # rewritten whole


def _run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_warm_listing_builds_nothing_and_imports_no_mace(tmp_path):
    env = {"MLIP_CACHE_DIR": str(tmp_path)}
    cold = _run("-m", "train.models", "--list-sizes", env=env)
    assert cold.returncode == 0, cold.stderr
    probe = (
        "import sys, time\nfrom train.models import list_sizes\nt = time.perf_counter()\n"
        "rows = list_sizes()\nlibs = ('mace', 'train.models.mace', 'e3nn')\n"
        "print(time.perf_counter() - t, any(m in sys.modules for m in libs), len(rows))"
    )
    warm = _run("-c", probe, env=env)
    seconds, imported, num_rows = warm.stdout.split()
    assert imported == "False" and float(seconds) < 1.0
    assert int(num_rows) == len(cold.stdout.strip().splitlines())


def test_show_takes_knob_overrides(tmp_path):
    env = {"MLIP_CACHE_DIR": str(tmp_path)}
    proc = _run("-m", "train.models", "--show", "pet", "tiny", "model.knobs.d_edge=16",
                "--knob", "num_gnn_layers=3", env=env)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert (shown["d_edge"], shown["num_gnn_layers"]) == (16, 3)
    assert shown["overrides"] == {"d_edge": 16, "num_gnn_layers": 3}
    expected = build_model("pet", "tiny", d_edge=16, num_gnn_layers=3).num_parameters()
    assert shown["num_parameters"] == expected
    bad = _run("-m", "train.models", "--show", "pet", "tiny", "d_egde=16", env=env)
    assert bad.returncode == 2
    assert "unknown pet knob 'model.knobs.d_egde' (did you mean 'd_edge'?)" in bad.stderr
    assert bad.stderr.count("\n") == 1  # one line, no traceback
