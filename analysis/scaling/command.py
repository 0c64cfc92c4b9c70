"""The scaling-analysis command: read runs, fit, write the report.

    python -m analysis scaling STUDY_DIR_OR_CSV... --out REPORT_DIR \\
        [--metric NAME]... [--law N|D|ND|C]... [--form offset|pure] [--data atoms_seen]
        [--params non-embedding|total] [--include-ladder-mains]

(``python -m analysis.scaling`` is the same command.) Writes
REPORT_DIR/fits.json, runs.csv, figures/*.png|pdf and report.md (see
:mod:`analysis.scaling.report`). L(N) is fitted at fixed data (the data budget
with the most distinct sizes), L(D) at fixed size, L(N, D) on all runs of a
family, L(C) on the family's lower compute envelope.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from analysis.scaling.analyse import analyse
from analysis.scaling.laws import LAW_NAMES
from analysis.scaling.load import LoadError, load_inputs
from analysis.scaling.types import DATA_MEASURES, PARAM_MEASURES, Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis scaling",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="+", help="study directories, CSV tables, wandb:ENTITY/PROJECT[/GROUP]"
    )
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.add_argument(
        "--metric",
        action="append",
        help="metric to fit (repeatable; default: the validation MAEs and eval/ metrics "
        "that some family has at least two runs of)",
    )
    p.add_argument(
        "--law",
        action="append",
        help="N, D, ND or C (compute, fitted to the lower envelope; repeatable or "
        "comma-separated; default: all four, each where the runs allow it)",
    )
    p.add_argument(
        "--form",
        choices=("offset", "pure"),
        default="offset",
        help="offset: L = E + ...; pure: no E (default offset)",
    )
    p.add_argument(
        "--data",
        choices=("auto", *DATA_MEASURES),
        default="auto",
        help="what D counts (default auto: atoms_seen, or the training-set size when only "
        "that varies, as with a fixed step budget)",
    )
    p.add_argument(
        "--params",
        choices=tuple(PARAM_MEASURES),
        default="non-embedding",
        help="what N counts (default non-embedding: without per-species embeddings and "
        "per-element baselines; the total count where a run lacks it, with a note)",
    )
    p.add_argument(
        "--include-ladder-mains",
        action="store_true",
        help="fit WSD-ladder main runs too (default: only their cooldown branches, the "
        "main run is never cooled down)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples (default 1000)")
    p.add_argument("--ci", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--huber-delta", type=float, default=1e-3, help="on log-residuals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes for the fits (default: up to 2)",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument(
        "--wandb",
        nargs="?",
        choices=("auto", "off", "offline", "online"),
        const="auto",
        default="off",
        metavar="MODE",
        help="upload fitted laws and figures to W&B only when given: --wandb alone "
        "follows the runs' logger (offline by default), or offline|online (default: off, "
        "no W&B run and no W&B output)",
    )
    p.add_argument("--wandb-project")
    p.add_argument("--wandb-entity")
    p.add_argument("--wandb-group")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    laws = tuple(
        dict.fromkeys(
            part.strip().upper()
            for item in (args.law or [",".join(LAW_NAMES)])
            for part in item.split(",")
            if part.strip()
        )
    )
    bad = [law for law in laws if law not in LAW_NAMES]
    if bad or not 0 < args.ci < 1 or args.bootstrap < 0 or args.huber_delta <= 0:
        print(
            f"error: bad option: laws {bad or 'ok'}, --ci in (0, 1), --bootstrap >= 0, "
            "--huber-delta > 0",
            file=sys.stderr,
        )
        return 2
    settings = Settings(
        laws=laws,
        form=args.form,
        data_measure=args.data,
        num_bootstrap=args.bootstrap,
        ci_level=args.ci,
        huber_delta=args.huber_delta,
        seed=args.seed,
        workers=args.workers,
        param_measure=args.params,
        include_ladder_mains=args.include_ladder_mains,
    )
    from analysis.scaling import report  # matplotlib only when writing

    try:
        runs = load_inputs(args.inputs)
        result = analyse(runs, settings, args.metric)
    except LoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = report.write_all(result, args.out, inputs=args.inputs, figures=not args.no_figures)
    for line in report.summary_lines(result):
        print(line)
    print(f"report: {paths['report']}")
    wb = report.wandb_target(
        result, args.wandb, args.wandb_project, args.wandb_entity, args.wandb_group, os.environ
    )
    if wb is not None:
        report.upload_wandb(result, args.out, **wb)
    return 0 if any(True for _ in result.entries()) else 1
