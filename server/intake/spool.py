"""Disk spool for incoming updates: a stream is written as it arrives and read back tensor by tensor.

An update only reaches the aggregate after its whole stream arrived and its CRC matched, so a broken or
corrupt stream contributes nothing. Sequential writes land in the page cache, so the spool costs about a
memory copy, and it lets strategies that need every update at once (median, Krum) read them slice by slice.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from fedstream.common.codecs.registry import CodecError, get_codec
from fedstream.common.wire.manifest import TensorLayout
from fedstream.common.wire.tensors import from_bytes, numel_of
from fedstream.common.wire.framing import Crc32
from fedstream.server.intake.inspection import StreamInspection

READ_SLICE_BYTES = 8 << 20
IDLE_SLOT_BYTES = 4 << 30


class SpoolError(Exception):
    """The stream disagrees with its own manifest or trailer; the message names the difference."""


class StreamIntegrityError(SpoolError):
    """Bytes arrived but their count or checksum is wrong (maps to DATA_LOSS)."""


@dataclass
class UpdateInfo:
    """What the server knows about one accepted update besides its tensors."""

    client_id: str
    round: int
    base_version: int
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    upload_id: str = ""
    sq_norm: float = 0.0
    aggregated_clients: int = 1  # a relay's partial sum: how many leaf clients it folded
    relay: bool = False  # sent by a session that joined with the "relay" capability


class SpoolPool:
    """Spool files kept for the next uploads instead of being deleted.

    Overwriting a file whose pages are already cached costs about a fifth of writing a new one and deleting it
    (no page allocation, no block reservation, no page freeing on unlink: 5 against 24 ms per 100 MB measured
    here). Finished files stay, for reuse, up to idle_bytes in all; beyond that, and after close(), they are
    deleted.
    """

    def __init__(self, directory: Path, idle_bytes: int = IDLE_SLOT_BYTES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.idle_bytes = idle_bytes
        self.in_use = 0
        self._idle: dict[Path, int] = {}
        self._closed = False
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> Path:
        """A file to write nbytes into: the smallest idle one that holds them, else the largest, else a new one."""
        with self._lock:
            self.in_use += 1
            if not self._idle:
                return self.directory / f"{uuid.uuid4().hex}.bin"
            fitting = [path for path, size in self._idle.items() if size >= nbytes]
            path = min(fitting, key=self._idle.__getitem__) if fitting else max(self._idle, key=self._idle.__getitem__)
            del self._idle[path]
            return path

    def give(self, path: Path) -> None:
        """Takes a file back once nobody reads it any more; keeps it for reuse or deletes it."""
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        with self._lock:
            self.in_use -= 1
            if size is not None and not self._closed and sum(self._idle.values()) + size <= self.idle_bytes:
                self._idle[path] = size
                return
        path.unlink(missing_ok=True)

    def close(self) -> None:
        """Deletes the idle files; files still in use are deleted when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle), {}
        for path in idle:
            path.unlink(missing_ok=True)


class SpoolWriter:
    """Writes one stream to a file of the pool (SpoolPool(directory, idle_bytes=0): a new file, deleted after)."""

    def __init__(self, pool: SpoolPool, layout: list[TensorLayout], total_bytes: int) -> None:
        self.path = pool.take(total_bytes)
        self._release = _once(lambda: pool.give(self.path))
        self.layout = layout
        self.total_bytes = total_bytes
        self.crc = Crc32()
        self.inspection = StreamInspection(layout)
        self._file = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600), "wb", buffering=0)

    def write(self, data: memoryview | bytes) -> None:
        if self.crc.nbytes + len(data) > self.total_bytes:
            raise SpoolError(
                f"stream carries more than the {self.total_bytes} bytes its manifest announced"
            )
        self.inspection.feed(self.crc.nbytes, data)
        self.crc.update(data)
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            view = view[written:]

    def finish(self, crc32: int, total_bytes: int) -> "SpooledUpdate":
        self._file.close()
        if self.crc.nbytes != self.total_bytes or total_bytes != self.total_bytes:
            self.discard()
            raise StreamIntegrityError(
                f"stream ended after {self.crc.nbytes} bytes; manifest announced {self.total_bytes} "
                f"and trailer {total_bytes}"
            )
        if crc32 != self.crc.value:
            self.discard()
            raise StreamIntegrityError(
                f"checksum mismatch: trailer says crc32={crc32:#010x}, received bytes give {self.crc.value:#010x}"
            )
        return SpooledUpdate(self.path, self.layout, self.inspection, self._release)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._release()


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = threading.Lock()

    def run_once() -> None:
        if done.acquire(blocking=False):
            action()

    return run_once


