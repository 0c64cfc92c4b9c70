"""A self-contained model file: weights (EMA) + model config + dataset statistics.

    python -m train.export RUN_DIR [--out FILE]     (default RUN_DIR/model.pt)

Later tools load it with `load_model` without the training config tree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from data_pipelines.atomic import atomic_write
from train.serialization import safe_load

FORMAT = "mlip-scaling-model"
VERSION = 1


def export_model(model, ema, cfg, stats: dict, path: str | Path) -> Path:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if ema is not None:
        for name, value in ema.shadow.items():
            state[name] = value.to(state[name].dtype).cpu().clone()
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "family": cfg.model.family,
        "size": cfg.model.size,
        "forces": cfg.model.forces,
        "knobs": dict(cfg.model.knobs),
        "cutoff": float(model.cutoff),
        "model_config": model.describe(),
        "state_dict": state,
        "elements": stats.get("elements", []),
        "stats": {
            k: stats.get(k)
            for k in (
                "element_reference_energies_by_z",
                "force_rms",
                "residual_energy_per_atom_rms",
                "mean_num_neighbours",
            )
        },
        "dtype": cfg.trainer.dtype,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_model(path: str | Path, forces: str | None = None, device="cpu", dtype=None):
    """Rebuilds the model of an exported file.

    Args:
        forces: force mode to build (default: the trained one). A `both` or
            `direct` pet file can also be built `conservative` (its energy is
            differentiated; the direct heads are then unused).
    """
    from train.models import build_model

    payload = safe_load(path, "model file")
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    if payload["version"] > VERSION:
        raise ValueError(
            f"{path}: model file version {payload['version']}, this code reads up to {VERSION}"
        )
    trained = payload["forces"]
    build = forces or trained
    if build == "direct" and trained == "conservative":
        raise ValueError(
            f"{path} was trained with conservative forces only: it has no direct "
            "force head; use forces='conservative'"
        )
    # A pet model has the same parameters in every mode, so a `both` file builds
    # as plain `direct` (heads only: no autograd, the fast path) or `conservative`.
    model = build_model(payload["family"], payload["size"], build, **payload["knobs"])
    model.load_state_dict(payload["state_dict"])
    model.forces_requested = build
    dtype = dtype or getattr(torch, payload.get("dtype", "float32"))
    return model.to(device, dtype).eval(), payload


def export_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Exports the latest checkpoint of a run (EMA weights)."""
    from data_pipelines.dataset import load_stats
    from train import checkpoint
    from train.build import make_model
    from train.config import compose, to_object

    run_dir = Path(run_dir)
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run_dir / "config.yaml")
    if "study" in saved:  # runs made before studies became a config group
        saved["study_name"] = saved.pop("study")
    cfg = to_object(OmegaConf.merge(compose([]), saved))
    stats = load_stats(cfg.data.root)
    model = make_model(cfg, stats)
    ckpts = checkpoint.list_valid(run_dir / "checkpoints")
    if not ckpts:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to export")
    state = safe_load(ckpts[-1] / "trainer_rank0.pt", "checkpoint (trainer state)")

    class _Shadow:
        shadow = state["ema"]["shadow"]

    return export_model(model, _Shadow(), cfg, stats, out or run_dir / "model.pt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    print(f"wrote {export_run(args.run_dir, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
