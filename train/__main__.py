"""python -m train [hydra overrides]: compose configs/, check, and train one model.

Errors print one line naming the bad key or choice and the closest valid one;
MLIP_DEBUG=1 adds Hydra's full message.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import typing

import yaml

from data_pipelines.schema import DataError
from train.checkpoint import CheckpointError
from train.config import CONFIG_DIR, ConfigError, TrainConfig, compose, to_object

# What each group is for, in --help; groups not named here are listed anyway.
GROUP_HELP = {
    "model": "model family",
    "size": "size preset (python -m train.models --list-sizes: parameter counts)",
    "forces": "direct (output heads) | conservative (-dE/dr) | both",
    "data": "data loading and batching defaults",
    "optim": "optimiser",
    "schedule": "learning-rate schedule",
    "engine": "DeepSpeed ZeRO stage, or a plain torch loop",
    "logger": "W&B offline (files only), online, or none",
    "experiment": "training recipe (sets several groups and keys at once)",
}
# The size ladder, smallest first; other presets follow in natural order.
SIZE_ORDER = ("tiny", "mini", "xxs", "xs", "s", "m", "l", "xl")

# The overrides the README calls the contract, and a few more, with their units.
CONTRACT = (
    ("data.root=DIR", "shard directory (data_pipelines.convert / .generate), or a URL or pipe:"),
    ("model=FAMILY size=SIZE forces=MODE", "the groups above"),
    ("trainer.max_steps=N", "optimiser steps to run (with no budget set: 100)"),
    ("trainer.checkpoint_every=N", "steps between checkpoints"),
    ("schedule.total_steps=N", "steps of the LR schedule, independent of the steps run "
     "(null: trainer.max_steps)"),
    ("run_dir=DIR", "run directory (null: runs/<model>-<size>-<forces>-s<seed>)"),
    ("seed=N", "seed of the weights, data order and augmentation"),
    ("logger=NAME", "wandb-offline (default) | wandb | none"),
    ("model.knobs.KEY=VALUE", "any knob of PETConfig / MACEConfig, e.g. model.knobs.cutoff=5.0 "
     "(A); python -m train.models --show pet tiny lists them"),
    ("data.max_atoms=N", "atoms per batch and process"),
    ("data.cutoff_A=R", "neighbour-list radius, A (null: the model's cutoff)"),
    ("data.fraction=F", "nested subset of the training split, 0..1 of structures (or atoms)"),
    ("optim.lr=LR", "peak learning rate"),
    ("trainer.max_epochs=N", "passes over the training split (another budget)"),
    ("trainer.max_atoms_seen=N", "training atoms to see (another budget)"),
    ("trainer.max_time=T", "wall clock, seconds or [D-]HH:MM:SS: checkpoint and stop"),
    ("trainer.val_every=N", "steps between validations (0: none)"),
    ("trainer.resume=auto|never|require", "resume from the run directory's checkpoint"),
)
EXAMPLE = (
    "python -m train data.root=runs/data/emt model=pet size=tiny forces=direct "
    "trainer.max_steps=100 run_dir=runs/try logger=none"
)


def train_groups() -> dict[str, tuple[str | None, list[str]]]:
    """Group -> (default, choices) for the groups configs/train.yaml composes."""
    defaults = yaml.safe_load((CONFIG_DIR / "train.yaml").read_text()).get("defaults", [])
    out = {}
    for entry in defaults:
        if isinstance(entry, dict):
            ((group, default),) = entry.items()
            out[group] = (default, group_choices(group))
    return out


def group_choices(group: str) -> list[str]:
    """The YAML files of configs/<group>/, sizes in ladder order, others by name."""
    names = [p.stem for p in (CONFIG_DIR / group).glob("*.yaml")]

    def key(name: str) -> tuple:
        if group == "size" and name in SIZE_ORDER:
            return (0, SIZE_ORDER.index(name), "", 0)
        m = re.fullmatch(r"(\D*)(\d*)", name)  # w16 before w128
        return (1, 0, m.group(1), int(m.group(2) or 0)) if m else (1, 0, name, 0)

    return sorted(names, key=key)


def help_text() -> str:
    lines = [__doc__.strip(), "", "groups (GROUP=CHOICE; * the default):"]
    for group, (default, choices) in train_groups().items():
        shown = " ".join(f"{c}*" if c == default else c for c in choices)
        if default is None:
            shown += "  (default: none)"
        lines.append(f"  {group:<11}{shown}")
        if group in GROUP_HELP:
            lines.append(f"  {'':<11}{GROUP_HELP[group]}")
    lines += ["", "overrides (KEY=VALUE; units as given):"]
    width = max(len(k) for k, _ in CONTRACT)
    lines += [f"  {k:<{width}}  {v}" for k, v in CONTRACT]
    lines += [
        "",
        "every key: the dataclasses in train/config.py (a misspelt one fails naming the "
        "closest); the YAML in configs/.",
        f"example: {EXAMPLE}",
    ]
    return "\n".join(lines)


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.4)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _expected_type(path: str) -> str | None:
    """The annotated type of a dotted key of TrainConfig, e.g. 'int | None'."""
    node: typing.Any = TrainConfig
    hint = None
    for part in path.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        hint = hints[part]
        node = hint
    text = re.sub(r"<class '(\w+)'>", r"\1", str(hint).replace("typing.", ""))
    return text.replace(" | None", " or null").replace("NoneType", "null")


def one_line(err: ConfigError) -> str:
    """A config error as one line: what is wrong, the closest valid name, the options."""
    first = str(err).splitlines()[0] if str(err) else ""
    m = re.search(r"Could not find '([\w-]+)/([^']+)'", first)
    if m and (CONFIG_DIR / m.group(1)).is_dir():
        group, name = m.groups()
        choices = group_choices(group)
        return (
            f"{group}={name}: no such choice in configs/{group}/{_closest(name, choices)}; "
            f"choose one of: {', '.join(choices)}"
        )
    m = re.fullmatch(r"Error merging override ([\w.]+)=(.*)", first)
    if m:
        expected = _expected_type(m.group(1))
        if expected:
            return f"{m.group(1)}={m.group(2)}: expected {expected}, got {m.group(2)!r}"
    return first


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(help_text())
        return 0
    try:
        cfg = to_object(compose(argv))
        from train.run import run

        summary = run(cfg)
    except ConfigError as err:
        print(f"config error: {one_line(err)}", file=sys.stderr)
        # Hydra's full text repeats the line and dumps its search path: on request only.
        if os.environ.get("MLIP_DEBUG", "") not in ("", "0"):
            print(str(err), file=sys.stderr)
        return 2
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"checkpoint error: {err}", file=sys.stderr)
        return 2
    if summary.get("status") == "finished":
        print(finished_line(summary), flush=True)
        return 0
    print(
        f"stopped ({summary.get('status')}) at step {summary.get('steps')}; "
        "re-run the same command to resume",
        flush=True,
    )
    return 0


def finished_line(summary: dict) -> str:
    """The last line of a finished run: each validation MAE with its unit."""
    from train.losses import VAL_UNITS

    parts = []
    for key, value in summary.items():
        if key.startswith("val/") and key.endswith("_mae"):
            # val/forces_mae, and per source val/<name>/forces_mae
            unit = VAL_UNITS.get(key.rsplit("/", 1)[-1].removesuffix("_mae"), "")
            parts.append(f"{key}={value:.4g}" + (f" {unit}" if unit else ""))
    return "finished: " + ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
