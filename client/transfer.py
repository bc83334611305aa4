"""Moving tensors over the stubs: download a global version into one buffer, upload a delta as a stream."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import grpc
import torch

from fedstream.client.device_copy import host_buffer
from fedstream.client.server_checks import ClientLimits, ModelExpectation
from fedstream.common.wire.manifest import ManifestError, decode_state, encode_state
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.framing import Crc32, DataChunk, iter_chunks
from fedstream.common.wire.protocol import SESSION_KEY


class TransferError(Exception):
    """A download that does not add up (length or checksum); the client retries it."""


@dataclass
class Downloaded:
    version: int
    state: "OrderedDict[str, torch.Tensor]"
    nbytes: int
    masked: list[str]
    incremental: bool = False
    base_version: int = 0
    buffer: torch.Tensor | None = None


def download(stub, session_id: str, version: int, have_version: int = 0, timeout: float | None = None,
             pin_memory: bool = False, reuse: torch.Tensor | None = None,
             expect: ModelExpectation | None = None, limits: ClientLimits | None = None) -> Downloaded:
    """Receives the manifest, writes chunks straight into one preallocated buffer, checks length and CRC.

    pin_memory: page-lock that buffer (a GPU client copies it to the device asynchronously).
    reuse: a previous download's buffer that nothing references any more; used when it is large enough, which
    spares faulting in and zeroing a fresh model-sized allocation every round.
    expect: the header must describe this model (checked before the buffer is allocated; BadAnswer otherwise).
    limits: the download must finish within limits.download_seconds(its size); a stalled one is cancelled.
    """
    if limits is not None and expect is not None:
        timeout = limits.download_seconds(expect.max_bytes)
    stream = stub.DownloadModel(pb.DownloadRequest(session_id=session_id, version=version, have_version=have_version),
                                timeout=timeout)
    started = time.monotonic()
    watchdog: threading.Timer | None = None
    header: pb.ModelHeader | None = None
    buffer: torch.Tensor | None = None
    view: memoryview | None = None
    crc = Crc32()
    trailer: pb.Trailer | None = None
    try:
        for message in stream:
            if isinstance(message, DataChunk):
                data = message.data
            else:
                part = message.WhichOneof("part")
                if part == "header":
                    if header is not None:
                        raise TransferError("the server sent a second manifest in one download")
                    header = message.header
                    if expect is not None:
                        expect.check_header(header, version, have_version)
                    if limits is not None:
                        allowed = limits.download_seconds(header.manifest.total_bytes)
                        watchdog = threading.Timer(max(0.0, allowed - (time.monotonic() - started)), stream.cancel)
                        watchdog.daemon = True
                        watchdog.start()
                    buffer = _buffer(header.manifest.total_bytes, pin_memory, reuse)
                    view = memoryview(buffer.numpy())
                    continue
                if part == "trailer":
                    trailer = message.trailer
                    continue
                data = memoryview(message.data)
            if view is None:
                raise TransferError("the server sent model data before the manifest")
            end = crc.nbytes + len(data)
            if end > len(view):
                raise TransferError(f"the server sent more than the {len(view)} bytes its manifest announced")
            view[crc.nbytes : end] = data
            crc.update(data)
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED) or limits is None:
            raise
        size = f"{header.manifest.total_bytes} bytes" if header is not None else "its manifest"
        raise TransferError(f"download of version {version} stalled: {crc.nbytes} bytes in "
                            f"{time.monotonic() - started:.1f} s, {size} due within the deadline "
                            f"(--download-grace {limits.download_grace:g} s + size at --min-download-rate "
                            f"{limits.min_download_rate:g} B/s)") from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if header is None or trailer is None:
            stream.cancel()
    if header is None or trailer is None or buffer is None:
        raise TransferError("the download ended before its manifest or trailer arrived")
    if crc.nbytes != header.manifest.total_bytes or trailer.crc32 != crc.value:
        raise TransferError(f"download of version {version} is corrupt: got {crc.nbytes} bytes "
                            f"(crc {crc.value:#010x}), trailer says {trailer.total_bytes} (crc {trailer.crc32:#010x})")
    try:
        state = decode_state(header.manifest, view)
    except ManifestError as exc:
        raise TransferError(f"download of version {version} does not decode: {exc}") from None
    return Downloaded(header.version, state, crc.nbytes, list(header.masked), header.incremental,
                      header.base_version, buffer)


def _buffer(nbytes: int, pin_memory: bool, reuse: torch.Tensor | None) -> torch.Tensor:
    if reuse is not None and reuse.numel() >= nbytes and reuse.is_pinned() == pin_memory:
        return reuse[:nbytes]
    return host_buffer(nbytes, pin_memory)


def upload_messages(header: pb.UpdateHeader, buffers: list, chunk_bytes: int, chunk_delay: float = 0.0,
                    admitted: Callable[[], object] | None = None) -> Iterator[pb.UpdateChunk | DataChunk]:
    """Header, data chunks, trailer; chunk_delay (seconds before each chunk) lets fault tests catch it mid-stream.

    admitted: blocks until the server admits the upload; nothing but the header is sent before it returns.
    """
    yield pb.UpdateChunk(header=header)
    if admitted is not None:
        admitted()
    crc = Crc32()
    for piece in iter_chunks(buffers, chunk_bytes):
        if chunk_delay:
            time.sleep(chunk_delay)
        crc.update(piece)
        yield DataChunk(memoryview(piece))
    yield pb.UpdateChunk(trailer=pb.Trailer(crc32=crc.value, total_bytes=crc.nbytes))


def upload(stub, session_id: str, round_number: int, base_version: int, delta: Mapping[str, torch.Tensor],
           num_examples: int, metrics: Mapping[str, float], codec: str, chunk_bytes: int,
           upload_id: str | None = None, timeout: float | None = None,
           chunk_delay: float = 0.0, encoded: tuple[pb.Manifest, list] | None = None,
           admission: bool = False, aggregated_clients: int = 0) -> tuple[pb.UploadReply, int]:
    """Streams delta (or its already encoded manifest and buffers); returns the reply and the payload bytes sent.

    aggregated_clients: a relay's partial sum names how many leaf clients it folded (0 for an ordinary client).

    admission: the server admits a bounded number of uploads at a time (JoinReply.upload_admission); wait for
    its signal before sending data, so a waiting upload holds no model bytes in the server's buffers.
    """
    manifest, buffers = encoded if encoded is not None else encode_state(delta, codec)
    header = pb.UpdateHeader(session_id=session_id, round=round_number, base_version=base_version,
                             num_examples=num_examples, metrics=dict(metrics), manifest=manifest,
                             upload_id=upload_id or uuid.uuid4().hex, aggregated_clients=aggregated_clients)
    metadata = ((SESSION_KEY, session_id),)
    if not admission:
        return stub.UploadUpdate(upload_messages(header, buffers, chunk_bytes, chunk_delay), timeout=timeout,
                                 metadata=metadata), manifest.total_bytes
    started = threading.Event()
    calls: list = []

    def admitted() -> None:  # runs on gRPC's request thread; returns early if the call ends first
        started.wait()
        calls[0].initial_metadata()

    call = stub.UploadUpdate.future(upload_messages(header, buffers, chunk_bytes, chunk_delay, admitted),
                                    timeout=timeout, metadata=metadata)
    calls.append(call)
    started.set()
    return call.result(), manifest.total_bytes
