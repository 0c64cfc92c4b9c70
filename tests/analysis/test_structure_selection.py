"""Structures specs select frames of a file as ASE does (FILE@0, FILE@:4), so a
workflow can run on one cell of a test split exported to extended XYZ."""

from __future__ import annotations

import pytest
from ase.build import bulk
from ase.io import write

from analysis.workflows.structures import load_structures


def test_frame_selection_keeps_the_frames_own_names(tmp_path):
    frames = [bulk("Cu", "fcc", a=3.5 + 0.05 * k) for k in range(5)]
    path = tmp_path / "test.xyz"
    write(path, frames)
    assert [n for n, _ in load_structures(f"{path}@0")] == ["test-0"]
    assert [n for n, _ in load_structures(f"{path}@-1")] == ["test-4"]
    assert [n for n, _ in load_structures(f"{path}@1:5:2")] == ["test-1", "test-3"]
    assert [n for n, _ in load_structures(f"{path}@:2")] == ["test-0", "test-1"]
    (name, atoms), = load_structures(f"{path}@3")
    assert atoms.cell[0, 1] == pytest.approx(frames[3].cell[0, 1])
    assert len(load_structures(str(path))) == 5
    with pytest.raises(ValueError, match="@7 selects nothing of 5 frames"):
        load_structures(f"{path}@7")
    with pytest.raises(ValueError, match="@9: selects none"):
        load_structures(f"{path}@9:")
    with pytest.raises(FileNotFoundError, match="nope.xyz"):
        load_structures(f"{tmp_path / 'nope.xyz'}@0")


def test_a_strained_cell_relaxes_without_a_warning_per_step():
    """scipy's logm (the Frechet cell filter's) warned on each step of a model's
    relaxation of a 64-atom Si cell, at 7e-13 relative error: a calculator that
    raises the same warning stands in for it; other warnings still show."""
    import warnings

    from ase.calculators.emt import EMT

    from analysis.workflows.relax import RelaxSettings, relax_structure

    class Noisy(EMT):
        def calculate(self, *args, **kwargs):
            warnings.warn("logm result may be inaccurate, approximate err = 7e-13",
                          RuntimeWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
            super().calculate(*args, **kwargs)

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.rattle(0.05, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = relax_structure(atoms, Noisy(), RelaxSettings(fmax=0.01, max_steps=30))
    assert done.steps > 3
    assert not [w for w in caught if "logm" in str(w.message)]
    assert [w for w in caught if "something else" in str(w.message)]
