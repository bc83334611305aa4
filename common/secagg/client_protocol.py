"""The client's side of one secure-aggregation round: a state machine that aborts on anything unexpected.

advertise_keys → share_keys(NeighbourKeys) → receive_shares(ForwardedShares) → masked_input(update, weight)
→ unmask(UnmaskRequest). Every method checks the phase and every field the server sent; a violation raises
SecAggAbort and the client refuses all later calls for the round (it never reveals both shares of a neighbour).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from enum import Enum

import numpy as np

from fedstream.common.secagg import shamir
from fedstream.common.secagg.encoding import check_weight, encode_weight, encode_window
from fedstream.common.secagg.errors import SecAggAbort, SecAggError
from fedstream.common.secagg.flat import FlatValues
from fedstream.common.secagg.graph import harary_graph
from fedstream.common.secagg.keys import (
    RoundKeys,
    agree,
    decrypt_share,
    encrypt_share,
    pairwise_mask_seed,
    private_bytes,
    share_key,
)
from fedstream.common.secagg.masks import SEED_BYTES, MaskExpander
from fedstream.common.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    ForwardedShares,
    MaskedWindow,
    NeighbourKeys,
    RevealedShare,
    RoundSetup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)

BOX_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES


class ClientPhase(Enum):
    ADVERTISE = "advertise keys"
    SHARE_KEYS = "share keys"
    RECEIVE_SHARES = "receive shares"
    MASKED_INPUT = "masked input"
    UNMASK = "unmasking"
    DONE = "done"
    ABORTED = "aborted"


class SecAggClient:
    """One client's state for one round; create it from the server's RoundSetup."""

    def __init__(self, setup: RoundSetup, rng: np.random.Generator | None = None) -> None:
        try:
            setup.params.check()
        except SecAggError as exc:
            raise SecAggAbort(f"round setup refused: {exc}") from exc
        self.params = setup.params
        self.index = setup.index
        if not 1 <= self.index <= self.params.clients:
            raise SecAggAbort(f"client index {self.index}; expected 1..{self.params.clients}")
        self.neighbours = harary_graph(self.params.graph_seed, self.params.clients, self.params.neighbours).of(self.index)
        self._rng = rng if rng is not None else np.random.default_rng()
        self._keys = RoundKeys.generate()
        self._self_mask_seed = os.urandom(SEED_BYTES)
        self._peer_keys: dict[int, AdvertiseKeys] = {}
        self._box_keys: dict[int, bytes] = {}
        self._held: dict[int, tuple[int, int]] = {}  # owner -> (self-mask share, mask-key share) we hold
        self._mask_seeds: dict[int, bytes] = {}
        self.phase = ClientPhase.ADVERTISE

    def _abort(self, reason: str) -> SecAggAbort:
        self.phase = ClientPhase.ABORTED
        self._held.clear()
        self._mask_seeds.clear()
        return SecAggAbort(f"client {self.index} aborts round {self.params.round_id}: {reason}")

    def _expect(self, phase: ClientPhase, round_id: int, receiver: int, what: str) -> None:
        if self.phase is not phase:
            raise self._abort(f"{what} arrived in phase {self.phase.value}; expected it in phase {phase.value}")
        if round_id != self.params.round_id:
            raise self._abort(f"{what} is for round {round_id}; this is round {self.params.round_id}")
        if receiver != self.index:
            raise self._abort(f"{what} is addressed to client {receiver}")

    def advertise_keys(self) -> AdvertiseKeys:
        if self.phase is not ClientPhase.ADVERTISE:
            raise self._abort(f"keys already advertised (phase {self.phase.value})")
        self.phase = ClientPhase.SHARE_KEYS
        return AdvertiseKeys(self.params.round_id, self.index, self._keys.encryption_public, self._keys.masking_public)

    def share_keys(self, message: NeighbourKeys) -> ShareKeys:
        """Checks the neighbours' keys, Shamir-shares both secrets among them and boxes each pair of shares."""
        self._expect(ClientPhase.SHARE_KEYS, message.round_id, message.receiver, "neighbour keys")
        seen_keys = {self._keys.encryption_public, self._keys.masking_public}
        for keys in message.keys:
            if keys.round_id != self.params.round_id:
                raise self._abort(f"keys of client {keys.sender} are for round {keys.round_id}")
            if keys.sender not in self.neighbours:
                raise self._abort(f"keys of client {keys.sender}, who is not a neighbour ({sorted(self.neighbours)})")
            if keys.sender in self._peer_keys:
                raise self._abort(f"keys of client {keys.sender} sent twice")
            for key in (keys.encryption_public, keys.masking_public):
                if key in seen_keys:
                    raise self._abort(f"public key of client {keys.sender} was already sent by another party")
                seen_keys.add(key)
            self._peer_keys[keys.sender] = keys
        if len(self._peer_keys) < self.params.threshold:
            raise self._abort(f"only {len(self._peer_keys)} neighbours advertised keys; T={self.params.threshold} needed")
        try:
            for peer, keys in self._peer_keys.items():
                secret = agree(self._keys.encryption, keys.encryption_public, f"encryption key of client {peer}")
                self._box_keys[peer] = share_key(secret, self.params.round_id, self.index, peer)
        except SecAggError as exc:
            raise self._abort(str(exc)) from exc
        holders = sorted(self._peer_keys)
        seed_shares = shamir.split(self._self_mask_seed, self.params.threshold, holders)
        key_shares = shamir.split(private_bytes(self._keys.masking), self.params.threshold, holders)
        boxes = [
            EncryptedShare(
                self.index,
                peer,
                encrypt_share(
                    self._box_keys[peer],
                    self.params.round_id,
                    self.index,
                    peer,
                    shamir.share_to_bytes(seed_shares[peer]) + shamir.share_to_bytes(key_shares[peer]),
                ),
            )
            for peer in holders
        ]
        self.phase = ClientPhase.RECEIVE_SHARES
        return ShareKeys(self.params.round_id, self.index, boxes)

    def receive_shares(self, message: ForwardedShares) -> None:
        """Opens the neighbours' boxes; those neighbours become this client's pairwise-mask peers (at least T)."""
        self._expect(ClientPhase.RECEIVE_SHARES, message.round_id, message.receiver, "forwarded shares")
        for box in message.shares:
            if box.receiver != self.index:
                raise self._abort(f"share box from client {box.sender} is addressed to client {box.receiver}")
            if box.sender not in self._box_keys:
                raise self._abort(f"share box from client {box.sender}, who advertised no keys to this client")
            if box.sender in self._held:
                raise self._abort(f"share box from client {box.sender} sent twice")
            try:
                plain = decrypt_share(self._box_keys[box.sender], self.params.round_id, box.sender, self.index, box.box)
                if len(plain) != BOX_PLAINTEXT_BYTES:
                    raise SecAggError(f"share box from client {box.sender} holds {len(plain)} bytes; {BOX_PLAINTEXT_BYTES} expected")
                seed_share = shamir.share_from_bytes(plain[: shamir.SHARE_BYTES])
                key_share = shamir.share_from_bytes(plain[shamir.SHARE_BYTES :])
            except SecAggError as exc:
                raise self._abort(str(exc)) from exc
            self._held[box.sender] = (seed_share, key_share)
        if len(self._held) < self.params.threshold:
            raise self._abort(f"only {len(self._held)} live neighbours shared keys; T={self.params.threshold} needed")
        try:
            for peer in self._held:
                secret = agree(self._keys.masking, self._peer_keys[peer].masking_public, f"masking key of client {peer}")
                self._mask_seeds[peer] = pairwise_mask_seed(secret, self.params.round_id, self.index, peer)
        except SecAggError as exc:
            raise self._abort(str(exc)) from exc
        self.phase = ClientPhase.MASKED_INPUT

    @property
    def mask_peers(self) -> frozenset[int]:
        """The neighbours whose pairwise masks this client adds (the server must agree on them)."""
        return frozenset(self._mask_seeds)

    def masked_input(self, update: np.ndarray | FlatValues, weight: int) -> Iterator[MaskedWindow]:
        """The encoded, masked vector [update..., weight] as windows, computed one window at a time."""
        if self.phase is not ClientPhase.MASKED_INPUT:
            raise self._abort(f"masked input requested in phase {self.phase.value}")
        flat = update if isinstance(update, FlatValues) else np.asarray(update).reshape(-1)
        if flat.size != self.params.vector_length - 1:
            raise SecAggError(f"update has {flat.size} values; this round's model has {self.params.vector_length - 1}")
        whole_weight = check_weight(weight, self.params.encoding)
        self.phase = ClientPhase.UNMASK
        return self._windows(flat, whole_weight, self._self_mask_seed, sorted(self._mask_seeds.items()))

    def _windows(
        self, flat: np.ndarray | FlatValues, weight: int, self_mask_seed: bytes, pairwise: list[tuple[int, bytes]]
    ) -> Iterator[MaskedWindow]:
        params = self.params
        encoding = params.encoding
        expander = MaskExpander(params.ring_bits, params.window)
        model = params.vector_length - 1
        for offset in range(0, params.vector_length, params.window):
            end = offset + params.window_words(offset)
            words = encode_window(flat[offset:min(end, model)], weight, encoding, self._rng)
            if end > model:
                words = np.concatenate([words, encode_weight(weight, encoding)])
            expander.add(words, self_mask_seed, offset, +1)
            for peer, seed in pairwise:
                expander.add(words, seed, offset, +1 if self.index < peer else -1)
            yield MaskedWindow(params.round_id, self.index, offset, words.tobytes())

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveals self-mask shares of survivors and mask-key shares of dropped peers; refuses both for one peer."""
        self._expect(ClientPhase.UNMASK, request.round_id, request.receiver, "unmask request")
        survived, dropped = set(request.survived), set(request.dropped)
        if len(survived) != len(request.survived) or len(dropped) != len(request.dropped):
            raise self._abort("unmask request lists a neighbour twice")
        both = survived & dropped
        if both:
            raise self._abort(f"server asked for both shares of client(s) {sorted(both)}; revealing both would unmask them")
        unknown = (survived | dropped) - set(self._held)
        if unknown:
            raise self._abort(f"unmask request names client(s) {sorted(unknown)}, whose shares this client does not hold")
        if len(survived) < self.params.threshold:
            raise self._abort(f"only {len(survived)} neighbours survived; T={self.params.threshold} needed")
        response = UnmaskResponse(
            self.params.round_id,
            self.index,
            [RevealedShare(owner, shamir.share_to_bytes(self._held[owner][0])) for owner in sorted(survived)],
            [RevealedShare(owner, shamir.share_to_bytes(self._held[owner][1])) for owner in sorted(dropped)],
        )
        self.phase = ClientPhase.DONE
        self._held.clear()
        self._mask_seeds.clear()
        return response
