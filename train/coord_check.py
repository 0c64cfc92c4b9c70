"""Coordinate check: does every layer's update stay O(1) as the model widens?

    python -m train.coord_check --model pet --widths 16 32 64 128 --steps 5 \\
        --parametrization standard mup --out DIR [--lr 3e-3] [--base-width 16]

Trains each width a few Adam steps on one fixed batch (the same generated
structures and weight seeds at every width) and records, after each step, the
RMS over coordinates of every tracked layer's output minus its output at
initialisation, averaged over the seeds; the model's energy per atom and
direct forces are tracked as its outputs. Under muP (train.models.mup) these
curves are flat in width; under the standard parametrisation at the same
learning rate the hidden layers and readouts grow with width (Yang et al.,
Tensor Programs V, Fig. 5).

Writes DIR/coord_check.json, ``{parametrization: {width: {layer: [rms after
step 1, ..., step N]}}}``, and DIR/coord_check.png (one panel per
parametrisation: the last step's RMS change against width, per layer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from data_pipelines import schema as K
from data_pipelines.batching import batch_structures
from data_pipelines.generate import generate_structures
from train.config import OptimConfig
from train.models import AtomisticModel, build_model
from train.models.presets import pet_width_shape
from train.optim import build_optimizer

# A layer whose update grows or shrinks more than this from the narrowest to the
# widest width has not kept its update size (TP5 reads its plots the same way).
MAX_WIDTH_RATIO = 2.5


def fixed_batch(
    num_structures: int = 8, max_atoms: int = 12, seed: int = 0, cutoff: float = 5.0
) -> dict:
    """A small float32 batch of generated EMT structures (the first that fit)."""
    chosen = []
    for s in generate_structures(8 * num_structures, seed=seed):
        if s.num_atoms <= max_atoms:
            chosen.append(s)
        if len(chosen) == num_structures:
            break
    return batch_structures(chosen, cutoff=cutoff, dtype=torch.float32)


def fit_baseline(batch: dict) -> tuple[dict[int, float], float]:
    """One mean energy per atom for every element of the batch, and the force RMS.

    The network then starts at O(1) residuals in both energy and forces. A
    per-element fit would leave (almost) no energy residual on a batch of a few
    structures, so the energy readouts would see only round-off gradients.
    """
    species = batch[K.SPECIES]
    mean = float(batch[K.ENERGY].double().sum() / batch[K.NUM_ATOMS].double().sum())
    force_rms = float(batch[K.FORCES].double().square().mean().sqrt())
    return {int(z): mean for z in torch.unique(species)}, max(force_rms, 1e-3)


def pet_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The tracked layers of PET: input embedding, token builders, attention and
    feed-forwards of every block, and the two readouts of every GNN layer."""
    tracked = {"embedding": model.node_species}
    for i, layer in enumerate(model.layers):
        tracked[f"layers.{i}.tokens"] = layer.compress[2]
        for j, block in enumerate(layer.blocks):
            tracked[f"layers.{i}.blocks.{j}.attention"] = block.attention
            tracked[f"layers.{i}.blocks.{j}.ff"] = block.ff
            tracked[f"layers.{i}.blocks.{j}.node_ff"] = block.node_ff
        # The node readout's own output is mostly a per-atom constant that the
        # isolated-atom subtraction cancels, so the energy never sees its update;
        # its last hidden layer and the model's energy stand in for it.
        tracked[f"layers.{i}.node_readout_hidden"] = layer.node_energy[-2]
        tracked[f"layers.{i}.edge_readout"] = layer.edge_readout
    return tracked


LAYERS = {"pet": pet_layers}


def record_outputs(model: AtomisticModel, layers: dict[str, nn.Module], batch: dict
                   ) -> dict[str, Tensor]:
    """Each tracked layer's output on `batch` (its first call: the forward pass
    also runs the network on isolated atoms, which is not the batch)."""
    seen: dict[str, Tensor] = {}

    def hook(name: str):
        def keep(module, args, output):
            seen.setdefault(name, output.detach().clone())

        return keep

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            out = model(batch)
    finally:
        for h in handles:
            h.remove()
    seen["output.energy_per_atom"] = out[K.ENERGY] / batch[K.NUM_ATOMS]
    seen["output.forces"] = out[K.FORCES]
    return seen


def loss_of(model: AtomisticModel, batch: dict) -> Tensor:
    """MSE of energy per atom and direct forces, both in units of the force RMS."""
    out = model(batch)
    scale = model.energy_scale
    n = batch[K.NUM_ATOMS].to(out[K.ENERGY].dtype)
    energy = ((out[K.ENERGY] - batch[K.ENERGY]) / n / scale).square().mean()
    forces = ((out[K.FORCES] - batch[K.FORCES]) / scale).square().mean()
    return energy + forces


def width_model(family: str, width: int, parametrization: str, base_width: int, seed: int
                ) -> AtomisticModel:
    """The width-ladder model (presets.pet_width_shape) at `width`, direct forces."""
    if family != "pet":
        raise ValueError(f"coord check: only pet has a muP parametrisation, got '{family}'")
    torch.manual_seed(seed)
    return build_model(
        "pet", "w16", forces="direct", parametrization=parametrization,
        mup_base_width=base_width, **pet_width_shape(width),
    )