class SpooledUpdate:
    """A validated update on disk; tensors are decoded on demand, one slice or tensor at a time."""

    def __init__(self, path: Path, layout: list[TensorLayout], inspection: StreamInspection,
                 release: Callable[[], None]) -> None:
        self.path = path
        self._release = release
        self.layout = layout
        self.by_name = {item.name: item for item in layout}
        self.info: UpdateInfo | None = None
        self.inspection = inspection

    def _read(self, offset: int, nbytes: int) -> bytearray:
        buf = bytearray(nbytes)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(offset)
            _read_exactly(f, memoryview(buf), self.path)
        return buf

    def tensor(self, name: str) -> torch.Tensor:
        item = self.by_name[name]
        data = self._read(item.offset, item.nbytes)
        try:
            return get_codec(item.codec).decode(data, item.dtype, item.shape)
        except CodecError as exc:
            raise SpoolError(f"tensor {name}: {exc}") from None

    def pieces(self, slice_bytes: int = READ_SLICE_BYTES,
               only: set[str] | None = None) -> Iterator[tuple[TensorLayout, int, torch.Tensor]]:
        """(tensor, first element, flat values) covering every tensor (or those named in only): raw tensors in
        slices of at most slice_bytes, others decoded whole.

        One file handle and one read buffer serve the whole pass: a raw slice is a view into that buffer, valid
        until the next item is requested (clone it to keep it).
        """
        raw = [item for item in self.layout if item.codec == "raw" and (only is None or item.name in only)]
        largest = max((item.nbytes for item in raw), default=0)
        buffer = torch.empty(max(1, min(largest, slice_bytes)), dtype=torch.uint8)
        with open(self.path, "rb", buffering=0) as f:
            for item in self.layout:
                if only is not None and item.name not in only:
                    continue
                if item.codec != "raw":
                    yield item, 0, self.tensor(item.name).reshape(-1)
                    continue
                itemsize = torch.empty((), dtype=item.dtype).element_size()
                numel = numel_of(item.shape)
                if numel == 0:
                    yield item, 0, torch.empty(0, dtype=item.dtype)
                    continue
                step = max(1, min(len(buffer), slice_bytes) // itemsize)
                if step * itemsize > len(buffer):
                    buffer = torch.empty(step * itemsize, dtype=torch.uint8)
                for start in range(0, numel, step):
                    count = min(step, numel - start)
                    window = buffer[: count * itemsize]
                    f.seek(item.offset + start * itemsize)
                    _read_exactly(f, memoryview(window.numpy()), self.path)
                    yield item, start, window.view(item.dtype)

    def element_range(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Flat values [start, stop) of one tensor (a fresh tensor; raw tensors read only that range)."""
        item = self.by_name[name]
        if item.codec != "raw":
            return self.tensor(name).reshape(-1)[start:stop].clone()
        itemsize = torch.empty((), dtype=item.dtype).element_size()
        data = self._read(item.offset + start * itemsize, (stop - start) * itemsize)
        return from_bytes(data, item.dtype, (stop - start,))

    def delete(self) -> None:
        """Done with it: the file is deleted or goes back to its pool (nothing may read it afterwards)."""
        self._release()


def _read_exactly(f, view: memoryview, path: Path) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise SpoolError(f"spool file {path} is shorter than its manifest")
        got += n


def clear_spool(directory: Path) -> None:
    """Removes leftovers of a previous process (a restarted server does not trust half-written spools)."""
    if directory.exists():
        for leftover in directory.glob("**/*.bin"):
            leftover.unlink(missing_ok=True)
    os.makedirs(directory, exist_ok=True)
