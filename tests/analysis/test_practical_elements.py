"""`analysis practical` runs on EMT's metals: a model that lacks one of them stops
before any work, in one line that names the missing elements and what to do."""

from __future__ import annotations

import textwrap

import pytest

from analysis.workflows.command import main


def test_a_model_without_the_metals_stops_at_once_with_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "si_calcs.py").write_text(textwrap.dedent("""
        from ase.calculators.lj import LennardJones

        def si_only():
            calc = LennardJones()
            calc.supported_species = [14]  # as a model trained on silicon says
            return calc

        def metals():
            calc = LennardJones()
            calc.supported_species = [13, 28, 29, 79]
            return calc
    """))  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "practical"
    args = ["--test-data", str(tmp_path / "no-data"), "--out", str(out), "--variants",
            "conservative"]
    with pytest.raises(SystemExit) as stop:
        main("practical", ["--model", "si_calcs:si_only", *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("python -m analysis practical: error: model 'si_calcs:si_only' knows Si")
    assert "need Al, Ni, Cu, Au" in err and "--structures" in err
    assert not out.exists()  # nothing was started
    # a model that knows the metals passes the check and fails later, on the data
    with pytest.raises(SystemExit):
        main("practical", ["--model", "si_calcs:metals", *args])
    assert "knows" not in capsys.readouterr().err


def test_no_phonons_through_is_not_zero_imaginary_modes():
    from analysis.workflows.phonons import _summarize
    from analysis.workflows.practical import table

    none = _summarize({})
    assert none["phonon/num_structures"] == 0
    row = {"relax/num_structures": 2, **none}
    cells = table({"direct": row}).splitlines()[-1].split(" | ")
    heads = table({"direct": row}).splitlines()[0].split(" | ")
    assert cells[heads.index("imaginary modes")] == "n/a"
    one = _summarize({"cu": {"num_imaginary": 2, "freq_mae_thz": 0.1}})
    assert one["phonon/num_imaginary"] == 2
