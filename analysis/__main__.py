"""``python -m analysis COMMAND ...``: the evaluation workflows and the scaling analysis.

    python -m analysis relax     --model M --structures FILE --out DIR [...]
    python -m analysis phonons   --model M --structures FILE --out DIR [...]
    python -m analysis symmetry  --model M --structures FILE [--out DIR] [...]
    python -m analysis speed     --model M [--sizes 64 256 1024] [...]
    python -m analysis elastic   --model M --elastic-sets FILE... [--out DIR]
    python -m analysis practical --model RUN/model.pt --test-data SHARD_DIR --out DIR
    python -m analysis scaling   STUDY_DIR_OR_CSV... --out REPORT_DIR [...]

``python -m analysis COMMAND --help`` lists a command's flags.
"""

from __future__ import annotations

import sys

WORKFLOW_COMMANDS = ("relax", "phonons", "symmetry", "speed", "elastic", "practical")


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    # imported per command: the scaling analysis needs no phonopy, the workflows no matplotlib
    if command == "scaling":
        from analysis.scaling.command import main as scaling

        return scaling(rest)
    if command in WORKFLOW_COMMANDS:
        from analysis.workflows.command import main as workflow

        workflow(command, rest)
        return 0
    print(
        f"python -m analysis: unknown command {command!r}; choose from "
        f"{', '.join((*WORKFLOW_COMMANDS, 'scaling'))}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
