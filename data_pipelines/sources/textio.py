"""Open (compressed) text files, and walk big JSON files one record at a time.

MPtrj is a single 12 GB JSON object and Alexandria ships multi-GB lists, so the
JSON readers must not `json.load` whole files: `JsonStream` decodes the
top-level container one member at a time with the standard library's decoder,
keeping only the current member (plus a read-ahead buffer) in memory.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from data_pipelines.schema import DataError

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
COMPRESSED_SUFFIXES = tuple(_OPENERS)
_WHITESPACE = " \t\n\r"
_DELIMITERS = ",]}" + _WHITESPACE
_PIECE_CHARS = 1 << 16


def open_text(path: str | Path) -> TextIO:
    """Opens a text file for reading, decompressing .gz, .bz2 and .xz on the fly."""
    path = Path(path)
    opener = _OPENERS.get(path.suffix.lower())
    if opener is None:
        return open(path, encoding="utf-8")
    return opener(path, "rt", encoding="utf-8")


def strip_compression(name: str) -> str:
    """'training.json.gz' -> 'training.json'."""
    for suffix in COMPRESSED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_text(fh: TextIO, num_chars: int) -> tuple[str, bool]:
    """Reads up to `num_chars` characters; returns (text, at end of file).

    A compressed file cut short raises EOFError inside `read`, discarding what
    that call had decoded; reading in small pieces keeps all but the last piece.
    """
    parts: list[str] = []
    got = 0
    try:
        while got < num_chars:
            text = fh.read(min(_PIECE_CHARS, num_chars - got))
            if not text:
                return "".join(parts), True
            parts.append(text)
            got += len(text)
    except EOFError:
        return "".join(parts), True
    return "".join(parts), False


def peek_text(path: str | Path, num_chars: int = 1 << 20) -> str:
    """The first `num_chars` characters of a (compressed) text file."""
    with open_text(path) as fh:
        return read_text(fh, num_chars)[0]


class JsonSyntaxError(ValueError):
    """The file is not valid JSON at `pos` (characters from the start)."""

    def __init__(self, message: str, pos: int, truncated: bool = False):
        hint = "; the file looks truncated" if truncated else ""
        super().__init__(f"invalid JSON: {message} (character {pos}){hint}")
        self.pos = pos
        self.truncated = truncated


class JsonStream:
    """Incremental decoder of one top-level JSON container.

    Usage: `kind = stream.open()` gives '{' or '['; then `members()` yields
    (key, value) pairs of an object (key None for array elements), or, to
    descend one level, `object_keys()` yields the object's keys and the caller either
    calls `value()` or, for an array value, `open()` + `members()` again.

    Args:
        fh: text file object positioned at the start of the JSON document.
        chunk_chars: characters read per refill; grows when a member is larger.
    """

    def __init__(self, fh: TextIO, chunk_chars: int = 1 << 22):
        self._fh = fh
        self._chunk = chunk_chars
        self._buf = ""
        self._pos = 0  # index into _buf of the next unread character
        self._offset = 0  # characters dropped from the front of _buf so far
        self._eof = False
        self._decoder = json.JSONDecoder()
        self._first: list[bool] = []  # per open container: no member read yet

    def open(self) -> str:
        """Consumes the opening '{' or '[' of the next value and returns it."""
        ch = self._next_char()
        if ch not in ("{", "["):
            raise JsonSyntaxError(f"expected '{{' or '[', found {ch!r}", self._where())
        self._pos += 1
        self._first.append(True)
        return ch

    def members(self, kind: str) -> Iterator[tuple[str | None, Any]]:
        """Yields the (key, value) pairs of the container opened with `kind`."""
        if kind == "{":
            for key in self.object_keys():
                yield key, self.value()
        else:
            while self._more("]"):
                yield None, self.value()

    def object_keys(self) -> Iterator[str]:
        """Yields each key of the object just opened; the caller must consume its value."""
        while self._more("}"):
            key = self.value()
            if not isinstance(key, str):
                raise JsonSyntaxError("expected an object key (a string)", self._where())
            if self._next_char() != ":":
                raise JsonSyntaxError("expected ':' after an object key", self._where())
            self._pos += 1
            yield key

    def value(self) -> Any:
        """Decodes and returns the next complete JSON value."""
        self._next_char()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as err:
                where = self._offset + err.pos  # before _fill moves the buffer
                # An error close to the end of the buffer may only mean "read more".
                if not self._eof and len(self._buf) - err.pos < (1 << 20) and self._fill():
                    continue
                raise JsonSyntaxError(err.msg, where, truncated=self._eof) from None
            # A number cut by the end of the buffer ("3." of "3.25") decodes without
            # error; in valid JSON a number is always followed by a delimiter.
            if (
                isinstance(value, int | float)
                and not self._eof
                and (end == len(self._buf) or self._buf[end] not in _DELIMITERS)
                and self._fill()
            ):
                continue
            self._pos = end
            return value

    def peek(self) -> str:
        """The next non-blank character, not consumed."""
        return self._next_char()

    def _more(self, closer: str) -> bool:
        """True if another member follows; consumes the ',' or the closer."""
        ch = self._next_char()
        if ch == closer:
            self._pos += 1
            self._first.pop()
            return False
        if not self._first[-1]:
            if ch != ",":
                raise JsonSyntaxError(f"expected ',' or '{closer}', found {ch!r}", self._where())
            self._pos += 1
            self._next_char()
        self._first[-1] = False
        return True

    def _next_char(self) -> str:
        """Skips whitespace and returns the next character without consuming it."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in _WHITESPACE:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                raise JsonSyntaxError("unexpected end of file", self._where(), truncated=True)

    def _fill(self) -> bool:
        """Reads more text; returns False at end of file."""
        if self._eof:
            return False
        if self._pos > len(self._buf) // 2:
            self._offset += self._pos
            self._buf = self._buf[self._pos :]
            self._pos = 0
        # Read at least as much as we hold, so a huge member costs O(size), not O(size^2).
        text, self._eof = read_text(self._fh, max(self._chunk, len(self._buf)))
        self._buf += text
        return bool(text)

    def _where(self) -> int:
        return self._offset + self._pos


def json_members(
    path: str | Path,
    file_label: str,
    on_error: Callable[[DataError], None],
    descend: str | None = None,
) -> Iterator[tuple[int | str, Any]]:
    """Yields (key, value) for each member of a JSON file's top-level container.

    Array elements are keyed by their index. With `descend`, an array found under
    that key of a top-level object is expanded into its elements instead (the
    Alexandria `{"entries": [...]}` layout).

    A file that stops being valid JSON (truncated, corrupted, bad compression)
    cannot be resynchronised: the error goes to `on_error` naming the record
    being read, and the iteration ends there.
    """
    record: int | str = 0
    try:
        with open_text(path) as fh:
            stream = JsonStream(fh)
            kind = stream.open()
            if kind == "[":
                for index, (_, value) in enumerate(stream.members(kind)):
                    record = index + 1
                    yield index, value
                return
            record = "at the first key"
            for key in stream.object_keys():
                record = key
                if key == descend and stream.peek() == "[":
                    stream.open()
                    for index, (_, value) in enumerate(stream.members("[")):
                        record = index + 1
                        yield index, value
                else:
                    yield key, stream.value()
                record = f"after {key!r}"
    except JsonSyntaxError as err:
        on_error(DataError(file_label, record, None, str(err)))
    except (OSError, EOFError, UnicodeDecodeError) as err:
        on_error(DataError(file_label, record, None, f"cannot read: {type(err).__name__}: {err}"))
