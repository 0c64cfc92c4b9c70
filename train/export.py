"""A self-contained model file: weights (EMA) + model config + dataset statistics.

    python -m train.export RUN_DIR [--out FILE]     (default RUN_DIR/model.pt)
    python -m train.export RUN_DIR|MODEL_FILE --format metatomic [--forces direct]
        [--dtype float64] [--head NAME] [--out FILE]  (default RUN_DIR/model-metatomic.pt)
    python -m train.export RUN_DIR|MODEL_FILE --format mace [--out FILE]
    python -m train.export --show FILE [--no-config]

Later tools load it with `load_model` without the training config tree.
``--format metatomic`` writes a TorchScript metatomic model (train.metatomic)
for ASE, LAMMPS and other metatomic engines; ``--format mace`` a mace-torch
model file of a mace run (train.mace_torch). A model with heads per level of
theory (model.knobs.heads) is exported one head per metatomic file
(``--head``); our own file keeps every head. Every file carries a model card
(train.card): ``--show`` prints it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from data_pipelines.atomic import atomic_write
from train.card import build_card, model_baselines
from train.serialization import safe_load

FORMAT = "mlip-scaling-model"
VERSION = 1


def export_model(
    model,
    ema,
    cfg,
    stats: dict,
    path: str | Path,
    run_dir: str | Path | None = None,
    metrics: dict | None = None,
) -> Path:
    """Writes our model file: EMA weights, how to rebuild the model, and its card.

    Args:
        run_dir: the run directory the card reads (git.json, summary.json,
            metrics.jsonl); default: ``cfg.run_dir``, else the file's folder.
        metrics: final validation metrics for the card (default: the run's).
    """
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
                "element_reference_energies_by_head",
                "heads",
                "sources",
                "force_rms",
                "residual_energy_per_atom_rms",
                "mean_num_neighbours",
            )
            if k in stats or k in ("element_reference_energies_by_z", "force_rms")
        },
        # what the model computes with (a fine-tune keeps its parent's), checked on load
        "baselines": model_baselines(model),
        "energy_scale": float(model.energy_scale),
        "statistics_origin": getattr(model, "statistics_origin", None),
        "dtype": cfg.trainer.dtype,
        "card": build_card(model, cfg, stats, run_dir or cfg.run_dir or Path(path).parent, metrics),
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def check_statistics(model, payload: dict, path) -> None:
    """The loaded model computes with the statistics its file records.

    Raises:
        ValueError: naming the head and element whose baseline differs, or a
            different energy scale (a file whose weights and record disagree).
    """
    recorded = payload.get("baselines")
    if recorded is None:  # files from before statistics were recorded
        return
    loaded = model_baselines(model)
    if set(recorded) != set(loaded):
        raise ValueError(f"{path}: the file records heads {sorted(recorded)}, its weights "
                         f"hold {sorted(loaded)}")
    for head, refs in recorded.items():
        for z in sorted(set(refs) | set(loaded[head])):
            want, have = float(refs.get(z, 0.0)), loaded[head].get(z, 0.0)
            if abs(want - have) > 1e-6 * max(1.0, abs(want)):
                raise ValueError(
                    f"{path}: composition baseline of head {head or '(single)'} element Z={z} "
                    f"is {have} eV in the weights but {want} eV in the recorded statistics"
                )
    scale = payload.get("energy_scale")
    if scale is not None and abs(float(model.energy_scale) - scale) > 1e-6 * max(1.0, scale):
        raise ValueError(f"{path}: energy scale {float(model.energy_scale)} in the weights, "
                         f"{scale} recorded")


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
    knobs = dict(payload["knobs"])
    if payload["family"] == "mace":  # files from before a default changed keep their meaning
        from train.models.mace import LEGACY_KNOBS

        saved = payload.get("model_config") or {}
        knobs.update({k: v for k, v in LEGACY_KNOBS.items() if k not in saved and k not in knobs})
    model = build_model(payload["family"], payload["size"], build, **knobs)
    model.load_state_dict(payload["state_dict"])
    check_statistics(model, payload, path)
    model.forces_requested = build
    dtype = dtype or getattr(torch, payload.get("dtype", "float32"))
    return model.to(device, dtype).eval(), payload


def export_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Exports the latest checkpoint of a run (EMA weights, and the statistics the
    run trained with: its buffers, not ones recomputed from the data now)."""
    from train import checkpoint
    from train.build import make_model, open_data
    from train.config import compose, to_object

    run_dir = Path(run_dir)
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run_dir / "config.yaml")
    if "study" in saved:  # runs made before studies became a config group
        saved["study_name"] = saved.pop("study")
    base = compose([])
    # knobs (muP, heads, ...) are keys the default config lacks: a struct merge
    # refused them, so a run trained with any knob could not be exported
    OmegaConf.set_struct(base, False)
    cfg = to_object(OmegaConf.merge(base, saved))
    stats = open_data(cfg).stats  # one root or a mixture, per-head references
    model = make_model(cfg, stats)
    ckpts = checkpoint.list_valid(run_dir / "checkpoints")
    if not ckpts:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to export")
    state = safe_load(ckpts[-1] / "trainer_rank0.pt", "checkpoint (trainer state)")
    buffers = {k: v for k, v in checkpoint.engine_model_state(ckpts[-1]).items()
               if k in dict(model.named_buffers())}
    model.load_state_dict(buffers, strict=False)  # the run's baselines (a fine-tune's parent's)

    class _Shadow:
        shadow = state["ema"]["shadow"]

    return export_model(model, _Shadow(), cfg, stats, out or run_dir / "model.pt", run_dir)


