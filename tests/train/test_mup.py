"""muP for pet: knobs, parameter groups, schedule, and the coordinate check.

The coordinate check trains the width ladder at 16..128 a few Adam steps on one
fixed generated batch: under muP every tracked layer's update at the last step
must stay within MAX_WIDTH_RATIO from the narrowest to the widest width, and
under the standard parametrisation at the same learning rate some layer must not.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from train import coord_check
from train.config import ConfigError, ModelConfig, OptimConfig, ScheduleConfig, check_model
from train.models import build_model
from train.models.mup import OutputLinear
from train.models.presets import PET_PRESETS, PET_WIDTH_LADDER
from train.optim import build_optimizer, lr_factor


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: more threads only oversubscribe them
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batch() -> dict:
    return coord_check.fixed_batch()


def pet(size: str = "w32", seed: int = 0, **knobs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("pet", size, forces="both", **knobs)


def outputs(model, batch) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.train()(batch).items()}


def assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_standard_is_bit_identical_to_not_setting_it(batch):
    default, standard = pet(), pet(parametrization="standard")
    for (name, p), (_, q) in zip(default.named_parameters(), standard.named_parameters()):
        assert torch.equal(p, q), name
    assert_equal(outputs(default, batch), outputs(standard, batch))
    # one group holding model.parameters() in order, and the same Adam steps
    (group,) = standard.parameter_groups(1e-3)
    assert [id(p) for p in group["params"]] == [id(p) for p in standard.parameters()]
    cfg = OptimConfig(lr=1e-3)
    opts = [build_optimizer(default.parameters(), cfg), build_optimizer(standard, cfg)]
    for _ in range(2):
        for model, opt in zip((default, standard), opts):
            opt.zero_grad()
            out = model(batch)
            (out["energy"].square().sum() + out["forces"].square().sum()).backward()
            opt.step()
    assert_equal(outputs(default, batch), outputs(standard, batch))


def test_mup_at_base_width_equals_standard(batch):
    standard, mup = pet(), pet(parametrization="mup", mup_base_width=32)
    assert_equal(outputs(standard, batch), outputs(mup, batch))
    assert {g["lr"] for g in mup.parameter_groups(1e-3)} == {1e-3}
    wider = pet("w64", parametrization="mup", mup_base_width=32)
    assert not torch.equal(outputs(pet("w64"), batch)["energy"], outputs(wider, batch)["energy"])


def test_groups_carry_the_mup_learning_rates():
    model = pet("w64", parametrization="mup", mup_base_width=16)  # m = 4
    groups = model.parameter_groups(2e-3)
    by_role = {g["mup_role"]: g for g in groups}
    assert by_role["hidden"]["lr"] == pytest.approx(2e-3 / 4)
    assert all(by_role[r]["lr"] == 2e-3 for r in ("input", "output", "vector"))
    assert groups[0]["lr"] == 2e-3  # what the loop logs as the learning rate
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    roles = model.mup_roles()
    assert roles["node_species.weight"] == roles["layers.0.neighbour_species.weight"] == "input"
    assert roles["layers.0.geometry.weight"] == "input"
    assert roles["layers.1.blocks.0.attention.qkv.weight"] == "hidden"
    assert roles["layers.0.edge_readout.5.weight"] == "output"
    heads = [m for m in model.modules() if isinstance(m, OutputLinear)]
    assert len(heads) == 4 and all(m.multiplier == 0.25 for m in heads)


def test_schedule_scales_every_group_by_its_own_lr():
    model = pet("w64", parametrization="mup", mup_base_width=32)
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    base = [g["lr"] for g in opt.param_groups]
    factor = lr_factor(ScheduleConfig(kind="cosine", warmup_steps=2), 10)
    sched = LambdaLR(opt, factor)
    for step in range(5):
        for g, lr in zip(opt.param_groups, base):
            assert g["lr"] == pytest.approx(lr * factor(step))
        opt.step()
        sched.step()


def test_knobs_are_checked():
    check_model(ModelConfig("pet", "w32", knobs={"parametrization": "mup", "mup_base_width": 16}))
    with pytest.raises(ConfigError, match="parametrization"):
        check_model(ModelConfig("pet", "w32", knobs={"parametrization": "mu-p"}))
    with pytest.raises(ConfigError, match="mup_base_width"):
        check_model(ModelConfig("pet", "w32", knobs={"mup_base_width": 0}))


def test_width_ladder_keeps_depth_and_cutoff():
    ladder = [PET_PRESETS[f"w{d}"] for d in PET_WIDTH_LADDER]
    fixed = ("num_gnn_layers", "num_attention_layers", "cutoff", "adaptive_cutoff")
    assert all(all(p[k] == ladder[0][k] for k in fixed) for p in ladder)
    for d, p in zip(PET_WIDTH_LADDER, ladder):
        assert (p["d_node"], p["d_ff"], p["d_node_ff"], p["d_head"]) == (4 * d, 2 * d, 8 * d, d)
        assert p["d_edge"] // p["num_heads"] == 8


def test_coord_check_flat_under_mup_not_under_standard(tmp_path):
    argv = ["--widths", "16", "32", "64", "128", "--steps", "4", "--out", str(tmp_path)]
    assert coord_check.main(argv) == 0
    result = json.loads((tmp_path / "coord_check.json").read_text())
    assert (tmp_path / "coord_check.png").stat().st_size > 0
    assert set(result) == {"standard", "mup"}
    assert set(result["mup"]) == {"16", "32", "64", "128"}
    assert all(len(c) == 4 for c in result["mup"]["128"].values())
    ratios = coord_check.width_ratios(result)
    limit = coord_check.MAX_WIDTH_RATIO
    spread = {name: max(r, 1 / r) for name, r in ratios["mup"].items()}
    assert max(spread.values()) < limit, spread
    assert max(max(r, 1 / r) for r in ratios["standard"].values()) > limit, ratios["standard"]


def test_an_unexported_mup_run_exports_from_its_checkpoint(emt_shards, tmp_path):
    """A run stopped before writing model.pt (a kill, a time limit) is exported
    from its last checkpoint by `train.evaluate RUN`; with muP knobs in its
    config that merge used to fail. The export equals the run's own model.pt."""
    from tests.train.conftest import train_cli
    from train.evaluate import resolve_model_file
    from train.export import load_model

    run = tmp_path / "run"
    train_cli(f"data.root={emt_shards}", "model=pet", "size=w8", "forces=direct",
              "model.knobs.parametrization=mup", "model.knobs.mup_base_width=16",
              "trainer.max_steps=4", "trainer.checkpoint_every=4", "trainer.val_every=0",
              "data.max_atoms=64", "engine=torch", "logger=none", f"run_dir={run}")
    finished = run / "model.pt"
    finished.rename(run / "finished.pt")
    exported = resolve_model_file(run)
    assert exported == finished and exported.exists()
    a, _ = load_model(run / "finished.pt")
    b, _ = load_model(exported)
    assert a.config.parametrization == b.config.parametrization == "mup"
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
