"""The server's side of one secure-aggregation round: routes keys and boxes, folds masked windows into ONE
modular accumulator as they arrive, and removes the masks window by window from reconstructed seeds.

Call order (each `close_*` ends a phase and returns what to send to whom):
receive_keys* → close_advertise → receive_shares* → close_share_keys → (receive_masked_window* and
finish_masked_input per client)* → close_masked_input → receive_unmask* → finish. `drop(index)` may come at any
time. A refused message raises SecAggError and changes nothing else; a round that cannot complete raises
RoundFailed naming the phase and the clients. Memory: the accumulator (vector_length words) plus one window per
mask being removed; each in-flight upload is spooled to a temporary file so a broken or refused one can be
subtracted again.
"""

from __future__ import annotations

import tempfile
from enum import Enum
from typing import BinaryIO

import numpy as np

from fedstream.common.secagg import shamir
from fedstream.common.secagg.errors import RoundFailed, SecAggError
from fedstream.common.secagg.graph import harary_graph
from fedstream.common.secagg.keys import (
    NONCE_BYTES,
    TAG_BYTES,
    agree,
    check_public_key,
    pairwise_mask_seed,
    private_key_from_bytes,
    public_bytes,
)
from fedstream.common.secagg.masks import MaskExpander, ring_dtype
from fedstream.common.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    ForwardedShares,
    MaskedWindow,
    NeighbourKeys,
    RoundSetup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedstream.common.secagg.params import RoundParams

BOX_BYTES = NONCE_BYTES + 2 * shamir.SHARE_BYTES + TAG_BYTES


class ServerPhase(Enum):
    ADVERTISE = "advertise keys"
    SHARE_KEYS = "share keys"
    MASKED_INPUT = "masked input"
    UNMASK = "unmasking"
    DONE = "done"


class _Upload:
    """One client's masked upload in flight: the next offset expected and a spool of what was folded."""

    def __init__(self, spool_dir: str | None) -> None:
        self.next_offset = 0
        self.spool: BinaryIO = tempfile.TemporaryFile(dir=spool_dir)