def track(model: AtomisticModel, batch: dict, steps: int, lr: float, layers: dict[str, nn.Module]
          ) -> dict[str, list[float]]:
    """RMS change of each layer's output after each of `steps` Adam steps."""
    baseline, force_rms = fit_baseline(batch)
    model.set_composition_baseline(baseline)
    model.set_energy_scale(force_rms)
    optimizer = build_optimizer(model, OptimConfig(name="adam", lr=lr))
    start = record_outputs(model, layers, batch)
    curves: dict[str, list[float]] = {name: [] for name in start}
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, batch).backward()
        optimizer.step()
        now = record_outputs(model, layers, batch)
        for name in start:
            delta = (now[name] - start[name]).double()
            curves[name].append(float(delta.square().mean().sqrt()))
    return curves


def coord_check(
    family: str,
    widths: list[int],
    steps: int,
    parametrizations: list[str],
    lr: float = 3e-3,
    base_width: int | None = None,
    batch: dict | None = None,
    seed: int = 0,
    num_seeds: int = 3,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{parametrization: {str(width): {layer: [rms change after each step]}}}.

    Args:
        family: model family ("pet").
        widths: edge widths (multiples of 8).
        steps: Adam steps on the fixed batch.
        parametrizations: any of "standard", "mup".
        lr: Adam learning rate, the same at every width and parametrisation.
        base_width: muP base width; None: the narrowest width.
        batch: the fixed batch; None: fixed_batch().
        seed: first weight seed, the same at every width.
        num_seeds: weight seeds seed, seed + 1, ... whose RMS changes are averaged
            (at width 16 a single draw scatters by up to 2x).
    """
    base = base_width or min(widths)
    batch = batch if batch is not None else fixed_batch()
    result: dict[str, dict[str, dict[str, list[float]]]] = {}
    for param in parametrizations:
        result[param] = {}
        for width in widths:
            runs = []
            for s in range(seed, seed + num_seeds):
                model = width_model(family, width, param, base, s)
                runs.append(track(model, batch, steps, lr, LAYERS[family](model)))
            result[param][str(width)] = {
                name: [sum(r[name][k] for r in runs) / num_seeds for k in range(steps)]
                for name in runs[0]
            }
    return result


def width_ratios(result: dict) -> dict[str, dict[str, float]]:
    """Per parametrisation and layer: last-step RMS change at the widest width
    divided by that at the narrowest."""
    ratios = {}
    for param, by_width in result.items():
        widths = sorted(by_width, key=int)
        lo, hi = by_width[widths[0]], by_width[widths[-1]]
        ratios[param] = {name: hi[name][-1] / max(lo[name][-1], 1e-30) for name in lo}
    return ratios


def plot(result: dict, path: Path, title: str = "") -> None:
    """One panel per parametrisation: last-step RMS change vs width, per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(result)
    fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params) + 2.5, 4.5),
                             squeeze=False, sharey=True)
    # One colour per kind of layer, one line style per GNN layer: 13 curves stay
    # readable where a 10-colour cycle would repeat.
    kinds: list[str] = []
    for ax, param in zip(axes[0], params):
        widths = sorted(result[param], key=int)
        for name in result[param][widths[0]]:
            kind = name.rsplit(".", 1)[-1]
            kinds += [kind] if kind not in kinds else []
            depth = int(name.split(".")[1]) if name.startswith("layers.") else 0
            ax.plot([int(w) for w in widths], [result[param][w][name][-1] for w in widths],
                    marker="o", color=f"C{kinds.index(kind) % 10}",
                    linestyle=("-", "--", ":", "-.")[depth % 4], label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("edge width d_edge")
        ax.set_title(param)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("RMS change of layer output, last step")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.coord_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pet", choices=sorted(LAYERS))
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--parametrization", nargs="+", default=["standard", "mup"],
                   choices=["standard", "mup"])
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--base-width", type=int, default=None,
                   help="muP base width (default: the narrowest width)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-seeds", type=int, default=3, help="weight seeds averaged")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = coord_check(args.model, args.widths, args.steps, args.parametrization, args.lr,
                         args.base_width, seed=args.seed, num_seeds=args.num_seeds)
    (out / "coord_check.json").write_text(json.dumps(result, indent=1))
    base = args.base_width or min(args.widths)
    plot(result, out / "coord_check.png",
         f"{args.model}, Adam lr {args.lr:g}, {args.steps} steps, muP base width {base}, "
        f"mean of {args.num_seeds} seeds")
    for param, ratios in width_ratios(result).items():
        worst = max(ratios, key=lambda k: max(ratios[k], 1 / ratios[k]))
        print(f"{param:9s} widest/narrowest: worst {worst} {ratios[worst]:.2f}x  "
              + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
    print(f"wrote {out / 'coord_check.json'} and {out / 'coord_check.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
