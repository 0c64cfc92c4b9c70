"""Errors of a trained model on any shard directory: a table, JSON and parity plots.

    python -m train.evaluate RUN_DIR_OR_MODEL_FILE --data SHARD_DIR [--split test]
        [--forces direct|conservative] [--out FILE.json] [--json] [--parity DIR]

Prints MAE and RMSE of energy per atom, forces and stress with their units,
the same per configuration type (when the data carries one: mlearn/maml
groups, extended XYZ `config_type`...), force errors per element, and a
one-line summary. The table shows meV; `--out FILE` (and `--json`, to stdout)
gives every number in eV units, keys named after the split evaluated:
`test/energy_per_atom_mae` (eV/atom), `test/forces_mae` (eV/A),
`test/stress_mae` (eV/A^3) for `--split test`, as metrics.jsonl names its
validation rows `val/...`. `--parity DIR` writes predicted-against-reference
PNGs (train.parity).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from data_pipelines import schema as K
from data_pipelines.atomic import write_text
from data_pipelines.loader import LoaderConfig, StreamingLoader
from data_pipelines.schema import DataError
from train.losses import VAL_UNITS, ErrorSums
from train.trainer import check_elements, element_mask, to_device

# The rows of a breakdown table: quantity -> (label, unit of the JSON value).
BREAKDOWN = {"energy_per_atom": "eV/atom", "forces": "eV/A", "stress": "eV/A^3"}
NO_TYPE = "(none)"  # structures whose data carries no configuration type


def resolve_model_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").exists() and not (path / "config.yaml").exists():
            raise ValueError(
                f"{path}: not a run directory (no model.pt, no config.yaml); give a run "
                "directory of python -m train or an exported model file"
            )
        if not (path / "model.pt").exists():
            from train.export import export_run

            export_run(path)
        return path / "model.pt"
    return path


class _Breakdown:
    """Error sums [sum |e|, sum e^2, count] per configuration type and per element."""

    def __init__(self) -> None:
        self.by_type: dict[str, torch.Tensor] = {}
        self.num_structures: dict[str, int] = {}
        self.num_atoms: dict[str, int] = {}
        self.by_element = torch.zeros(119, 3, dtype=torch.float64)

    def add(self, batch: dict, out: dict) -> None:
        num_structures = batch[K.NUM_ATOMS].numel()
        rows = torch.zeros(num_structures, len(BREAKDOWN), 3, dtype=torch.float64)
        n = batch[K.NUM_ATOMS].double()
        has_e = batch[K.HAS_ENERGY]
        # torch.where, not a product with the mask: an unlabelled NaN must not leak in.
        e = torch.where(has_e, (out[K.ENERGY].detach().double() - batch[K.ENERGY].double()) / n, 0)
        rows[:, 0] = torch.stack([e.abs(), e.square(), has_e.double()], 1)
        # Forces: per component, summed per structure and per element.
        atom_mask = batch[K.HAS_FORCES][batch[K.BATCH]]
        f = out[K.FORCES].detach().double() - batch[K.FORCES].double()
        f = torch.where(atom_mask[:, None], f, 0)
        per_atom = torch.stack([f.abs().sum(1), f.square().sum(1), 3 * atom_mask.double()], 1)
        rows[:, 1] = torch.zeros(num_structures, 3, dtype=torch.float64).index_add(
            0, batch[K.BATCH], per_atom
        )
        self.by_element.index_add_(0, batch[K.SPECIES], per_atom)
        if K.STRESS in out:
            has_s = batch[K.HAS_STRESS]
            s = (out[K.STRESS].detach().double() - batch[K.STRESS].double()).reshape(-1, 9)
            s = torch.where(has_s[:, None], s, 0)
            rows[:, 2] = torch.stack([s.abs().sum(1), s.square().sum(1), 9 * has_s.double()], 1)
        types = batch.get(K.CONFIG_TYPE) or [None] * num_structures
        for k, name in enumerate(types):
            name = name or NO_TYPE
            if name not in self.by_type:
                self.by_type[name] = torch.zeros(len(BREAKDOWN), 3, dtype=torch.float64)
                self.num_structures[name] = self.num_atoms[name] = 0
            self.by_type[name] += rows[k]
            self.num_structures[name] += 1
            self.num_atoms[name] += int(n[k])

    def config_types(self) -> dict[str, dict]:
        """{type: {num_structures, num_atoms, <quantity>_mae/_rmse}}; {} without types."""
        if set(self.by_type) <= {NO_TYPE}:
            return {}
        order = sorted(self.by_type, key=lambda t: (t == NO_TYPE, t))
        out = {}
        for name in order:
            row = {"num_structures": self.num_structures[name], "num_atoms": self.num_atoms[name]}
            for q, (abs_sum, sq_sum, count) in zip(BREAKDOWN, self.by_type[name].tolist()):
                if count > 0:
                    row[f"{q}_mae"] = abs_sum / count
                    row[f"{q}_rmse"] = (sq_sum / count) ** 0.5
            out[name] = row
        return out

    def elements(self) -> dict[str, dict]:
        """{symbol: {num_atoms, forces_mae, forces_rmse}} for elements with force labels."""
        out = {}
        for z in range(119):
            abs_sum, sq_sum, count = self.by_element[z].tolist()
            if count > 0:
                out[chemical_symbols[z]] = {
                    "num_atoms": int(round(count / 3)),
                    "forces_mae": abs_sum / count,
                    "forces_rmse": (sq_sum / count) ** 0.5,
                }
        return out


def evaluate(
    model_path: str | Path,
    data: str,
    split: str = "test",
    forces: str | None = None,
    max_atoms: int = 512,
    prefix: str = "val",
    parity: str | Path | None = None,
) -> dict:
    """Errors of a model file (or run directory) on one split of a data root.

    Args:
        model_path: an exported model file, or a run directory (exported if needed).
        data: the data root (shard directory or URL the loader reads).
        split: which split to evaluate.
        forces: force mode to build the model in (default: the trained one).
        max_atoms: atoms per batch.
        prefix: first part of the metric keys. The default "val" matches
            metrics.jsonl and summary.json, so a run's numbers compare key for
            key; the command line uses the split's name.
        parity: folder to write parity plots into (None: no plots).

    Returns:
        `{prefix}/<quantity>_mae` and `_rmse` (units in "units"), the old flat
        `{prefix}/forces_mae/<element>`, "by_config_type", "by_element",
        counts and what was evaluated.
    """
    from train.export import load_model
    from train.parity import ParityPoints, write_parity_plots

    model, payload = load_model(resolve_model_file(model_path), forces=forces)
    dtype = next(model.parameters()).dtype
    allowed = element_mask(payload["elements"])
    loader = StreamingLoader(
        LoaderConfig(
            root=data, split=split, cutoff=model.cutoff, max_atoms=max_atoms, shuffle=False
        )
    )
    sums = ErrorSums()
    breakdown = _Breakdown()
    points = ParityPoints() if parity is not None else None
    num_batches = num_atoms = 0
    for batch in loader:
        check_elements(batch, allowed)
        batch = to_device(batch, torch.device("cpu"), dtype)
        with torch.no_grad():
            out = model(batch)
        if forces == "direct" and "direct_forces" in out:
            out = {**out, K.FORCES: out["direct_forces"], K.STRESS: out["direct_stress"]}
        sums = sums + ErrorSums.of_batch(batch, out)
        breakdown.add(batch, out)
        if points is not None:
            _gather(points, batch, out)
        num_batches += 1
        num_atoms += int(batch[K.NUM_ATOMS].sum())
    if num_batches == 0:
        raise ValueError(f"split '{split}' of {data} is empty")
    result: dict = sums.metrics(prefix)
    elements = breakdown.elements()
    result.update({f"{prefix}/forces_mae/{el}": row["forces_mae"] for el, row in elements.items()})
    result.update(
        {
            "data": data,
            "split": split,
            "model": str(model_path),
            "forces": forces or payload["forces"],
            "num_structures": sums.count("energy_per_atom"),
            "num_atoms": num_atoms,
            "units": {q: VAL_UNITS[q] for q in VAL_UNITS if f"{prefix}/{q}_mae" in result},
            "by_config_type": breakdown.config_types(),
            "by_element": elements,
        }
    )
    if points is not None and parity is not None:
        title = f"{Path(str(model_path)).name} on {Path(data).name}/{split}"
        result["parity_plots"] = [str(p) for p in write_parity_plots(points, parity, title)]
    return result


def _gather(points, batch: dict, out: dict) -> None:
    """Adds a batch's labelled predictions to the parity points, each with the
    configuration type of its structure (colours in the plots)."""
    has_e = batch[K.HAS_ENERGY]
    n = batch[K.NUM_ATOMS].double()
    types = np.array(batch.get(K.CONFIG_TYPE) or [None] * len(n), dtype=object)
    points.add(
        "energy_per_atom",
        (out[K.ENERGY].detach().double() / n)[has_e].numpy(),
        (batch[K.ENERGY].double() / n)[has_e].numpy(),
        types[has_e.numpy()],
    )
    atoms = batch[K.HAS_FORCES][batch[K.BATCH]]
    points.add("forces", out[K.FORCES].detach()[atoms].double().numpy(),
               batch[K.FORCES][atoms].double().numpy(),
               types[batch[K.BATCH][atoms].numpy()])
    if K.STRESS in out:
        has_s = batch[K.HAS_STRESS]
        points.add("stress", out[K.STRESS].detach()[has_s].double().numpy(),
                   batch[K.STRESS][has_s].double().numpy(), types[has_s.numpy()])


# Table rows: quantity -> (label, shown unit, factor from the JSON unit, what counts).
_ROWS = {
    "energy_per_atom": ("energy per atom", "meV/atom", 1e3, "structures"),
    "forces": ("forces", "meV/A", 1e3, "atoms"),
    "stress": ("stress", "meV/A^3", 1e3, "structures"),
    "direct_forces": ("direct forces (heads)", "meV/A", 1e3, "atoms"),
    "direct_stress": ("direct stress (heads)", "meV/A^3", 1e3, "structures"),
}


def _num(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(  # noqa: E731 - one use, reads as a format
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
    )
    return [line(header), *(line(r) for r in rows)]


def format_report(result: dict, prefix: str, written: str | None = None) -> str:
    """The human form of an `evaluate` result: tables with units, the files
    written (`written`: the JSON file) and a summary line."""
    lines = [
        f"model  {result['model']} ({result['forces']} forces)",
        f"data   {result['data']}, split {result['split']}: {result['num_structures']} "
        f"structures, {result['num_atoms']} atoms",
        "",
    ]
    rows = []
    for q, (label, unit, factor, per) in _ROWS.items():
        mae = result.get(f"{prefix}/{q}_mae")
        if mae is None:
            continue
        rmse = result[f"{prefix}/{q}_rmse"]
        rows.append([label, unit, _num(mae * factor), _num(rmse * factor), per])
    lines += _table(["quantity", "unit", "MAE", "RMSE", "over"], rows)
    types = result.get("by_config_type") or {}
    if types:
        lines += ["", "MAE by configuration type"]
        head = ["config type", "structures", "energy meV/atom", "forces meV/A", "stress meV/A^3"]
        body = [
            [name, str(row["num_structures"])]
            + [_num(row[f"{q}_mae"] * 1e3) if f"{q}_mae" in row else "n/a" for q in BREAKDOWN]
            for name, row in types.items()
        ]
        lines += _table(head, body)
    elements = result.get("by_element") or {}
    if elements:
        lines += ["", "forces by element"]
        body = [
            [el, str(row["num_atoms"]), _num(row["forces_mae"] * 1e3),
             _num(row["forces_rmse"] * 1e3)]
            for el, row in elements.items()
        ]
        lines += _table(["element", "atoms", "MAE meV/A", "RMSE meV/A"], body)
    for path in result.get("parity_plots", []):
        lines.append(f"parity plot: {path}")
    if written:
        lines.append(f"metrics (eV units, JSON): {written}")
    lines += ["", summary_line(result, prefix)]
    return "\n".join(lines)


def summary_line(result: dict, prefix: str) -> str:
    """One line: the split, each quantity's MAE with its unit, and what was evaluated."""
    parts = []
    for q, (label, unit, factor, _) in list(_ROWS.items())[:3]:
        mae = result.get(f"{prefix}/{q}_mae")
        if mae is not None:
            parts.append(f"{label.split()[0]} {_num(mae * factor)} {unit}")
    return (
        f"{result['split']} MAE: {', '.join(parts)} ({result['num_structures']} structures; "
        f"{result['model']}, {result['forces']} forces)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="run directory or exported model file")
    p.add_argument("--data", required=True, help="shard directory")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--forces", choices=["direct", "conservative"], default=None,
                   help="force mode (default: the trained one)")
    p.add_argument("--max-atoms", type=int, default=512, help="atoms per batch")
    p.add_argument("--out", default=None, help="write the result as JSON (eV units) here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--parity", default=None, metavar="DIR",
                   help="write parity plots (PNG) of energy per atom, forces, stress here")
    args = p.parse_args(argv)
    try:
        result = evaluate(args.model, args.data, args.split, args.forces, args.max_atoms,
                          prefix=args.split, parity=args.parity)
    except (DataError, FileNotFoundError, ValueError) as err:
        # a wrong path, split or model file: one line, not a traceback (MLIP_DEBUG=1: both)
        if os.environ.get("MLIP_DEBUG"):
            raise
        print(f"python -m train.evaluate: error: {_plain(err)}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text)
    print(text if args.json else format_report(result, args.split, args.out))
    return 0


def _plain(err: Exception) -> str:
    """An error's message; for a missing file, which file."""
    if isinstance(err, FileNotFoundError) and err.filename:
        what = "run directory or model file" if not Path(str(err.filename)).suffix else "file"
        return f"no such {what}: {err.filename}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
