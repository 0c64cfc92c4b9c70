"""The workflows' command line, made from their settings dataclasses.

    python -m analysis relax|phonons|symmetry|speed|practical --model M [...] [--out DIR]

Each workflow's flags come from :class:`ModelOptions` (``--model`` and the
corrections it takes), ``--structures`` where it takes structures, ``--out``
and its settings dataclass, by :func:`analysis.workflows.settings.add_arguments`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from analysis.workflows.model import ModelOptions
from analysis.workflows.registry import WORKFLOWS, Workflow
from analysis.workflows.settings import add_arguments, from_namespace
from analysis.workflows.structures import STRUCTURES_HELP


def build_parser(workflow: Workflow) -> argparse.ArgumentParser:
    """The argument parser of one workflow."""
    parser = argparse.ArgumentParser(
        prog=f"python -m analysis {workflow.name}",
        description=workflow.doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = parser.add_argument_group("model, structures and output")
    model_fields = ("spec", *workflow.model_fields)
    required = ("spec",) if workflow.model_required else ()
    add_arguments(io, ModelOptions, only=model_fields, required=required)
    if workflow.structures == "required":
        io.add_argument("--structures", required=True, help=STRUCTURES_HELP)
    io.add_argument(
        "--out", type=Path, required=workflow.out_required, default=None, help="output directory"
    )
    add_arguments(parser.add_argument_group(f"{workflow.name} settings"), workflow.settings)
    return parser


def main(name: str, argv: list[str] | None = None) -> dict:
    """Runs workflow ``name`` with command-line arguments ``argv``; returns its result."""
    workflow = WORKFLOWS[name]
    parser = build_parser(workflow)
    args = parser.parse_args(argv)
    try:
        model = from_namespace(ModelOptions, args, only=("spec", *workflow.model_fields))
        settings = from_namespace(workflow.settings, args)
    except ValueError as err:
        parser.error(str(err))
    structures = getattr(args, "structures", None)
    try:
        result = workflow.run(model, structures, settings, args.out)
    except FileNotFoundError as err:  # a missing model or structures file: the person's input
        parser.error(str(err))
    except ValueError as err:
        # input the workflow cannot use (an element the model lacks, an empty
        # structures file): one line, not a traceback; MLIP_DEBUG=1 shows both
        if os.environ.get("MLIP_DEBUG"):
            raise
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(workflow.summary(model, settings, result, args.out))
    return result
