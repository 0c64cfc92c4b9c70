"""Model presets and their parameter counts.

    python -m train.models --list-sizes             one line per preset: FAMILY SIZE NUM_PARAMS
    python -m train.models --show pet tiny          every knob of a preset, and its count
    python -m train.models --show pet tiny model.knobs.d_edge=16 num_gnn_layers=3
    python -m train.models --show mace xs --knob channels=64

Overrides take the form training takes (`model.knobs.KEY=VALUE`, or just
`KEY=VALUE`; values are YAML: 16, 5.0, true, [64,64]) and are checked the same
way: an unknown knob fails naming the closest one. Counts are cached under the
user's cache folder (see train.models.count_cache), so listing builds nothing
once the counts are known.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from train.models import count_parameters, list_sizes, model_config

KNOB_PREFIX = "model.knobs."


def parse_knob(text: str) -> tuple[str, Any]:
    """'model.knobs.d_edge=16' or 'd_edge=16' -> ('d_edge', 16).

    Raises:
        ValueError: when there is no '=' or the key is empty.
    """
    key, sep, value = text.partition("=")
    key = key.strip().removeprefix(KNOB_PREFIX)
    if not sep or not key:
        raise ValueError(f"knob override '{text}': expected KEY=VALUE, e.g. d_edge=16")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value  # not YAML: take the text as it is, as Hydra does for odd strings
    return key, parsed


def show(family: str, size: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """Every knob of a preset with overrides applied, and its parameter count."""
    config = model_config(family, size, **knobs)
    out = {"family": family, "size": size, **vars(config)}
    if knobs:
        out["overrides"] = knobs
    out["num_parameters"] = count_parameters(family, size, **knobs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--list-sizes", action="store_true", help="print every preset's size")
    parser.add_argument(
        "--show",
        nargs="+",
        metavar="ARG",
        help="FAMILY SIZE [model.knobs.KEY=VALUE ...]: print every knob and the count",
    )
    parser.add_argument(
        "--knob", action="append", default=[], metavar="KEY=VALUE", help="a knob for --show"
    )
    args = parser.parse_args(argv)
    if args.knob and not args.show:
        parser.error("--knob goes with --show FAMILY SIZE")
    if args.show:
        if len(args.show) < 2:
            parser.error("--show needs FAMILY SIZE, e.g. --show pet tiny")
        family, size, *extra = args.show
        try:
            knobs = dict(parse_knob(text) for text in [*extra, *args.knob])
        except ValueError as err:
            parser.error(str(err))
        try:
            print(json.dumps(show(family, size, knobs), indent=2, default=list))
        except KeyError as err:  # model_config: names the closest family, size or knob
            print(f"error: {err.args[0]}", file=sys.stderr)
            return 2
        except (TypeError, ValueError) as err:  # a value the knob's dataclass refuses
            given = ", ".join(f"{k}={v!r}" for k, v in knobs.items())
            print(f"error: model.knobs ({given}): {err}", file=sys.stderr)
            return 2
    if args.list_sizes or not args.show:
        for family, size, num in list_sizes():
            print(f"{family} {size} {num}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
