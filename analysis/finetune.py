"""How much is pretraining worth: the report of a pretrain/fine-tune study.

    python -m analysis.finetune STUDY_DIR [--metric val/forces_mae] [--out DIR]

Reads the runs of a study with ``study.finetune`` (slurm/study.py): each grid
point's pretrained run on A (``budget.role`` pretrain), its fine-tune on B
(finetune), the pretrained model on B as it is (stage1-only) and, per model
and size, a model trained on B alone (b-only). Writes ``finetune.md`` (two
tables: the fine-tuned error against model size, and against pretraining data
size, with both baselines beside it), ``finetune.json`` (the rows) and
``finetune.png`` (the two curves), and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROLES = ("pretrain", "finetune", "stage1-only", "b-only")


@dataclass
class Point:
    """One pretrained grid point and the errors on B of what was made from it.

    Attributes:
        model, size: the model axis value and size preset.
        num_params: the model's parameters.
        data_fraction: the pretraining fraction of A.
        pretrain_structures: training structures of A it was pretrained on.
        pretrain_error: its error on A's validation split.
        stage1_only, finetuned, b_only: errors on B's validation split of the
            pretrained model as it is, of its fine-tune, and of a model of the
            same size trained on B alone (None where the run is missing).
    """

    model: str
    size: str
    num_params: int
    data_fraction: float
    pretrain_structures: int
    pretrain_error: float | None
    stage1_only: float | None
    finetuned: float | None
    b_only: float | None


def read_runs(study_dir: Path) -> list[dict]:
    """summary.json of every finished run under STUDY_DIR/runs."""
    out = []
    for path in sorted((Path(study_dir) / "runs").glob("*/summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"note: {path} is not readable JSON ({err}); skipped", file=sys.stderr)
            continue
        if summary.get("status") == "finished":
            out.append(summary)
    return out


def collect(runs: list[dict], metric: str) -> list[Point]:
    """One Point per pretrained run, its fine-tune and baselines joined by name.

    Raises:
        ValueError: no pretrained runs (not a study with study.finetune).
    """
    by_role: dict[str, dict[str, dict]] = {r: {} for r in ROLES}
    for s in runs:
        role = (s.get("budget") or {}).get("role")
        if role in by_role:
            by_role[role][s["run_name"]] = s
    if not by_role["pretrain"]:
        raise ValueError("no pretrained runs (budget.role=pretrain): is this a study with "
                         "study.finetune, and has it run?")
    b_only = {(s["axes"].get("model"), s.get("size")): s for s in by_role["b-only"].values()}
    points = []
    for name, pre in by_role["pretrain"].items():
        axes = pre.get("axes") or {}
        key = (axes.get("model"), pre.get("size"))
        ft = by_role["finetune"].get(f"{name}_ft")
        zs = by_role["stage1-only"].get(f"{name}_zs")
        points.append(Point(
            model=str(axes.get("model", pre.get("family"))),
            size=str(pre.get("size")),
            num_params=int(pre.get("num_params", 0)),
            data_fraction=float(axes.get("data_fraction", 1.0)),
            pretrain_structures=int((pre.get("data") or {}).get("num_train_structures", 0)),
            pretrain_error=pre.get(metric),
            stage1_only=zs.get(metric) if zs else None,
            finetuned=ft.get(metric) if ft else None,
            b_only=b_only[key].get(metric) if key in b_only else None,
        ))
    return sorted(points, key=lambda p: (p.model, p.num_params, p.pretrain_structures))


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def tables(points: list[Point], metric: str) -> str:
    """The two markdown tables (by model size, by pretraining data size)."""
    head = ("| model | size | params | pretrain structures (A) | on A | stage 1 only on B "
            "| fine-tuned on B | B only |\n|---|---|---|---|---|---|---|---|")
    def row(p: Point) -> str:
        return (f"| {p.model} | {p.size} | {p.num_params:,} | {p.pretrain_structures} | "
                f"{_fmt(p.pretrain_error)} | {_fmt(p.stage1_only)} | {_fmt(p.finetuned)} | "
                f"{_fmt(p.b_only)} |")
    by_size = sorted(points, key=lambda p: (p.model, p.pretrain_structures, p.num_params))
    by_data = sorted(points, key=lambda p: (p.model, p.num_params, p.pretrain_structures))
    return "\n".join([
        f"{metric} (lower is better) against model size, at each pretraining data size:",
        "", head, *map(row, by_size), "",
        f"{metric} against pretraining data size, at each model size:",
        "", head, *map(row, by_data), "",
    ])


def figure(points: list[Point], metric: str, path: Path) -> Path:
    """Fine-tuned error against pretraining data size (one line per size) and
    against parameters (one line per data size), baselines dashed and dotted;
    log x (a tick at each measured value), linear y from 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    sizes = sorted({(p.model, p.size, p.num_params) for p in points}, key=lambda t: t[2])
    for k, (model, size, params) in enumerate(sizes):
        group = sorted((p for p in points if (p.model, p.size) == (model, size)),
                       key=lambda p: p.pretrain_structures)
        color = f"C{k}"
        xs = [p.pretrain_structures for p in group]
        for attr, style, label in (("finetuned", "-o", "fine-tuned"),
                                   ("stage1_only", "--s", "stage 1 only")):
            pairs = [(x, getattr(p, attr)) for x, p in zip(xs, group) if getattr(p, attr)]
            if pairs:
                left.plot(*zip(*pairs), style, color=color,
                          label=f"{model} {size} ({params:,}): {label}")
        if group and group[0].b_only is not None:
            left.axhline(group[0].b_only, color=color, ls=":",
                         label=f"{model} {size}: B only")
    fractions = sorted({p.pretrain_structures for p in points})
    for k, n in enumerate(fractions):
        group = sorted((p for p in points if p.pretrain_structures == n),
                       key=lambda p: p.num_params)
        pairs = [(p.num_params, p.finetuned) for p in group if p.finetuned]
        if pairs:
            right.plot(*zip(*pairs), "-o", color=f"C{k}", label=f"pretrained on {n} structures")
    only = sorted({(p.num_params, p.b_only) for p in points if p.b_only})
    if only:
        right.plot(*zip(*only), ":^", color="k", label="B only")
    left.set(xscale="log", xlabel="pretraining structures (A)",
             ylabel=f"{metric} on B", title="error on B vs pretraining data")
    right.set(xscale="log", xlabel="parameters",
              ylabel=f"{metric} on B", title="fine-tuned error on B vs model size")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    # log x with a tick at each measured value, plain numbers; errors on a linear y
    for ax, ticks in ((left, fractions), (right, sorted({t[2] for t in sizes}))):
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        else:  # the study has pretrained runs only, so far
            ax.text(0.5, 0.5, "no fine-tuned runs yet", transform=ax.transAxes, ha="center")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study_dir", help="a study directory (its runs/ folder is read)")
    p.add_argument("--metric", default="val/forces_mae", help="summary.json key to compare")
    p.add_argument("--out", default=None, help="report folder (default STUDY_DIR/report)")
    args = p.parse_args(argv)
    try:
        points = collect(read_runs(Path(args.study_dir)), args.metric)
    except ValueError as err:
        p.error(f"{args.study_dir}: {err}")
    out = Path(args.out or Path(args.study_dir) / "report")
    out.mkdir(parents=True, exist_ok=True)
    text = tables(points, args.metric)
    (out / "finetune.md").write_text(text)
    (out / "finetune.json").write_text(json.dumps([asdict(q) for q in points], indent=1))
    figure(points, args.metric, out / "finetune.png")
    print(text)
    print(f"wrote {out / 'finetune.md'}, finetune.json, finetune.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
