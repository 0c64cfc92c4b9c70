"""Model interface: registry and presets, parameter and FLOP counts, dtypes,
devices, training through gradient forces, checkpoints shared across modes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from data_pipelines import schema as K
from data_pipelines.batching import batch_structures
from data_pipelines.schema import Structure
from train.models import (
    DIRECT_FORCES,
    DIRECT_STRESS,
    PUBLISHED_PET_PARAMETERS,
    build_model,
    count_parameters,
    model_config,
)
from train.models.mace import count_mace_parameters

MODES = [("pet", "direct"), ("pet", "conservative"), ("pet", "both"), ("mace", "conservative")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_batch(cutoff: float, dtype=torch.float64) -> dict:
    rng = np.random.default_rng(3)
    frac = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    cell = 3.9 * np.eye(3) + 0.1 * rng.normal(size=(3, 3))
    cuau = Structure(
        "cuau", [29, 79, 29, 79], frac @ cell + 0.1 * rng.normal(size=(4, 3)), cell, [True] * 3
    )
    mol = Structure(
        "mol", [6, 1, 8], [[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0.3]], np.zeros((3, 3)), [False] * 3
    )
    return batch_structures([cuau, mol], cutoff=cutoff, dtype=dtype)


# ---- presets and counts ----------------------------------------------------------------


def test_list_sizes_cli_prints_every_preset():
    out = subprocess.run(
        [sys.executable, "-m", "train.models", "--list-sizes"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    rows = {}
    for line in out.strip().splitlines():
        family, size, num = line.split()
        rows[(family, size)] = int(num)
    for family in ("pet", "mace"):
        for size in ("tiny", "xxs", "xs", "s", "m", "l", "xl"):
            assert (family, size) in rows
        assert rows[(family, "tiny")] < 10_000
        assert 50_000 < rows[(family, "xxs")] < 200_000
    for size, published in PUBLISHED_PET_PARAMETERS.items():
        assert abs(rows[("pet", size)] / published - 1) < 0.10, (size, rows[("pet", size)])
        # MACE spans the same range (matched within 10% too).
        assert abs(rows[("mace", size)] / published - 1) < 0.10, (size, rows[("mace", size)])


def test_ladder_follows_the_published_knobs():
    published = {  # edge width, GNN layers, attention layers, cutoff, target neighbours
        "xs": (128, 2, 1, 7.5, 8),
        "s": (256, 3, 1, 8.0, 16),
        "m": (384, 3, 2, 8.5, 24),
        "l": (512, 4, 2, 9.0, 32),
        "xl": (640, 5, 3, 10.0, 40),
    }
    for size, knobs in published.items():
        cfg = model_config("pet", size)
        got = (cfg.d_edge, cfg.num_gnn_layers, cfg.num_attention_layers, cfg.cutoff)
        assert got + (cfg.target_neighbours,) == knobs
    xl = model_config("pet", "xl")
    assert (xl.d_node, xl.d_ff, xl.d_head) == (2560, 1280, 640)


def test_meta_count_equals_a_real_build():
    model = build_model("pet", "xxs")
    assert count_parameters("pet", "xxs") == model.num_parameters()
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_mace_extrapolated_count_is_exact():
    cfg = replace(model_config("mace", "xxs"), channels=40)
    assert count_mace_parameters(cfg, max_built_channels=16) == count_mace_parameters(cfg)


def test_every_knob_overrides_alone():
    base = model_config("pet", "xs")
    wide = model_config("pet", "xs", d_edge=256, num_heads=8)
    assert (wide.d_edge, wide.num_gnn_layers, wide.d_node) == (
        256,
        base.num_gnn_layers,
        base.d_node,
    )
    deep = model_config("pet", "xs", num_gnn_layers=4)
    assert (deep.num_gnn_layers, deep.d_edge) == (4, base.d_edge)
    assert build_model("pet", "tiny", cutoff=3.0).cutoff == 3.0
    assert model_config("mace", "xs", max_L=2).max_L == 2


def test_unknown_names_are_reported_with_a_suggestion():
    with pytest.raises(KeyError, match="d_edge"):
        build_model("pet", "tiny", d_edeg=16)
    with pytest.raises(KeyError, match="'xs'"):
        build_model("pet", "xss")
    with pytest.raises(KeyError, match="'mace'"):
        build_model("macee")
    with pytest.raises(ValueError, match="conservative"):
        build_model("mace", "tiny", forces="direct")


def test_describe_records_every_knob():
    model = build_model("pet", "tiny", forces="both")
    info = model.describe()
    assert info["family"] == "pet" and info["forces"] == "both"
    assert info["num_parameters"] == model.num_parameters()
    for knob in ("d_edge", "d_node", "d_ff", "d_node_ff", "d_head", "num_heads", "cutoff"):
        assert knob in info


# ---- outputs, FLOPs, dtypes, devices ---------------------------------------------------


@pytest.mark.parametrize("family, forces", MODES)
def test_output_keys_and_shapes(family, forces):
    model = build_model(family, "tiny", forces=forces).double()
    batch = small_batch(model.cutoff)
    out = model(batch)
    expected = {K.ENERGY, K.FORCES, K.STRESS}
    if forces == "both":
        expected |= {DIRECT_FORCES, DIRECT_STRESS}
    assert set(out) == expected
    assert out[K.ENERGY].shape == (2,)
    assert out[K.FORCES].shape == (7, 3)
    assert out[K.STRESS].shape == (2, 3, 3)
    assert model(batch, compute_forces=False).keys() == {K.ENERGY}
    with torch.no_grad():  # gradient forces still work for inference under no_grad
        assert torch.allclose(model(batch)[K.FORCES], out[K.FORCES])
    with torch.inference_mode():
        assert torch.allclose(model(small_batch(model.cutoff))[K.FORCES], out[K.FORCES])


@pytest.mark.parametrize("family, forces", MODES)
def test_flops_per_atom(family, forces):
    model = build_model(family, "tiny", forces=forces)
    flops = model.flops_per_atom(small_batch(model.cutoff, torch.float32))
    assert 0 < flops["energy"] <= flops["forward"] < flops["forward_backward"]
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)  # frozen (inference) models are counted too
    assert model.flops_per_atom(small_batch(model.cutoff, torch.float32)) == flops
    assert not any(p.requires_grad for p in model.parameters())


def test_direct_inference_is_cheaper_than_gradient_inference():
    batch = small_batch(4.0, torch.float32)
    direct = build_model("pet", "tiny", forces="direct").flops_per_atom(batch)
    conservative = build_model("pet", "tiny", forces="conservative").flops_per_atom(batch)
    assert direct["forward"] < 0.7 * conservative["forward"]


@pytest.mark.parametrize("family, forces", MODES)
def test_float32_and_bf16_autocast_follow_float64(family, forces):
    torch.manual_seed(0)
    ref_model = build_model(family, "tiny", forces=forces).double()
    model = build_model(family, "tiny", forces=forces)
    model.load_state_dict(ref_model.state_dict())
    ref = ref_model(small_batch(model.cutoff))
    batch32 = small_batch(model.cutoff, torch.float32)
    out32 = model(batch32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model(batch32)
    for key, value in ref.items():
        scale = value.abs().max().item() + 1e-6
        assert out32[key].dtype == torch.float32
        assert (out32[key].double() - value).abs().max().item() < 1e-4 * scale + 1e-6, key
        assert torch.isfinite(out16[key]).all(), key
        assert (out16[key].double() - value).abs().max().item() < 0.3 * scale + 1e-3, key


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("family, forces", MODES)
def test_cuda_matches_cpu(family, forces):
    model = build_model(family, "tiny", forces=forces).double()
    batch = small_batch(model.cutoff)
    ref = model(batch)
    cuda_batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    out = model.cuda()(cuda_batch)
    for key, value in ref.items():
        assert torch.allclose(out[key].cpu(), value, rtol=1e-8, atol=1e-10), key


# ---- training ----------------------------------------------------------------------------


@pytest.mark.parametrize("family, forces", MODES)
def test_losses_on_every_output_reach_the_parameters(family, forces):
    model = build_model(family, "tiny", forces=forces).train()
    out = model(small_batch(model.cutoff, torch.float32))
    for key, value in out.items():
        model.zero_grad()
        value.square().sum().backward(retain_graph=True)
        grads = [p.grad.abs().sum() for p in model.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0, f"no gradient reaches the parameters from {key}"


def test_one_checkpoint_serves_every_force_mode():
    direct = build_model("pet", "tiny", forces="direct")
    both = build_model("pet", "tiny", forces="both")
    both.load_state_dict(direct.state_dict())
    batch = small_batch(4.0, torch.float32)
    a, b = direct(batch), both(batch)
    assert torch.allclose(a[K.FORCES], b[DIRECT_FORCES])
    assert torch.allclose(a[K.ENERGY], b[K.ENERGY])


def test_fused_and_manual_attention_agree():
    manual = build_model("pet", "tiny", forces="both", attention="manual").double()
    fused = build_model("pet", "tiny", forces="both", attention="sdpa").double()
    fused.load_state_dict(manual.state_dict())
    batch = small_batch(4.0)
    a, b = manual(batch), fused(batch)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-9, atol=1e-12), key


def test_composition_baseline_and_energy_scale():
    model = build_model("pet", "tiny", composition_baseline={29: -3.0, 79: -2.0}, energy_scale=2.0)
    assert model.composition_baseline[29].item() == -3.0
    assert model.energy_scale.item() == 2.0
    model.set_composition_baseline([0.0] * 30)
    assert model.composition_baseline.abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="atomic number"):
        model.set_composition_baseline({200: 1.0})
    with pytest.raises(ValueError, match="elements"):
        build_model("mace", "tiny", elements=[29])(small_batch(4.0, torch.float32))
