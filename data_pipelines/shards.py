"""The on-disk layout: WebDataset tar shards of packed structures.

Layout version 1 ("pack-v1"). A data root holds ``manifest.json``,
``stats.json`` and one folder per split with ``shard-NNNNNN.tar`` files, named
in the manifest as ``<split>/shard-NNNNNN.tar`` (nothing else is accepted
there: see ``SHARD_FILE``). Each tar member is one WebDataset sample named ``<key>.pack`` holding
up to ``pack_size`` structures in one binary blob, so decoding is a handful of
``np.frombuffer`` views instead of one parse per structure:

    bytes 0-7    magic b"MLIPPACK"
    bytes 8-11   layout version, uint32 little-endian
    bytes 12-15  header length H, uint32 little-endian
    H bytes      UTF-8 JSON header: {"ids": [...], "info": [...],
                 "arrays": {name: [dtype, shape, offset]}} (offsets from the
                 start of the data block), padded with spaces to 8 bytes
    data block   the arrays below, each 8-byte aligned, little-endian

Arrays (k structures, n atoms in all): num_atoms int64 (k,), numbers uint8
(n,), positions float64 (n, 3), cell float64 (k, 3, 3), pbc bool (k, 3),
energy float64 (k,), forces float64 (n, 3), stress float64 (k, 3, 3) and
has_energy / has_forces / has_stress bool (k,). Absent labels are stored as
zeros with their has_ flag False. Floats are float64: the round trip is exact.

Optional: packs written with stored neighbour lists (``convert --store-edges R``)
add edge_count int64 (k,), edge_i / edge_j int32 (E,) (indices within each
structure) and edge_shift int16 (E, 3), and the header's ``edge_cutoff`` R.
Readers that do not know them ignore them, so this needs no new layout version.

The header's ``info`` is each structure's `Structure.info`: small JSON metadata
such as ``config_type`` (AIMD, Vacancy, Surface...; the batch's `config_type`
list comes from it). It is free-form, so adding a key needs no new layout
version: shards written before a key existed simply lack it (no config type).
"""

from __future__ import annotations

import io
import json
import re
import struct
import tarfile
from collections.abc import Iterator

import numpy as np

from data_pipelines.schema import DataError, StoredEdges, Structure

MAGIC = b"MLIPPACK"
LAYOUT_VERSION = 1
LAYOUT_NAME = "pack-v1"
_PREFIX = struct.Struct("<8sII")

MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
# Names convert writes and readers accept. Strict on purpose: manifest paths end
# up in file paths, URLs and `pipe:` shell commands, so no '..', '/', spaces or
# shell characters may come in through a split name or a shard entry.
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SHARD_FILE = re.compile(r"(?P<split>[A-Za-z0-9][A-Za-z0-9_-]*)/shard-[0-9]{6,}\.tar")
STATS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.json")


def shard_file(split: str, index: int) -> str:
    """The manifest path of a split's index-th shard, e.g. 'train/shard-000003.tar'."""
    return f"{split}/shard-{index:06d}.tar"

_ARRAY_ORDER = (
    "num_atoms", "numbers", "positions", "cell", "pbc", "energy", "forces", "stress",
    "has_energy", "has_forces", "has_stress",
)  # fmt: skip


_EDGE_ARRAYS = ("edge_count", "edge_i", "edge_j", "edge_shift")


def _edge_arrays(structures: list[Structure], arrays: dict) -> float | None:
    """Adds the stored neighbour lists to ``arrays``; their cutoff, or None when
    no structure has one. A pack stores all or none, at one cutoff."""
    stored = [s.edges for s in structures]
    if all(e is None for e in stored):
        return None
    cutoffs = {e.cutoff for e in stored if e is not None}
    if any(e is None for e in stored) or len(cutoffs) != 1:
        first = next(s.source_id for s in structures if s.edges is None or len(cutoffs) > 1)
        raise ValueError(
            f"structure {first}: a pack stores neighbour lists for all its structures at "
            f"one cutoff (found cutoffs {sorted(cutoffs)}, some structures without)"
        )
    arrays["edge_count"] = np.array([len(e.i) for e in stored], "<i8")
    arrays["edge_i"] = np.concatenate([e.i for e in stored]).astype("<i4")
    arrays["edge_j"] = np.concatenate([e.j for e in stored]).astype("<i4")
    arrays["edge_shift"] = np.concatenate([e.shifts for e in stored]).reshape(-1, 3).astype("<i2")
    return cutoffs.pop()


