#!/usr/bin/env bash
# Fetches, on a machine with network, the wheels the GPU check installs on a lent
# GPU machine that has none (Python 3.12, torch + CUDA and e3nn preinstalled):
#
#   bash bench/gpu_wheels.sh [DEST]        # DEST defaults to runs/gpu-wheels
#
# The list is this project's environment (.venv) less what the GPU machine
# brings (torch, e3nn and their numpy, scipy, sympy), what the check does not
# import (W&B, phonopy, metatomic, database drivers, linters) and CUDA wheels.
# Wheels are for CPython 3.12 on x86-64 Linux; the two packages published only
# as source (antlr4's runtime, DeepSpeed) are built here into pure-Python
# wheels. bench/gpu_check.sh installs the ones the machine lacks. About 52 MB:
# with the working tree it stays under the device tool's 64 MiB carry limit
# (run ... carry=["runs/gpu-wheels"]). tests/train/test_gpu_path.py checks that
# nothing the check imports is skipped here.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-runs/gpu-wheels}
PY=${PY:-.venv/bin/python}
mkdir -p "$DEST"
SKIP='^(torch|triton|nvidia-.*|e3nn|numpy|scipy|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|typing.extensions|mlip-scaling|ruff|wandb|protobuf|googleapis-common-protos|opentelemetry-.*|cryptography|cffi|pycparser|psycopg2-binary|pymysql|h5py|phonopy|phonors|symfc|spglib|metatensor-.*|metatomic-.*|cwevals|ctypes-dlpack|requests|urllib3|certifi|idna|httpx|httpcore|h11|anyio|sniffio|click|gitpython|gitdb|smmap|platformdirs|distro)$'
built=()
while IFS='=' read -r name _ version; do
    lower=$(echo "$name" | tr 'A-Z_' 'a-z-')
    [[ $lower =~ $SKIP ]] && continue
    # a wheel for CPython 3.12 on x86-64 Linux, else (source-only packages such
    # as antlr4's runtime and DeepSpeed) one built here, pure Python
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
        "$name==$version" 2>/dev/null && continue
    # DS_BUILD_OPS=0: DeepSpeed compiles its C++/CUDA ops at first use instead
    DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation \
        --wheel-dir "$DEST" "$name==$version" 2>/dev/null && built+=("$name") \
        || { echo "no wheel for $name==$version" >&2; exit 1; }
done < <("$PY" -m pip freeze --exclude-editable | grep '==')
echo "built here: ${built[*]:-none}"
du -sh "$DEST"
ls "$DEST" | wc -l