class SecAggServer:
    """One round's server state over clients 1..N; `min_clients` masked inputs are needed to finish."""

    def __init__(self, params: RoundParams, min_clients: int, spool_dir: str | None = None) -> None:
        params.check()
        if not 1 <= min_clients <= params.clients:
            raise SecAggError(f"min clients {min_clients}; expected 1..{params.clients}")
        self.params = params
        self.min_clients = min_clients
        self.graph = harary_graph(params.graph_seed, params.clients, params.neighbours)
        self.phase = ServerPhase.ADVERTISE
        self.dropped: dict[int, str] = {}  # index -> the phase it was lost in
        self._keys: dict[int, AdvertiseKeys] = {}
        self._boxes: dict[int, list[EncryptedShare]] = {}
        self._advertised: set[int] = set()
        self._sharers: set[int] = set()
        self._spool_dir = spool_dir
        self._uploads: dict[int, _Upload] = {}
        self._uploaded: set[int] = set()
        self._accumulator = np.zeros(params.vector_length, dtype=ring_dtype(params.ring_bits))
        self._requests: dict[int, UnmaskRequest] = {}
        self._seed_shares: dict[int, dict[int, int]] = {}
        self._key_shares: dict[int, dict[int, int]] = {}
        self._responded: set[int] = set()

    def setup_for(self, index: int) -> RoundSetup:
        self.graph.of(index)
        return RoundSetup(index, self.params)

    def _expect(self, phase: ServerPhase, round_id: int, sender: int, what: str) -> None:
        if round_id != self.params.round_id:
            raise SecAggError(f"{what} from client {sender} is for round {round_id}; this is round {self.params.round_id}")
        if self.phase is not phase:
            raise SecAggError(f"{what} from client {sender} arrived in phase {self.phase.value}; it belongs to phase {phase.value}")
        if not 1 <= sender <= self.params.clients:
            raise SecAggError(f"{what} from client index {sender}; expected 1..{self.params.clients}")
        if sender in self.dropped:
            raise SecAggError(f"{what} from client {sender}, dropped in phase {self.dropped[sender]}")

    def drop(self, index: int) -> None:
        """The transport lost this client (stream broke, session expired); its partial upload is removed."""
        if index in self.dropped or not 1 <= index <= self.params.clients:
            return
        if index in self._uploads:
            self._unfold(index)
        if index not in self._uploaded:
            self.dropped[index] = self.phase.value

    # phase 1: advertise keys

    def receive_keys(self, message: AdvertiseKeys) -> None:
        self._expect(ServerPhase.ADVERTISE, message.round_id, message.sender, "public keys")
        if message.sender in self._keys:
            raise SecAggError(f"client {message.sender} sent its public keys twice; the first ones stand")
        check_public_key(message.encryption_public, f"encryption key of client {message.sender}")
        check_public_key(message.masking_public, f"masking key of client {message.sender}")
        if message.encryption_public == message.masking_public:
            raise SecAggError(f"client {message.sender} sent one key for both encryption and masking; send two pairs")
        taken = {k for keys in self._keys.values() for k in (keys.encryption_public, keys.masking_public)}
        if message.encryption_public in taken or message.masking_public in taken:
            raise SecAggError(f"client {message.sender} sent a public key another client already advertised")
        self._keys[message.sender] = message

    def _prune(self, members: set[int], phase: str) -> set[int]:
        """Drops members with fewer than T neighbours among the members, until none is left to drop."""
        while True:
            short = {i for i in members if len(self.graph.of(i) & members) < self.params.threshold}
            if not short:
                return members
            for i in short:
                self.dropped.setdefault(i, phase)
            members -= short

    def _enough(self, members: set[int], phase: str) -> None:
        if len(members) < self.min_clients:
            raise RoundFailed(phase, sorted(self.dropped), f"only {len(members)} clients left; --min-clients is {self.min_clients}")

    def close_advertise(self) -> dict[int, NeighbourKeys]:
        """Ends phase 1: each live client gets its live neighbours' keys."""
        if self.phase is not ServerPhase.ADVERTISE:
            raise SecAggError(f"close_advertise in phase {self.phase.value}")
        for i in range(1, self.params.clients + 1):
            if i not in self._keys:
                self.dropped.setdefault(i, ServerPhase.ADVERTISE.value)
        live = self._prune({i for i in self._keys if i not in self.dropped}, ServerPhase.ADVERTISE.value)
        self._enough(live, ServerPhase.ADVERTISE.value)
        self._advertised = live
        self.phase = ServerPhase.SHARE_KEYS
        return {
            i: NeighbourKeys(self.params.round_id, i, [self._keys[j] for j in sorted(self.graph.of(i) & live)])
            for i in sorted(live)
        }

    # phase 2: share keys

    def receive_shares(self, message: ShareKeys) -> None:
        self._expect(ServerPhase.SHARE_KEYS, message.round_id, message.sender, "shares")
        sender = message.sender
        if sender not in self._advertised:
            raise SecAggError(f"client {sender} sent shares without taking part in phase 1")
        if sender in self._boxes:
            raise SecAggError(f"client {sender} sent its shares twice; the first ones stand")
        expected = self.graph.of(sender) & self._advertised
        receivers = [box.receiver for box in message.shares]
        if sorted(receivers) != sorted(expected):
            raise SecAggError(
                f"client {sender} sent shares for clients {sorted(receivers)}; expected exactly one for each of {sorted(expected)}"
            )
        for box in message.shares:
            if box.sender != sender:
                raise SecAggError(f"client {sender} sent a share box claiming to come from client {box.sender}")
            if len(box.box) != BOX_BYTES:
                raise SecAggError(f"share box from client {sender} to {box.receiver} has {len(box.box)} bytes; expected {BOX_BYTES}")
        self._boxes[sender] = list(message.shares)

    def close_share_keys(self) -> dict[int, ForwardedShares]:
        """Ends phase 2: each client that shared (and keeps T sharing neighbours) gets the boxes addressed to it."""
        if self.phase is not ServerPhase.SHARE_KEYS:
            raise SecAggError(f"close_share_keys in phase {self.phase.value}")
        for i in self._advertised - set(self._boxes):
            self.dropped.setdefault(i, ServerPhase.SHARE_KEYS.value)
        sharers = self._prune({i for i in self._boxes if i not in self.dropped}, ServerPhase.SHARE_KEYS.value)
        self._enough(sharers, ServerPhase.SHARE_KEYS.value)
        self._sharers = sharers
        self.phase = ServerPhase.MASKED_INPUT
        inbox: dict[int, list[EncryptedShare]] = {i: [] for i in sharers}
        for sender in sorted(sharers):
            for box in self._boxes[sender]:
                if box.receiver in inbox:
                    inbox[box.receiver].append(box)
        return {i: ForwardedShares(self.params.round_id, i, boxes) for i, boxes in inbox.items()}

    def mask_peers(self, index: int) -> frozenset[int]:
        """The neighbours whose pairwise masks client `index` added: those it received boxes from."""
        return self.graph.of(index) & self._sharers

    # phase 3: masked input

    def receive_masked_window(self, message: MaskedWindow) -> None:
        """Checks one window's place and length and folds it into the accumulator; a bad one undoes the upload."""
        self._expect(ServerPhase.MASKED_INPUT, message.round_id, message.sender, "masked window")
        sender = message.sender
        if sender not in self._sharers:
            raise SecAggError(f"client {sender} sent masked input without sharing keys in phase 2")
        if sender in self._uploaded:
            raise SecAggError(f"client {sender} sent a masked window after finishing its upload")
        upload = self._uploads.get(sender)
        if upload is None:
            upload = self._uploads[sender] = _Upload(self._spool_dir)
        count = self.params.window_words(upload.next_offset) if upload.next_offset < self.params.vector_length else 0
        expected_bytes = count * self.params.word_bytes
        if message.offset != upload.next_offset or len(message.words) != expected_bytes:
            self._unfold(sender)
            self.dropped[sender] = ServerPhase.MASKED_INPUT.value
            raise SecAggError(
                f"client {sender} sent {len(message.words)} bytes at word {message.offset}; expected {expected_bytes} "
                f"bytes at word {upload.next_offset} of {self.params.vector_length}; its upload is discarded"
            )
        words = np.frombuffer(message.words, dtype=self._accumulator.dtype)
        part = self._accumulator[message.offset : message.offset + count]
        np.add(part, words, out=part)
        upload.spool.write(message.words)
        upload.next_offset += count

    def finish_masked_input(self, sender: int) -> None:
        """The client's upload ended (trailer): complete means counted, short means discarded."""
        self._expect(ServerPhase.MASKED_INPUT, self.params.round_id, sender, "end of masked input")
        if sender in self._uploaded:
            raise SecAggError(f"client {sender} ended its masked input twice; the first upload stands")
        upload = self._uploads.get(sender)
        received = upload.next_offset if upload else 0
        if received != self.params.vector_length:
            self.drop(sender)
            raise SecAggError(
                f"client {sender} ended its masked input after {received} of {self.params.vector_length} words; discarded"
            )
        upload.spool.close()
        del self._uploads[sender]
        self._uploaded.add(sender)

    def _unfold(self, sender: int) -> None:
        """Subtracts the windows of an unfinished upload again, reading them back from its spool."""
        upload = self._uploads.pop(sender)
        upload.spool.seek(0)
        offset = 0
        while offset < upload.next_offset:
            count = self.params.window_words(offset)
            words = np.frombuffer(upload.spool.read(count * self.params.word_bytes), dtype=self._accumulator.dtype)
            part = self._accumulator[offset : offset + count]
            np.subtract(part, words, out=part)
            offset += count
        upload.spool.close()

    def close_masked_input(self) -> dict[int, UnmaskRequest]:
        """Ends phase 3: every survivor is asked for its neighbours' self-mask or mask-key shares (never both)."""
        if self.phase is not ServerPhase.MASKED_INPUT:
            raise SecAggError(f"close_masked_input in phase {self.phase.value}")
        for sender in list(self._uploads):
            self.drop(sender)
        for i in self._sharers - self._uploaded:
            self.dropped.setdefault(i, ServerPhase.MASKED_INPUT.value)
        survivors = self._uploaded
        self._enough(survivors, ServerPhase.MASKED_INPUT.value)
        short = [i for i in survivors if len(self.mask_peers(i) & survivors) < self.params.threshold]
        if short:
            raise RoundFailed(
                ServerPhase.MASKED_INPUT.value, short, f"these survivors have fewer than T={self.params.threshold} live neighbours"
            )
        self.phase = ServerPhase.UNMASK
        for i in sorted(survivors):
            peers = self.mask_peers(i)
            self._requests[i] = UnmaskRequest(
                self.params.round_id, i, sorted(peers & survivors), sorted(peers - survivors)
            )
        return dict(self._requests)

    # phase 4: unmasking

    def receive_unmask(self, message: UnmaskResponse) -> None:
        self._expect(ServerPhase.UNMASK, message.round_id, message.sender, "unmask response")
        request = self._requests.get(message.sender)
        if request is None:
            raise SecAggError(f"client {message.sender} was not asked to unmask")
        if message.sender in self._responded:
            raise SecAggError(f"client {message.sender} sent its unmask response twice; the first one stands")
        seeds = [s.owner for s in message.self_mask_shares]
        keys = [s.owner for s in message.mask_key_shares]
        if seeds != request.survived or keys != request.dropped:
            raise SecAggError(
                f"client {message.sender} revealed self-mask shares of {seeds} and mask-key shares of {keys}; "
                f"asked for {request.survived} and {request.dropped}"
            )
        parsed_seeds = [(s.owner, shamir.share_from_bytes(s.share)) for s in message.self_mask_shares]
        parsed_keys = [(s.owner, shamir.share_from_bytes(s.share)) for s in message.mask_key_shares]
        for owner, y in parsed_seeds:
            self._seed_shares.setdefault(owner, {})[message.sender] = y
        for owner, y in parsed_keys:
            self._key_shares.setdefault(owner, {})[message.sender] = y
        self._responded.add(message.sender)

    def finish(self) -> np.ndarray:
        """Reconstructs the secrets, removes every mask window by window; returns the ring sum of the survivors."""
        if self.phase is not ServerPhase.UNMASK:
            raise SecAggError(f"finish in phase {self.phase.value}")
        survivors = self._uploaded
        threshold = self.params.threshold
        lacking = [i for i in survivors if len(self._seed_shares.get(i, {})) < threshold]
        lost = {d for i in survivors for d in self._requests[i].dropped}
        lacking += [d for d in lost if len(self._key_shares.get(d, {})) < threshold]
        if lacking:
            raise RoundFailed(ServerPhase.UNMASK.value, lacking, f"fewer than T={threshold} unmasking shares arrived")
        try:
            self_seeds = [shamir.combine(self._seed_shares[i], threshold) for i in sorted(survivors)]
            pairwise: list[tuple[bytes, int]] = []
            for d in sorted(lost):
                key = private_key_from_bytes(shamir.combine(self._key_shares[d], threshold))
                if public_bytes(key) != self._keys[d].masking_public:
                    raise SecAggError(f"mask-key shares of client {d} rebuild a key that does not match its public key")
                for u in sorted(self.mask_peers(d) & survivors):
                    secret = agree(key, self._keys[u].masking_public, f"masking key of client {u}")
                    pairwise.append((pairwise_mask_seed(secret, self.params.round_id, u, d), +1 if u < d else -1))
        except SecAggError as exc:
            raise RoundFailed(ServerPhase.UNMASK.value, sorted(self._responded), str(exc)) from exc
        expander = MaskExpander(self.params.ring_bits, self.params.window)
        for offset in range(0, self.params.vector_length, self.params.window):
            part = self._accumulator[offset : offset + self.params.window_words(offset)]
            for seed in self_seeds:
                expander.add(part, seed, offset, -1)
            for seed, sign in pairwise:
                expander.add(part, seed, offset, -sign)
        self.phase = ServerPhase.DONE
        return self._accumulator

    @property
    def survivors(self) -> list[int]:
        """The clients whose inputs are in the sum."""
        return sorted(self._uploaded)
