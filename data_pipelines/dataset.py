"""Opening a data root: the one place that reads what convert wrote.

A data root is a local folder, a URL prefix (``https://host/ds``, read with
curl) or a ``pipe:`` command, either as a prefix (``pipe:cat /data/ds``) or
as a template with ``{path}`` (``pipe:aws s3 cp s3://bucket/ds/{path} -``).

    ds = open_dataset(root)          # reads and checks manifest.json
    ds.manifest, ds.stats            # stats.json, read on first use
    ds.iter_split("val")             # structures in manifest order
    ds.read_shard(shard, begin, end) # the shard-read loop every reader uses
    ds.split_index("train")          # ids and atom counts, arrays not decoded

Every shard path in a manifest is checked when the manifest is loaded
(``<split>/shard-NNNNNN.tar`` only), and what goes into a ``pipe:`` command
is shell-quoted, so a manifest can neither point outside the root nor run a
command. Shards are checked against their manifest sha256 as they are read
(unless a caller opts out), before any of their structures are handed on.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from data_pipelines import shards
from data_pipelines.schema import DataError, Structure

_SHA256_HEX = frozenset("0123456789abcdef")


def resolve(root: str, relpath: str) -> str:
    """Location of a file of a data root (see the module docstring for root forms)."""
    if root.startswith("pipe:"):
        # the command runs in a shell: the path must stay one word whatever it holds
        quoted = shlex.quote(relpath)
        if "{path}" in root:
            return root.replace("{path}", quoted)
        return root.rstrip("/") + "/" + quoted
    if "{path}" in root:
        return root.replace("{path}", relpath)
    if "://" in root:
        return root.rstrip("/") + "/" + relpath
    return str(Path(root) / relpath)


def open_stream(location: str):
    """A binary reader for a resolved location (file, URL or pipe)."""
    if "://" in location or location.startswith("pipe:"):
        import webdataset as wds

        return wds.gopen(location, "rb")
    return open(location, "rb")  # noqa: SIM115 - caller closes


def _read_json(location: str, missing: str) -> dict:
    try:
        with open_stream(location) as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(location, None, None, missing) from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(location, None, None, f"not valid JSON ({err})") from None


def _read_shard_bytes(location: str) -> bytes:
    try:
        with open_stream(location) as fh:
            return fh.read()
    except OSError as err:  # a missing file, or a pipe command that failed
        raise DataError(location, None, None, f"cannot read shard ({err})") from None


def _bad(where: str, record: str | None, field: str | None, message: str) -> DataError:
    return DataError(
        where, record, field, message + "; the manifest was edited or not written by "
        "`python -m data_pipelines.convert`: reconvert"
    )


def validate_manifest(manifest: dict, where: str) -> dict:
    """Checks what readers rely on: split names, shard paths and counts, checksums.

    Args:
        manifest: the parsed manifest.json.
        where: its location, for errors.

    Returns:
        The manifest, unchanged.

    Raises:
        DataError: naming the manifest, the entry and what was expected.
    """
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise _bad(where, None, "splits", "expected an object with a 'splits' mapping")
    pack_size = manifest.get("pack_size")
    if not isinstance(pack_size, int) or pack_size < 1:
        raise _bad(where, None, "pack_size", f"expected a positive integer, got {pack_size!r}")
    stats_file = manifest.get("stats_file", shards.STATS_FILE)
    if not isinstance(stats_file, str) or not shards.STATS_NAME.fullmatch(stats_file):
        raise _bad(where, None, "stats_file", f"expected a plain file name like "
                   f"'{shards.STATS_FILE}' beside the manifest, got {stats_file!r}")
    seen: set[str] = set()
    for name, info in manifest["splits"].items():
        record = f"splits.{name}"
        if not shards.SPLIT_NAME.fullmatch(name):
            raise _bad(where, record, None, f"split name {name!r} is not letters, digits, "
                       "'_' or '-'")
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
            raise _bad(where, record, "shards", "expected a list of shard entries")
        for k, shard in enumerate(info["shards"]):
            entry = f"{record}.shards[{k}]"
            if not isinstance(shard, dict):
                raise _bad(where, entry, None, "expected an object")
            file = shard.get("file")
            match = shards.SHARD_FILE.fullmatch(file) if isinstance(file, str) else None
            if match is None or match["split"] != name:
                raise _bad(where, entry, "file", f"{file!r} is not a shard path of split "
                           f"'{name}': expected '{name}/shard-NNNNNN.tar' (relative, "
                           "no '..', no other characters)")
            if file in seen:
                raise _bad(where, entry, "file", f"{file!r} is listed twice")
            seen.add(file)
            count = shard.get("num_structures")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise _bad(where, entry, "num_structures",
                           f"expected a non-negative integer, got {count!r}")
            digest = shard.get("sha256")
            if not isinstance(digest, str) or len(digest) != 64 or set(digest) - _SHA256_HEX:
                raise _bad(where, entry, "sha256", f"expected 64 lowercase hex digits, "
                           f"got {digest!r}")
    return manifest


def load_manifest(root: str) -> dict:
    """The checked manifest of a data root (see `validate_manifest`)."""
    location = resolve(root, shards.MANIFEST_FILE)
    manifest = _read_json(
        location, "no manifest: not a shard directory, or its conversion did not finish"
    )
    return validate_manifest(manifest, location)


@dataclass(frozen=True)
class SplitIndex:
    """What a split holds, in manifest order, read without decoding any arrays.

    Attributes:
        ids: source id of each structure.
        num_atoms: (num_structures,) atom count of each structure.
    """

    ids: list[str]
    num_atoms: np.ndarray


class Dataset:
    """An opened data root: its manifest, statistics and the readers of its shards.

    Open one per process with `open_dataset` and pass it around: the manifest
    is read once and what is derived from whole splits (`split_index`, subset
    thresholds in `data_pipelines.subsets`) is computed once and kept here.

    Attributes:
        root: the root as given.
        manifest: the checked manifest.
        memo: values derived from this root by other modules, computed once per
            process (keyed by the owning module's name and its arguments).
    """

    def __init__(self, root: str, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.memo: dict = {}
        self._index: dict[str, SplitIndex] = {}

    def __repr__(self) -> str:
        return f"Dataset({self.root!r})"

    def location(self, relpath: str) -> str:
        """Where a file of this root is read from (a path, URL or pipe command)."""
        return resolve(self.root, relpath)

    @property
    def manifest_location(self) -> str:
        return self.location(shards.MANIFEST_FILE)

    @cached_property
    def stats(self) -> dict:
        """The training statistics (stats.json), read on first use."""
        name = self.manifest.get("stats_file", shards.STATS_FILE)
        return _read_json(
            self.location(name), "no statistics file beside the manifest: it was removed or "
            "the conversion did not finish; reconvert",
        )

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> dict:
        """The manifest entry of one split; a DataError names the splits there are."""
        if name not in self.manifest["splits"]:
            raise DataError(
                self.manifest_location, None, "splits",
                f"no split '{name}' (have {sorted(self.manifest['splits'])})",
            )
        return self.manifest["splits"][name]

    def require_nonempty(self, split: str) -> dict:
        """The split's entry, or a ValueError naming the root and split if it holds nothing.

        For start-up checks: training on an empty split would otherwise only
        fail later, as a loader that yields no batch.
        """
        info = self.split(split)
        if sum(s["num_structures"] for s in info["shards"]) == 0:
            raise ValueError(
                f"{self.root}: split '{split}' holds no structures (manifest "
                f"{self.manifest_location}); convert more data or choose another split"
            )
        return info

    def _packs(
        self, shard: dict, begin: int, end: int, verify: bool
    ) -> Iterator[tuple[int, int, str, str, bytes]]:
        """(first index, size, location, key, blob) of the shard's packs that overlap
        [begin, end); checks the checksum first (if asked) and the pack counts."""
        location = self.location(shard["file"])
        count = shard["num_structures"]
        pack_size = self.manifest["pack_size"]
        if verify:
            # Whole shard first: a changed byte must fail here, before any of its
            # structures reach training.
            data = _read_shard_bytes(location)
            digest = hashlib.sha256(data).hexdigest()
            if digest != shard["sha256"]:
                raise DataError(
                    location, None, "sha256",
                    f"checksum mismatch: the shard changed after conversion (manifest "
                    f"{shard['sha256'][:12]}..., file {digest[:12]}...). Check the root "
                    f"with `python -m data_pipelines.inspect {self.root} --verify` and "
                    "reconvert the damaged data",
                )
            fh = io.BytesIO(data)
        else:
            try:
                fh = open_stream(location)
            except OSError as err:
                raise DataError(location, None, None, f"cannot read shard ({err})") from None
        seen = 0
        try:
            with fh:  # a pipe reports its command's failure when closed
                for key, blob in shards.iter_shard_packs(fh, location):
                    lo = seen
                    if lo >= end and end < count:
                        break  # past the range and not asked to check the shard's end
                    size = min(pack_size, count - lo)
                    if size <= 0:
                        raise DataError(location, key, None, "shard holds more packs than "
                                        f"its {count} structures (manifest) fill")
                    seen += size
                    if lo + size <= begin:
                        continue  # whole pack before the range: not decoded
                    yield lo, size, location, key, blob
        except OSError as err:
            raise DataError(location, None, None, f"cannot read shard ({err})") from None
        if seen < min(count, end):
            raise DataError(
                location, None, None, f"shard is truncated: {seen} of {count} structures present"
            )

    def read_shard(
        self, shard: dict, begin: int = 0, end: int | None = None, *, verify: bool = True
    ) -> Iterator[Structure]:
        """Structures [begin, end) of one shard, in shard order.

        Args:
            shard: the shard's manifest entry.
            begin: first structure (index within the shard).
            end: one past the last (None: to the end of the shard).
            verify: check the shard's sha256 before yielding anything.

        Raises:
            DataError: naming the shard (and member) that is missing, changed,
                truncated or does not match the manifest.
        """
        end = shard["num_structures"] if end is None else end
        for lo, size, location, key, blob in self._packs(shard, begin, end, verify):
            pack = shards.decode_pack(blob, f"{location}:{key}")
            if len(pack) != size:
                raise DataError(
                    location, key, None,
                    f"pack holds {len(pack)} structures, manifest implies {size}",
                )
            yield from pack[max(begin - lo, 0) : end - lo]

    def iter_split(self, split: str | None = None, *, verify: bool = True) -> Iterator[Structure]:
        """All structures of one split (or of every split) in manifest order."""
        names = self.splits if split is None else [split]
        for name in names:
            for shard in self.split(name)["shards"]:
                yield from self.read_shard(shard, verify=verify)

    def split_index(self, split: str) -> SplitIndex:
        """Ids and atom counts of a split, from the pack headers (cached).

        Reads every shard of the split once per process (checksums checked)
        but decodes no positions, forces or other arrays.
        """
        if split not in self._index:
            ids: list[str] = []
            counts: list[np.ndarray] = []
            for shard in self.split(split)["shards"]:
                for _, size, location, key, blob in self._packs(
                    shard, 0, shard["num_structures"], verify=True
                ):
                    pack_ids, num_atoms = shards.pack_index(blob, f"{location}:{key}")
                    if len(pack_ids) != size:
                        raise DataError(
                            location, key, None,
                            f"pack holds {len(pack_ids)} structures, manifest implies {size}",
                        )
                    ids.extend(pack_ids)
                    counts.append(num_atoms)
            num_atoms = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
            self._index[split] = SplitIndex(ids, num_atoms.astype(np.int64))
        return self._index[split]

    def verify(self) -> list[str]:
        """Checks every shard's sha256 and decodes every pack; returns the problems."""
        problems = []
        for name in self.splits:
            for shard in self.split(name)["shards"]:
                try:
                    for _ in self.read_shard(shard, verify=True):
                        pass
                except DataError as err:
                    problems.append(str(err))
        return problems


def open_dataset(root: str | Dataset) -> Dataset:
    """Opens a data root (reads and checks its manifest); a Dataset is returned as is."""
    if isinstance(root, Dataset):
        return root
    return Dataset(root, load_manifest(root))


def load_stats(root: str | Dataset) -> dict:
    """The statistics (stats.json) of a data root."""
    return open_dataset(root).stats


def iter_split(root: str | Dataset, split: str | None = None) -> Iterator[Structure]:
    """All structures of one split (or of every split) of a root, in manifest order."""
    return open_dataset(root).iter_split(split)