def encode_pack(structures: list[Structure]) -> bytes:
    """Serialises structures into one pack blob (see module docstring)."""
    k = len(structures)
    arrays = {
        "num_atoms": np.array([s.num_atoms for s in structures], dtype="<i8"),
        "numbers": np.concatenate([s.numbers for s in structures]).astype("u1"),
        "positions": np.concatenate([s.positions for s in structures]).astype("<f8"),
        "cell": np.stack([s.cell for s in structures]).astype("<f8"),
        "pbc": np.stack([s.pbc for s in structures]).astype("?"),
        "energy": np.array([s.energy if s.energy is not None else 0.0 for s in structures], "<f8"),
        "forces": np.concatenate(
            [s.forces if s.forces is not None else np.zeros((s.num_atoms, 3)) for s in structures]
        ).astype("<f8"),
        "stress": np.stack(
            [s.stress if s.stress is not None else np.zeros((3, 3)) for s in structures]
        ).astype("<f8"),
        "has_energy": np.array([s.energy is not None for s in structures], "?"),
        "has_forces": np.array([s.forces is not None for s in structures], "?"),
        "has_stress": np.array([s.stress is not None for s in structures], "?"),
    }
    names = list(_ARRAY_ORDER)
    edge_cutoff = _edge_arrays(structures, arrays)
    if edge_cutoff is not None:
        names += list(_EDGE_ARRAYS)
    layout = {}
    chunks = []
    offset = 0
    for name in names:
        raw = np.ascontiguousarray(arrays[name]).tobytes()
        layout[name] = [arrays[name].dtype.str, list(arrays[name].shape), offset]
        pad = (-len(raw)) % 8
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    header = json.dumps(
        {
            "num_structures": k,
            "ids": [s.source_id for s in structures],
            "info": [s.info for s in structures],
            "arrays": layout,
            **({"edge_cutoff": edge_cutoff} if edge_cutoff is not None else {}),
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    header += b" " * ((-len(header)) % 8)
    return _PREFIX.pack(MAGIC, LAYOUT_VERSION, len(header)) + header + b"".join(chunks)


def _parse_header(blob: bytes, where: str) -> tuple[dict, int]:
    """The JSON header of a pack and where its data block starts."""
    if len(blob) < _PREFIX.size:
        raise DataError(where, None, None, "pack is truncated (shorter than its prefix)")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise DataError(where, None, None, "not a structure pack (bad magic bytes)")
    if version != LAYOUT_VERSION:
        raise DataError(
            where, None, None, f"pack layout version {version}, this code reads {LAYOUT_VERSION}"
        )
    start = _PREFIX.size + header_len
    try:
        header = json.loads(blob[_PREFIX.size : start])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(where, None, "header", f"corrupt pack header ({err})") from None
    return header, start


def _array(blob: bytes, start: int, name: str, spec: list, where: str) -> np.ndarray:
    dtype, shape, offset = spec
    count = int(np.prod(shape))
    nbytes = count * np.dtype(dtype).itemsize
    if start + offset + nbytes > len(blob):
        raise DataError(where, None, name, "pack is truncated: array runs past its end")
    return np.frombuffer(blob, dtype=dtype, count=count, offset=start + offset).reshape(shape)


def pack_index(blob: bytes, where: str = "?") -> tuple[list[str], np.ndarray]:
    """Source ids and (k,) atom counts of a pack, without decoding its arrays.

    What subset thresholds need: reads the header and the num_atoms array only.
    """
    header, start = _parse_header(blob, where)
    num_atoms = _array(blob, start, "num_atoms", header["arrays"]["num_atoms"], where)
    if len(num_atoms) != len(header["ids"]):
        raise DataError(
            where, None, "num_atoms", f"{len(num_atoms)} counts for {len(header['ids'])} ids"
        )
    return list(header["ids"]), num_atoms


def _check_edges(arrays: dict, ptr: np.ndarray, ids: list[str], where: str) -> np.ndarray:
    """Edge offsets per structure; a stored neighbour list that points outside
    its structure is a DataError naming the structure."""
    counts = arrays["edge_count"]
    eptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=eptr[1:])
    if eptr[-1] != len(arrays["edge_i"]) or len(counts) != len(ids):
        raise DataError(where, None, "edge_count", "edge counts do not match the edge arrays")
    natoms = np.repeat(np.diff(ptr), counts)
    bad = (arrays["edge_i"] < 0) | (arrays["edge_i"] >= natoms)
    bad |= (arrays["edge_j"] < 0) | (arrays["edge_j"] >= natoms)
    if bad.any():
        idx = int(np.searchsorted(eptr, int(np.argmax(bad)), side="right") - 1)
        raise DataError(where, ids[idx], "edge_i", "stored neighbour index outside the structure")
    return eptr


def decode_pack(blob: bytes, where: str = "?") -> list[Structure]:
    """Inverse of encode_pack; `where` names the shard and member in errors."""
    header, start = _parse_header(blob, where)
    arrays = {
        name: _array(blob, start, name, spec, where) for name, spec in header["arrays"].items()
    }
    ptr = np.zeros(len(arrays["num_atoms"]) + 1, dtype=np.int64)
    np.cumsum(arrays["num_atoms"], out=ptr[1:])
    edge_cutoff = header.get("edge_cutoff")
    if edge_cutoff is not None:
        eptr = _check_edges(arrays, ptr, header["ids"], where)
    out = []
    for idx, sid in enumerate(header["ids"]):
        a, b = ptr[idx], ptr[idx + 1]
        edges = None
        if edge_cutoff is not None:
            ea, eb = eptr[idx], eptr[idx + 1]
            edges = StoredEdges(float(edge_cutoff), arrays["edge_i"][ea:eb],
                                arrays["edge_j"][ea:eb], arrays["edge_shift"][ea:eb])
        out.append(
            Structure(
                source_id=sid,
                numbers=arrays["numbers"][a:b].astype(np.int64),
                positions=arrays["positions"][a:b],
                cell=arrays["cell"][idx],
                pbc=arrays["pbc"][idx],
                energy=float(arrays["energy"][idx]) if arrays["has_energy"][idx] else None,
                forces=arrays["forces"][a:b] if arrays["has_forces"][idx] else None,
                stress=arrays["stress"][idx] if arrays["has_stress"][idx] else None,
                info=header["info"][idx],
                edges=edges,
            )
        )
    return out


class ShardWriter:
    """Writes one tar shard deterministically (fixed member metadata)."""

    def __init__(self, fileobj: io.BufferedIOBase):
        self._tar = tarfile.open(  # noqa: SIM115 - closed in close()
            fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT
        )

    def add(self, key: str, blob: bytes) -> None:
        info = tarfile.TarInfo(name=f"{key}.pack")
        info.size = len(blob)
        info.mtime = 0
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(blob))

    def close(self) -> None:
        self._tar.close()


def iter_shard_packs(stream, name: str) -> Iterator[tuple[str, bytes]]:
    """Yields (key, blob) for each pack of a tar stream; errors name the shard."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                if ext != "pack":
                    raise DataError(name, member.name, None, "unexpected member (not a .pack)")
                fh = tar.extractfile(member)
                blob = fh.read() if fh is not None else b""
                if len(blob) != member.size:
                    raise DataError(name, member.name, None, "shard is truncated inside a member")
                yield key, blob
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(name, None, None, f"corrupted or truncated shard ({err})") from None
