"""make bench: every benchmark, each against a baseline measured in the same run.

    python -m analysis.bench --out runs/bench
        [--only data,plan,models,train,corrections,mup,scripted,peers,gpu]

Writes OUT/<name>.json per benchmark and OUT/results.json with all of them;
BENCHMARKS.md summarises the figures. Each runs alone too:
``python -m analysis.bench.data`` (the data pipeline), ``.plan`` (one epoch's
plan at 100M structures on 512 ranks), ``.models`` (model
inference), ``.training`` (the training loop), ``.corrections`` (inference-time
corrections), ``.mup`` (learning-rate transfer across width, standard vs muP),
``.scripted`` (TorchScript and metatomic models against eager, same weights),
``.peers`` (metatrain's PET and mace_run_train trained beside ours; about 20
minutes; ``BENCH_SKIP_PEERS=1`` skips it and peers.json says so), ``.gpu``
(the GPU check's training and inference; where no CUDA device is present,
gpu.json says it was skipped and why).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path


# Each benchmark is imported only when it runs: the data benchmark comes first
# and measures before torch and the models are loaded in this process.
def _data(argv: list[str]) -> object:
    from analysis.bench import data

    return data.main(argv)


def _plan(argv: list[str]) -> object:
    from analysis.bench import plan

    return plan.main(argv)


def _models(argv: list[str]) -> object:
    from analysis.bench import models

    return models.main(argv)


def _training(argv: list[str]) -> object:
    from analysis.bench import training

    return training.main(argv)


def _corrections(argv: list[str]) -> object:
    from analysis.bench import corrections

    return corrections.main(argv)


def _mup(argv: list[str]) -> object:
    from analysis.bench import mup

    return mup.main(argv)


def _scripted(argv: list[str]) -> object:
    from analysis.bench import scripted

    return scripted.main(argv)


def _peers(argv: list[str]) -> object:
    from analysis.bench import peers

    return peers.main(argv)


def _gpu(argv: list[str]) -> object:
    """The GPU check (analysis.bench.gpu) where a CUDA device is present; on a
    machine without one it records why it did not run."""
    import torch

    out = Path(argv[argv.index("--out") + 1])
    if not torch.cuda.is_available():
        reason = "no CUDA device here: run bench/gpu_check.sh on a GPU machine"
        print(f"skipped: {reason}", flush=True)
        out.write_text(json.dumps({"skipped": reason}))
        return None
    from analysis.bench import gpu

    result = gpu.run(out.with_suffix(""), "cuda", steps=300, quick=False)
    out.write_text(json.dumps(result, indent=1))
    return result


BENCHMARKS: dict[str, Callable[[list[str]], object]] = {
    "data": _data,
    "plan": _plan,
    "models": _models,
    "train": _training,
    "corrections": _corrections,
    "mup": _mup,
    "scripted": _scripted,
    "peers": _peers,
    "gpu": _gpu,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bench", description=__doc__)
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--only", default=",".join(BENCHMARKS))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    names = args.only.split(",")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"--only {','.join(unknown)}: choose from {','.join(BENCHMARKS)}")
    for name in names:
        t0 = time.time()
        print(f"\n== benchmark: {name}", flush=True)
        BENCHMARKS[name](["--out", str(out / f"{name}.json")])
        results[name] = json.loads((out / f"{name}.json").read_text())
        results[name]["bench_seconds"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
