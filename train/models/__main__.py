"""`python -m train.models --list-sizes`: one line per preset, FAMILY SIZE NUM_PARAMS."""

from __future__ import annotations

import argparse
import json

from train.models import count_parameters, list_sizes, model_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.models", description=__doc__)
    parser.add_argument("--list-sizes", action="store_true", help="print every preset's size")
    parser.add_argument("--show", nargs=2, metavar=("FAMILY", "SIZE"), help="print every knob")
    args = parser.parse_args(argv)
    if args.show:
        family, size = args.show
        knobs = {"family": family, "size": size, **vars(model_config(family, size))}
        knobs["num_parameters"] = count_parameters(family, size)
        print(json.dumps(knobs, indent=2))
    if args.list_sizes or not args.show:
        for family, size, num in list_sizes():
            print(f"{family} {size} {num}")


if __name__ == "__main__":
    main()
