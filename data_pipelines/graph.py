"""Neighbour lists (vesin) for periodic, mixed and open boundaries."""

from __future__ import annotations

import numpy as np
import vesin

from data_pipelines.schema import Structure

_NEIGHBOUR_LISTS: dict[float, vesin.NeighborList] = {}


def _calculator(cutoff: float) -> vesin.NeighborList:
    nl = _NEIGHBOUR_LISTS.get(cutoff)
    if nl is None:
        # one thread: loader workers parallelise across processes instead
        nl = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=1)
        _NEIGHBOUR_LISTS[cutoff] = nl
    return nl


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list within `cutoff` (Angstrom).

    Returns:
        (i, j, shifts): centre indices (num_edges,), neighbour indices (num_edges,),
        integer cell shifts (num_edges, 3) with r_ij = r_j - r_i + shifts @ cell.
    """
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any():
        box = np.zeros((3, 3))
        periodic: bool | list[bool] = False
    else:
        box = np.asarray(cell, dtype=np.float64)
        periodic = pbc.tolist()
    i, j, s = _calculator(float(cutoff)).compute(
        points=np.asarray(positions, dtype=np.float64), box=box, periodic=periodic, quantities="ijS"
    )
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.int64)


def structure_edges(structure: Structure, cutoff: float) -> tuple[np.ndarray, ...]:
    """The structure's neighbour list within ``cutoff``: the stored one when the
    shards hold one at this cutoff or a larger one (pairs beyond ``cutoff``
    dropped, order kept), else computed."""
    stored = structure.edges
    if stored is None or stored.cutoff < cutoff:
        return neighbour_list(structure.positions, structure.cell, structure.pbc, cutoff)
    i = stored.i.astype(np.int64)
    j = stored.j.astype(np.int64)
    shifts = stored.shifts.astype(np.int64)
    if stored.cutoff == cutoff:
        return i, j, shifts
    pos = structure.positions
    vec = pos[j] - pos[i] + shifts @ structure.cell
    keep = np.einsum("ek,ek->e", vec, vec) < cutoff * cutoff
    return i[keep], j[keep], shifts[keep]


def store_edges(structure: Structure, cutoff: float) -> Structure:
    """Attaches the neighbour list within ``cutoff`` (compact integer dtypes)."""
    from data_pipelines.schema import StoredEdges

    i, j, s = neighbour_list(structure.positions, structure.cell, structure.pbc, cutoff)
    structure.edges = StoredEdges(
        float(cutoff), i.astype(np.int32), j.astype(np.int32), s.astype(np.int16)
    )
    return structure
