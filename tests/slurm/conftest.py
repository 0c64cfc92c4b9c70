"""The single-node SLURM test cluster, for every SLURM test.

Outside CI a machine that cannot start it (not root, no apt-get) skips the
SLURM tests with the reason. With ``CI=true`` (set by .ci/run) a cluster that
does not start fails them: CI must never pass with the SLURM path untested.
"""

from __future__ import annotations

import os

import pytest


def slurm_node() -> str:
    """The local cluster's node name, starting the cluster if needed."""
    from slurm.slurmctl import SlurmUnavailable, ensure_local_slurm

    in_ci = os.environ.get("CI", "").lower() == "true"
    if os.environ.get("MLIP_SLURM_TESTS") == "0" and not in_ci:
        pytest.skip("MLIP_SLURM_TESTS=0")
    try:
        return ensure_local_slurm()
    except SlurmUnavailable as error:
        if in_ci:
            pytest.fail(f"CI=true but the local SLURM cluster did not start: {error}")
        pytest.skip(f"local SLURM cluster unavailable: {error}")


@pytest.fixture(scope="module")
def local_slurm() -> str:
    return slurm_node()
