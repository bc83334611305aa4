"""What DownloadModel sends: the full global model, or only its difference from the version a client holds.

With incremental downloads on, the server tracks the *served* model B: the exact tensors every client that
follows the versions holds. Closing version V, it encodes D = S_V − B_{V−1} (S is the aggregated model) with the
download codec and sets B_V = B_{V−1} + decode(D), the same float additions a client performs (integer and
boolean tensors carry their new value instead of a difference). Clients holding
V−1 get D; anyone else gets B_V in full, losslessly. A lossy codec's error therefore never accumulates across
versions (what one difference drops, the next one carries: error feedback on the downlink), and memory stays
O(model): B, one encoded difference, and no older version. A version whose masks changed (a pruning step) is
served in full only, so that every client derives its masks from exact zeros.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from fedstream.common.codecs.registry import RAW, get_codec
from fedstream.common.codecs.plan import chooser, encode_tensors, lossless_variant, manifest_of, tensor_spec


@dataclass
class Served:
    """One download's content: what the header says and the buffers that follow it."""

    manifest: Any  # the manifest message common.codecs.plan built
    buffers: list
    incremental: bool = False
    base_version: int = 0


@dataclass
class _Prepared:
    version: int
    served_state: Mapping[str, torch.Tensor]
    diff: Served | None


class ModelPublisher:
    def __init__(self, codec: str, incremental: bool = False, topk_fraction: float | None = None,
                 keep_previous: bool = False) -> None:
        self.codec = codec
        self.incremental = incremental
        self.topk_fraction = topk_fraction
        self.diff_codec = "sparse" if codec == "raw" else codec
        self._lock = threading.Lock()
        self._version: int | None = None
        self._served: Mapping[str, torch.Tensor] | None = None
        self._masked: list[str] = []
        self._full: Served | None = None
        self._diff: Served | None = None
        self.counts = {"full": 0, "incremental": 0}
        self.keep_previous = keep_previous
        self._previous: tuple[int, Mapping[str, torch.Tensor], Served | None] | None = None

    def prepare(self, version: int, state: Mapping[str, torch.Tensor], masked: list[str],
                masks_changed: bool) -> _Prepared:
        """Encodes the difference to the previous served version (outside the coordinator's lock)."""
        previous = self._served
        if (not self.incremental or previous is None or masks_changed or self._version != version - 1
                or version - 1 == 0):  # a client cannot announce version 0 (have_version 0 means none)
            return _Prepared(version, state, None)
        choose = chooser(self.diff_codec, masked, self.topk_fraction)
        specs, buffers, served = [], [], OrderedDict()
        for name, new in state.items():  # one tensor at a time: peak memory is B, the new B and one difference
            if new.dtype.is_floating_point:
                diff = new - previous[name]
                codec = choose(name, diff)
                data = codec.encode(diff)
                sent = diff if codec.lossless else codec.decode(bytearray(data), diff.dtype, tuple(diff.shape))
                served[name] = torch.add(previous[name], sent)
            else:
                codec, diff = RAW, new
                data = codec.encode(new)
                served[name] = new
            specs.append(tensor_spec(name, diff, codec, data))
            buffers.append(data)
        return _Prepared(version, served, Served(manifest_of(specs), buffers, incremental=True,
                                                 base_version=version - 1))

    def commit(self, prepared: _Prepared, masked: list[str]) -> None:
        """Makes the prepared version the one served (call it when the coordinator publishes the version)."""
        with self._lock:
            if self.keep_previous and self._version is not None and self._served is not None:
                self._previous = (self._version, self._served, self._full)
            self._version = prepared.version
            self._served = prepared.served_state
            self._masked = list(masked)
            self._diff = prepared.diff
            self._full = None

    def publish(self, version: int, state: Mapping[str, torch.Tensor], masked: list[str] | None = None,
                masks_changed: bool = False) -> None:
        """prepare + commit, for callers that hold no lock of their own (start-up, tests)."""
        self.commit(self.prepare(version, state, masked or [], masks_changed), masked or [])

    @property
    def masked(self) -> list[str]:
        return self._masked

    @property
    def served_state(self) -> Mapping[str, torch.Tensor] | None:
        return self._served

    def serve(self, version: int, have_version: int) -> Served:
        """The difference when the client holds the previous version, the full model otherwise."""
        with self._lock:
            if self._previous is not None and version == self._previous[0] and version != self._version:
                return self._serve_previous()
            if version != self._version:
                raise ValueError(f"version {version} is not published; the publisher holds {self._version}")
            diff = self._diff
            if diff is not None and have_version and have_version == diff.base_version:  # 0 means "holds none"
                self.counts["incremental"] += 1
                return diff
            if self._full is None:
                codec = lossless_variant(self.codec) if self.incremental else self.codec
                choose = chooser(codec, self._masked, self.topk_fraction)
                if self._masked:
                    choose = _sparse_for_masked(choose, set(self._masked))
                self._full = Served(*encode_tensors(self._served, choose))
            self.counts["full"] += 1
            return self._full

    def _serve_previous(self) -> Served:
        """The version before the current one, in full (asynchronous mode: a task handed out just before a
        new version was published still downloads its base)."""
        version, state, full = self._previous  # type: ignore[misc]
        if full is None:
            full = Served(*encode_tensors(state, chooser(self.codec, [], self.topk_fraction)))
            self._previous = (version, state, full)
        self.counts["full"] += 1
        return full

    def cheap_to_serve(self) -> bool:
        """Whether serving a download costs no encoding (raw views of the tensors)."""
        return self.codec == "raw" and not self.incremental and not self._masked

    def versions(self) -> list[int]:
        """The versions a download may ask for."""
        kept = [self._previous[0]] if self._previous is not None else []
        return kept + ([self._version] if self._version is not None else [])

    def take_counts(self) -> dict[str, int]:
        """Downloads served since the last call, by kind."""
        with self._lock:
            counts, self.counts = self.counts, {"full": 0, "incremental": 0}
        return counts

    def round_metrics(self) -> dict[str, int]:
        """For the round's record: how many of its downloads were full and how many differences."""
        if not self.incremental:
            return {}
        counts = self.take_counts()
        return {"downloads_full": counts["full"], "downloads_incremental": counts["incremental"]}


def _sparse_for_masked(choose, masked: set[str]):
    """Full downloads send pruned tensors as exact sparse values: clients read their masks from the zeros."""
    exact = get_codec("sparse")

    def pick(name: str, tensor: torch.Tensor):
        return exact if name in masked and tensor.dtype.is_floating_point else choose(name, tensor)

    return pick
