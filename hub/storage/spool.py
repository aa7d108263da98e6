"""A bounded on-disk queue of line-protocol batches, for while InfluxDB is unreachable.

Records are appended to segment files ``NNNNNNNNNNNN.seg`` as ``length (4 bytes) | crc32 (4
bytes) | payload`` and fsync'd before ``append`` returns, so a batch the writer acknowledged
to the broker is on disk. The replay position (segment, offset) is kept in ``position``,
rewritten atomically (tmp file, fsync, rename) after each replayed record. On open, a torn
record at the end of the last segment (a crash in the middle of an append, never
acknowledged) is cut off. Replay is in append order; a crash between a replayed write and the
position update replays that record once more, which device timestamps make harmless.

``max_bytes`` bounds the unreplayed bytes: ``append`` refuses a batch that would exceed it,
and the writer then stops acknowledging (the broker keeps the messages) until there is room.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from pathlib import Path

from hub.durable import write_atomically

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
SEGMENT_BYTES = 16 * 1024 * 1024


class Spool:
    """See the module docstring. Thread-safe: one appender and one replayer."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self._folder = folder
        self._max = max_bytes
        self._lock = threading.Lock()
        self.not_empty = threading.Condition(self._lock)
        folder.mkdir(parents=True, exist_ok=True)
        self._segments = sorted(int(p.stem) for p in folder.glob("*.seg"))
        self._read_seg, self._read_off = self._load_position()
        self._segments = [s for s in self._segments if s >= self._read_seg]
        for stale in folder.glob("*.seg"):
            if int(stale.stem) < self._read_seg:
                stale.unlink()  # fully replayed before the last stop
        if not self._segments:
            self._segments = [self._read_seg]
            self._path(self._read_seg).touch()
        self._repair_tail()
        self._bytes = sum(self._path(s).stat().st_size for s in self._segments) - self._read_off
        self._records = self._count_records()
        self._refused = False
        self._out = self._path(self._segments[-1]).open("ab")

    # -- files -------------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self._folder / f"{segment:012d}.seg"

    def _load_position(self) -> tuple[int, int]:
        position = self._folder / "position"
        if position.exists():
            segment, offset = position.read_text(encoding="ascii").split()
            return int(segment), int(offset)
        first = min(self._segments, default=0)
        return first, 0

    def _save_position(self) -> None:
        position = f"{self._read_seg} {self._read_off}\n".encode("ascii")
        write_atomically(self._folder / "position", position)

    def _repair_tail(self) -> None:
        """Cut a torn record off the end of the last segment."""
        last = self._path(self._segments[-1])
        data = last.read_bytes()
        offset = self._read_off if self._segments[-1] == self._read_seg else 0
        good = offset
        while good + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, good)
            end = good + _HEADER.size + length
            if end > len(data) or zlib.crc32(data[good + _HEADER.size : end]) != crc:
                break
            good = end
        if good < len(data):
            log.warning("spool: cutting %d torn bytes off %s", len(data) - good, last.name)
            with last.open("r+b") as out:
                out.truncate(good)
                out.flush()
                os.fsync(out.fileno())

    def _count_records(self) -> int:
        count = 0
        for segment in self._segments:
            data = self._path(segment).read_bytes()
            offset = self._read_off if segment == self._read_seg else 0
            while offset + _HEADER.size <= len(data):
                length, _ = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size + length
                count += 1
        return count

    # -- appending (writer thread) -----------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes waiting to be replayed."""
        return self._bytes

    @property
    def records(self) -> int:
        """Batches waiting to be replayed."""
        return self._records

    @property
    def full(self) -> bool:
        """True since a batch did not fit, until replay frees room (no acks meanwhile)."""
        return self._refused or self._bytes >= self._max

    def append(self, lines: str) -> bool:
        """Append one batch durably; False (nothing written) if it would exceed the bound."""
        payload = lines.encode("utf-8")
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._bytes + len(record) > self._max:
                self._refused = True
                return False
            if self._out.tell() >= SEGMENT_BYTES:
                self._out.close()
                self._segments.append(self._segments[-1] + 1)
                self._out = self._path(self._segments[-1]).open("ab")
            self._out.write(record)
            self._out.flush()
            os.fsync(self._out.fileno())
            self._bytes += len(record)
            self._records += 1
            self.not_empty.notify_all()
        return True

    # -- replaying (replayer thread) ---------------------------------------------------------

    def peek(self) -> str | None:
        """The oldest batch not yet replayed, or ``None``."""
        with self._lock:
            while True:
                path = self._path(self._read_seg)
                with path.open("rb") as source:
                    source.seek(self._read_off)
                    header = source.read(_HEADER.size)
                    if len(header) == _HEADER.size:
                        length, _ = _HEADER.unpack(header)
                        return source.read(length).decode("utf-8")
                if self._read_seg == self._segments[-1]:
                    return None
                # this segment is done: move to the next and delete it
                self._segments.remove(self._read_seg)
                path.unlink()
                self._read_seg, self._read_off = self._segments[0], 0
                self._save_position()

    def pop(self) -> None:
        """Mark the batch returned by ``peek`` as replayed (durably)."""
        with self._lock:
            with self._path(self._read_seg).open("rb") as source:
                source.seek(self._read_off)
                length, _ = _HEADER.unpack(source.read(_HEADER.size))
            size = _HEADER.size + length
            self._read_off += size
            self._bytes -= size
            self._records -= 1
            self._refused = False
            self._save_position()

    def close(self) -> None:
        """Close the segment being appended to."""
        with self._lock:
            self._out.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
