"""`make setup` installs the CPU build of torch unless told otherwise (dry runs only)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setup_commands(tmp_path: Path, *variables: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        ["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}", *variables],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    return proc.stdout.splitlines()


def _torch_line(lines: list[str]) -> str:
    (line,) = [ln for ln in lines if "torch==" in ln]
    return line


def test_default_is_the_cpu_index_and_torch_comes_first(tmp_path):
    lines = _setup_commands(tmp_path)
    torch = _torch_line(lines)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch
    assert "--no-deps torch==2.13.0" in torch
    project = next(i for i, ln in enumerate(lines) if "-e '.[dev]'" in ln)
    assert lines.index(torch) < project
    assert "download.pytorch.org" not in lines[project]  # the rest from the usual index


def test_empty_index_leaves_pip_configuration_alone(tmp_path):
    torch = _torch_line(_setup_commands(tmp_path, "TORCH_INDEX="))
    assert "--index-url" not in torch and "--extra-index-url" not in torch
    cuda = _torch_line(_setup_commands(tmp_path, "TORCH_INDEX=https://download.pytorch.org/whl/cu126"))
    assert cuda.endswith("--index-url https://download.pytorch.org/whl/cu126")
