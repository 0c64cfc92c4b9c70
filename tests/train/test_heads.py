"""Heads per level of theory: per-head energy readouts and composition baselines,
chosen by each structure's head; exports and the calculator take the head."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.batching import HEAD, batch_structures
from tests.data_pipelines.helpers import emt_structures
from train.models import build_model

STRUCTURES = emt_structures(6, seed=3, prefix="h", molecules=False)
REFS = {"A": {13: -1.0, 29: -3.0, 46: -2.5, 47: -2.0, 78: -4.0, 79: -3.5, 28: -4.5},
        "B": {13: -7.0, 29: -1.0, 46: -6.5, 47: -5.0, 78: -0.5, 79: -9.0, 28: -2.0}}


def _model(forces: str, family: str = "pet", **knobs):
    torch.manual_seed(0)
    model = build_model(family, "tiny", forces, heads=["A", "B"], **knobs).double()
    for head, refs in REFS.items():
        model.set_composition_baseline(refs, head=head)
    return model


def _batch(heads: list[int] | None):
    batch = batch_structures(STRUCTURES, 5.0, dtype=torch.float64)
    if heads is not None:
        batch[HEAD] = torch.tensor(heads)
    return batch


@pytest.mark.parametrize("forces", ["direct", "conservative"])
def test_each_structure_gets_its_heads_energy(forces):
    model = _model(forces)
    mixed = model(_batch([0, 1, 1, 0, 1, 0]))
    for index, name in enumerate(("A", "B")):
        alone = model.single_head(name)
        assert alone.head_names == () and alone.composition_baseline.shape == (119,)
        one = alone(_batch(None))
        rows = [k for k, h in enumerate([0, 1, 1, 0, 1, 0]) if h == index]
        torch.testing.assert_close(mixed["energy"][rows], one["energy"][rows], rtol=0, atol=1e-10)
    # the heads differ in energy, by more than their baselines alone would explain
    a, b = model(_batch([0] * 6))["energy"], model(_batch([1] * 6))["energy"]
    shift = torch.tensor([sum(REFS["B"][int(z)] - REFS["A"][int(z)] for z in s.numbers)
                          for s in STRUCTURES], dtype=torch.float64)
    assert (b - a - shift).abs().max() > 1e-8
    if forces == "direct":  # the force and stress heads are shared by every energy head
        fa, fb = model(_batch([0] * 6))["forces"], model(_batch([1] * 6))["forces"]
        torch.testing.assert_close(fa, fb, rtol=0, atol=0)


def test_an_isolated_atom_has_exactly_its_heads_baseline():
    from data_pipelines.schema import Structure

    model = _model("conservative")
    atom = Structure("one", torch.tensor([29]).numpy(), torch.zeros(1, 3).numpy(),
                     torch.zeros(3, 3).numpy(), torch.zeros(3, dtype=torch.bool).numpy())
    for index, name in enumerate(("A", "B")):
        batch = batch_structures([atom], 5.0, dtype=torch.float64)
        batch[HEAD] = torch.tensor([index])
        assert float(model(batch)["energy"][0].detach()) == REFS[name][29]


def test_head_errors_name_the_valid_heads():
    model = _model("direct")
    with pytest.raises(ValueError, match="unknown head 'r2SCAN'; this model's heads: A, B"):
        model.single_head("r2SCAN")
    with pytest.raises(ValueError, match=r"head indices \[2\]; this model's heads are 0..1"):
        model(_batch([0, 2, 0, 0, 0, 0]))
    plain = build_model("pet", "tiny", "direct")
    with pytest.raises(ValueError, match="single energy head"):
        plain.head_index("A")
    with pytest.raises(ValueError, match="distinct"):
        build_model("pet", "tiny", "direct", heads=["A", "A"])


def test_without_heads_the_model_is_unchanged():
    torch.manual_seed(0)
    plain = build_model("pet", "tiny", "direct").double()
    torch.manual_seed(0)
    one = build_model("pet", "tiny", "direct", heads=["PBE"]).double()
    assert plain.composition_baseline.shape == (119,)
    assert set(plain.state_dict()) == set(one.state_dict())
    one.load_state_dict({**plain.state_dict(),
                         "composition_baseline": plain.composition_baseline[None]})
    a, b = plain(_batch(None)), one(_batch([0] * 6))
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_mace_heads_select_energies():
    model = _model("conservative", family="mace", elements=[13, 28, 29, 46, 47, 78, 79])
    mixed = model(_batch([0, 1, 1, 0, 1, 0]))["energy"]
    a, b = model(_batch([0] * 6))["energy"], model(_batch([1] * 6))["energy"]
    torch.testing.assert_close(mixed, torch.where(torch.tensor([0, 1, 1, 0, 1, 0]) == 1, b, a),
                               rtol=0, atol=1e-10)
    assert (a - b).abs().min() > 1e-6


def test_a_fine_tune_fills_only_the_elements_its_parent_never_saw():
    from train.build import _keep_parent_statistics

    model = build_model("pet", "tiny", "direct", composition_baseline={29: -3.0})
    record = _keep_parent_statistics(model, "parent", {
        "element_reference_energies_by_z": {"29": -3.1, "79": -2.0}})
    assert float(model.composition_baseline[29]) == -3.0  # kept: the parent's
    assert float(model.composition_baseline[79]) == -2.0  # filled: this data's
    assert record["filled_elements"] == ["79"]
    assert record["max_baseline_difference_eV"] == pytest.approx(0.1, abs=1e-6)
    heads = _model("direct")  # a head this data does not train is left as it is
    before = heads.composition_baseline.clone()
    heads.composition_baseline[0, 30] = 0.0
    _keep_parent_statistics(heads, "parent", {"element_reference_energies_by_head": {
        "B": {"30": -1.0}}, "element_reference_energies_by_z": {"30": -1.0}})
    assert float(heads.composition_baseline[0, 30]) == 0.0
    assert float(heads.composition_baseline[1, 30]) == -1.0
    assert torch.equal(heads.composition_baseline[:, :30], before[:, :30])
