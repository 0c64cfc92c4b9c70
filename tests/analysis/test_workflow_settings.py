"""Typed workflow settings: flags made from the dataclasses, mappings checked against them."""

from __future__ import annotations

import dataclasses

import pytest

from analysis.__main__ import main as analysis_main
from analysis.workflows.command import build_parser
from analysis.workflows.model import ModelOptions
from analysis.workflows.phonons import PhononSettings
from analysis.workflows.practical import PracticalSettings
from analysis.workflows.registry import WORKFLOWS
from analysis.workflows.relax import RelaxSettings
from analysis.workflows.settings import from_mapping, from_namespace, settable
from analysis.workflows.speed import SpeedSettings
from analysis.workflows.symmetry import SymmetrySettings

MODEL_FLAGS = {"--model", "--forces", "--rotational-average", "--inversion", "--space-group"}
# the flags each command had when they were written by hand (README and studies use them)
OLD_FLAGS = {
    "relax": MODEL_FLAGS
    | {"--structures", "--out", "--fix-symmetry", "--symprec", "--cell-filter", "--optimizer"}
    | {"--fmax", "--max-steps", "--reference-model"},
    "phonons": MODEL_FLAGS
    | {"--structures", "--supercell", "--displacement", "--out", "--relax-fmax", "--mesh"}
    | {"--reference-model"},
    "symmetry": MODEL_FLAGS
    | {"--structures", "--out", "--num-rotations", "--grid-l-max", "--fd-step"}
    | {"--jacobian-atoms", "--min-atoms", "--md-steps", "--md-timestep", "--md-temperature"}
    | {"--seed"},
    "speed": {"--model", "--sizes", "--rot-l-max", "--repeats", "--element", "--out", "--compare"},
    "elastic": MODEL_FLAGS | {"--elastic-sets", "--max-strain", "--out"},
    "practical": {"--model", "--test-data", "--out", "--variants", "--num-test", "--speed-atoms"}
    | {"--quick"},
}


def _parse(name: str, argv: list[str]):
    workflow = WORKFLOWS[name]
    args = build_parser(workflow).parse_args(argv)
    model = from_namespace(ModelOptions, args, only=("spec", *workflow.model_fields))
    return model, from_namespace(workflow.settings, args), args


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_every_old_flag_is_still_there_and_every_setting_says_what_it_is(name):
    parser = build_parser(WORKFLOWS[name])
    flags = {s for action in parser._actions for s in action.option_strings}
    assert OLD_FLAGS[name] <= flags, OLD_FLAGS[name] - flags
    for f in settable(WORKFLOWS[name].settings):
        assert f.metadata["help"], f"{name}: setting {f.name} has no help text"


def test_relax_flags_give_typed_settings():
    model, settings, args = _parse(
        "relax",
        [
            "--structures",
            "builtin:cu-fcc",
            "--out",
            "x",
            "--fix-symmetry",
            "--cell-filter",
            "none",
            "--optimizer",
            "bfgs",
            "--fmax",
            "0.05",
            "--max-steps",
            "7",
            "--reference-model",
            "none",
            "--forces",
            "direct",
            "--rotational-average",
            "2",
            "--inversion",
        ],
    )
    assert settings == RelaxSettings(
        fix_symmetry=True,
        cell_filter="none",
        optimizer="bfgs",
        fmax=0.05,
        max_steps=7,
        reference_model="none",
    )
    assert model == ModelOptions("emt", forces="direct", rotational_average=2, inversion=True)
    assert args.structures == "builtin:cu-fcc"
    with pytest.raises(SystemExit):
        _parse("relax", ["--structures", "x", "--out", "x", "--optimizer", "lbfgs"])


def test_tuples_and_settings_that_switch_off():
    _, settings, _ = _parse(
        "phonons",
        ["--structures", "s", "--out", "o", "--supercell", "3", "3", "3", "--relax-fmax", "0"],
    )
    assert settings.supercell == (3, 3, 3) and settings.relax_fmax is None
    assert settings.mesh == PhononSettings().mesh
    for off in ("-1", "none"):
        _, settings, _ = _parse("symmetry", ["--structures", "s", "--grid-l-max", off])
        assert settings.grid_l_max is None
    _, settings, _ = _parse("speed", ["--sizes", "32", "64", "--rot-l-max", "--compare", "m.pt"])
    assert settings == SpeedSettings(sizes=(32, 64), rot_l_max=(), compare=("m.pt",))


def test_mappings_are_checked_with_the_closest_name_and_the_expected_type():
    where = "study.evaluate[0] (relax)"
    assert from_mapping(RelaxSettings, {"fmax": 1, "fix_symmetry": True}, where) == RelaxSettings(
        fmax=1.0, fix_symmetry=True
    )
    with pytest.raises(ValueError, match=r"evaluate\[0\].*'fmx'.*did you mean 'fmax'"):
        from_mapping(RelaxSettings, {"fmx": 0.1}, where)
    with pytest.raises(ValueError, match="'max_steps' = 'ten': expected int"):
        from_mapping(RelaxSettings, {"max_steps": "ten"}, where)
    with pytest.raises(ValueError, match="one of 'fire', 'bfgs'"):
        from_mapping(RelaxSettings, {"optimizer": "lbfgs"}, where)
    assert from_mapping(PhononSettings, {"supercell": [3, 3, 3]}, where).supercell == (3, 3, 3)
    with pytest.raises(ValueError, match="a list of 3 int"):
        from_mapping(PhononSettings, {"supercell": [3, 3]}, where)
    assert from_mapping(SymmetrySettings, {"grid_l_max": None}, where).grid_l_max is None
    assert from_mapping(SymmetrySettings, {"grid_l_max": -1}, where).grid_l_max is None
    # a setting without a flag is not a stage setting either
    with pytest.raises(ValueError, match="unknown setting 'symprec'"):
        from_mapping(ModelOptions, {"symprec": 1e-3}, where)


def test_required_settings_and_checked_values():
    with pytest.raises(ValueError, match="missing setting"):
        from_mapping(PracticalSettings, {}, "practical")
    with pytest.raises(ValueError, match="variant 'sideways'"):
        PracticalSettings(test_data="x", variants=("sideways",))
    assert dataclasses.fields(RelaxSettings)[0].metadata["help"]


def test_one_entry_point_with_sub_commands(capsys):
    assert analysis_main([]) == 2
    assert "python -m analysis relax" in capsys.readouterr().out
    assert analysis_main(["relx"]) == 2
    assert "unknown command 'relx'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        analysis_main(["phonons", "--help"])
    assert exit_info.value.code == 0
    assert "--supercell" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a missing structures file is an error, not a traceback
        analysis_main(["relax", "--structures", "nowhere.xyz", "--out", "x"])
    assert "nowhere.xyz" in capsys.readouterr().err
