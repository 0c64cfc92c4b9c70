"""make bench: every benchmark, each against a baseline measured in the same run.

    python -m analysis.bench --out runs/bench [--only data,models,train]

Writes OUT/<name>.json per benchmark and OUT/results.json with all of them;
BENCHMARKS.md summarises the figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

BENCHMARKS = {
    "data": "analysis.bench_data",
    "models": "analysis.bench_models",
    "train": "analysis.bench_train",
    "corrections": "analysis.bench_corrections",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench", description=__doc__)
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--only", default=",".join(BENCHMARKS))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only.split(","):
        t0 = time.time()
        print(f"\n== benchmark: {name}", flush=True)
        module = importlib.import_module(BENCHMARKS[name])
        module.main(["--out", str(out / f"{name}.json")])
        results[name] = json.loads((out / f"{name}.json").read_text())
        results[name]["bench_seconds"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
