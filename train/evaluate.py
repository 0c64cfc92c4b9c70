"""Validation metrics of a trained model on any shard directory.

    python -m train.evaluate RUN_DIR_OR_MODEL_FILE --data SHARD_DIR [--split test]
        [--out FILE] [--forces direct|conservative]

Metric names match metrics.jsonl (`val/energy_per_atom_mae`, ...; eV/atom,
eV/A, eV/A^3), plus per-element force MAE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from ase.data import chemical_symbols

from data_pipelines import schema as K
from data_pipelines.atomic import write_text
from data_pipelines.loader import LoaderConfig, StreamingLoader
from train.losses import ErrorSums
from train.trainer import check_elements, element_mask, to_device


def resolve_model_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").exists():
            from train.export import export_run

            export_run(path)
        return path / "model.pt"
    return path


def evaluate(
    model_path: str | Path,
    data: str,
    split: str = "test",
    forces: str | None = None,
    max_atoms: int = 512,
    prefix: str = "val",
) -> dict:
    from train.export import load_model

    model, payload = load_model(resolve_model_file(model_path), forces=forces)
    dtype = next(model.parameters()).dtype
    allowed = element_mask(payload["elements"])
    loader = StreamingLoader(
        LoaderConfig(
            root=data, split=split, cutoff=model.cutoff, max_atoms=max_atoms, shuffle=False
        )
    )
    sums = ErrorSums()
    num_batches = 0
    per_el = torch.zeros(119, 2, dtype=torch.float64)
    for batch in loader:
        check_elements(batch, allowed)
        batch = to_device(batch, torch.device("cpu"), dtype)
        with torch.no_grad():
            out = model(batch)
        if forces == "direct" and "direct_forces" in out:
            out = {**out, K.FORCES: out["direct_forces"], K.STRESS: out["direct_stress"]}
        sums = sums + ErrorSums.of_batch(batch, out)
        num_batches += 1
        mask = batch[K.HAS_FORCES][batch[K.BATCH]]
        err = (out[K.FORCES].detach().double() - batch[K.FORCES].double()).abs().mean(1)[mask]
        per_el[:, 0].index_add_(0, batch[K.SPECIES][mask], err)
        per_el[:, 1].index_add_(0, batch[K.SPECIES][mask], torch.ones_like(err))
    if num_batches == 0:
        raise ValueError(f"split '{split}' of {data} is empty")
    result = sums.metrics(prefix)
    result.update(
        {
            f"{prefix}/forces_mae/{chemical_symbols[z]}": float(per_el[z, 0] / per_el[z, 1])
            for z in range(119)
            if per_el[z, 1] > 0
        }
    )
    result.update(
        {
            "data": data,
            "split": split,
            "model": str(model_path),
            "forces": forces or payload["forces"],
            "num_structures": sums.count("energy_per_atom"),
        }
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="run directory or exported model file")
    p.add_argument("--data", required=True, help="shard directory")
    p.add_argument("--split", default="test")
    p.add_argument("--forces", choices=["direct", "conservative"], default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = evaluate(args.model, args.data, args.split, args.forces)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
