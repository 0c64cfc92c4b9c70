"""Our MACE is mace-torch's standard architecture by default (odd-parity l=1
hidden irreps as MACE-MP-0; the first block is a knob), and files written before that
default changed still load as what they were."""

from __future__ import annotations

import torch

from train.export import load_model
from train.models import build_model


def test_default_mace_is_the_standard_architecture():
    model = build_model("mace", "mini")
    net = model.network
    assert net.interactions[0].__class__.__name__ == "RealAgnosticResidualInteractionBlock"
    plain = build_model("mace", "mini", first_interaction="RealAgnosticInteractionBlock")
    assert plain.network.interactions[0].__class__.__name__ == "RealAgnosticInteractionBlock"
    residual = plain.network.interactions[1].__class__.__name__
    assert residual == "RealAgnosticResidualInteractionBlock"
    assert "8x1o" in str(net.products[0].linear.irreps_out)  # as MACE-MP-0's 128x0e+128x1o
    even = build_model("mace", "mini", parity="even")
    assert "1e" in str(even.network.products[0].linear.irreps_out)


def test_a_mace_file_from_before_the_change_loads_as_it_was(tmp_path):
    legacy = build_model("mace", "tiny", parity="even",
                         first_interaction="RealAgnosticResidualInteractionBlock")
    config = legacy.describe()
    for knob in ("parity", "first_interaction"):
        config.pop(knob)  # what such a file recorded: neither knob existed
    path = tmp_path / "old.pt"
    torch.save({"format": "mlip-scaling-model", "version": 1, "family": "mace", "size": "tiny",
                "forces": "conservative", "knobs": {}, "cutoff": legacy.cutoff,
                "model_config": config, "state_dict": legacy.state_dict(), "elements": ["Cu"],
                "stats": {}, "dtype": "float32"}, path)
    model, _ = load_model(path)
    assert model.num_parameters() == legacy.num_parameters()
    for key, value in legacy.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