DEFAULT_NAMES = {"ours": "model.pt", "metatomic": "model-metatomic.pt", "mace": "model-mace.model"}


def _export(args: argparse.Namespace) -> Path:
    """One export of the command line: from a run directory or one of our model files."""
    import tempfile

    source = Path(args.source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such run directory or model file")
    if args.format == "ours":
        if not source.is_dir():
            raise ValueError(f"{source} is a file: --format ours exports a run directory")
        return export_run(source, args.out)
    out = args.out or (source if source.is_dir() else source.parent) / DEFAULT_NAMES[args.format]
    with tempfile.TemporaryDirectory() as tmp:
        model_file = export_run(source, Path(tmp) / "model.pt") if source.is_dir() else source
        if args.format == "mace":
            from train.mace_torch import save_mace_torch

            model, payload = load_model(model_file)
            if model.head_names:
                raise ValueError(
                    f"{model_file} has heads {', '.join(model.head_names)}: --format mace "
                    "writes single-head files only; use --format metatomic --head NAME"
                )
            return save_mace_torch(model, payload, out)
        from train.metatomic import save_metatomic

        # direct outputs of a pet trained `both` need its heads: build it `both`
        model, payload = load_model(
            model_file, forces="both" if args.forces in ("direct", "both") else None
        )
        model, payload = one_head(model, payload, args.head)
        dtype = getattr(torch, args.dtype) if args.dtype else None
        return save_metatomic(model, payload, out, forces=args.forces, dtype=dtype)


def one_head(model, payload: dict, head: str | None):
    """The model computing energy head ``head`` (default: the first) alone, and
    its payload with the card naming the head, for formats without heads.

    Raises:
        ValueError: an unknown head (naming the valid ones).
    """
    if not model.head_names:
        model.head_index(head)  # a head name for a model without heads: say so
        return model, payload
    name = head or model.head_names[0]
    single = model.single_head(name)
    card = {**payload.get("card", {}), "head": name, "heads": list(model.head_names)}
    return single, {**payload, "card": card}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", nargs="?", help="run directory (or, for other formats, a model file)")
    p.add_argument("--out", default=None, help="file to write (default: in the run directory)")
    p.add_argument("--format", choices=("ours", "metatomic", "mace"), default="ours")
    p.add_argument(
        "--forces",
        choices=("conservative", "direct", "both"),
        default=None,
        help="metatomic: energy only (conservative), or with the direct force and stress "
        "heads as non_conservative_force/_stress (direct, both); default: as trained",
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default=None, help="metatomic dtype")
    p.add_argument("--head", default=None,
                   help="metatomic: the energy head to export, of a model trained with "
                        "model.knobs.heads (default: the first)")
    p.add_argument("--show", metavar="FILE", default=None, help="print a model file's card")
    p.add_argument("--no-config", action="store_true", help="--show without the config")
    args = p.parse_args(argv)
    if args.show is not None:
        from train.card import format_card, read_card

        try:
            print(format_card(read_card(args.show), with_config=not args.no_config))
        except (FileNotFoundError, ValueError) as err:
            p.error(str(err))
        return 0
    if args.source is None:
        p.error("give a run directory (or a model file), or --show FILE")
    if args.format != "metatomic" and (args.forces or args.dtype or args.head):
        p.error("--forces, --dtype and --head are options of --format metatomic")
    try:
        print(f"wrote {_export(args)}")
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
