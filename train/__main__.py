"""python -m train [hydra overrides]  (see configs/train.yaml and the README)."""

from __future__ import annotations

import sys

from data_pipelines.schema import DataError
from train.checkpoint import CheckpointError
from train.config import ConfigError, compose, to_object


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print(
            "example: python -m train data.root=runs/data/emt model=pet size=tiny "
            "forces=direct trainer.max_steps=100 run_dir=runs/try logger=none"
        )
        return 0
    try:
        cfg = to_object(compose(argv))
        from train.run import run

        summary = run(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"checkpoint error: {err}", file=sys.stderr)
        return 2
    if summary.get("status") == "finished":
        metrics = {k: v for k, v in summary.items() if k.startswith("val/") and k.endswith("mae")}
        print("finished: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), flush=True)
        return 0
    print(
        f"stopped ({summary.get('status')}) at step {summary.get('steps')}; "
        "re-run the same command to resume",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
