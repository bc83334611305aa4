"""The messages of the four phases: bytes, ints and lists, one protobuf message each in phase 2."""

from __future__ import annotations

from dataclasses import dataclass

from fedstream.common.secagg.params import RoundParams


@dataclass(frozen=True)
class RoundSetup:
    """Server to each sampled client: the round's parameters and the client's index 1..N."""

    index: int
    params: RoundParams


@dataclass(frozen=True)
class AdvertiseKeys:
    """Phase 1, client to server (and, collected, server to neighbours): the client's two public keys."""

    round_id: int
    sender: int
    encryption_public: bytes
    masking_public: bytes


@dataclass(frozen=True)
class NeighbourKeys:
    """Phase 1 answer: the advertised keys of the receiver's neighbours that took part."""

    round_id: int
    receiver: int
    keys: list[AdvertiseKeys]


@dataclass(frozen=True)
class EncryptedShare:
    """One AES-GCM box holding the sender's two Shamir shares for the receiver."""

    sender: int
    receiver: int
    box: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Phase 2, client to server: one box per neighbour that advertised keys."""

    round_id: int
    sender: int
    shares: list[EncryptedShare]


@dataclass(frozen=True)
class ForwardedShares:
    """Phase 2 answer: the boxes addressed to the receiver by its neighbours that shared keys."""

    round_id: int
    receiver: int
    shares: list[EncryptedShare]


@dataclass(frozen=True)
class MaskedWindow:
    """Phase 3, client to server: words [offset, offset + n) of the masked vector, little-endian."""

    round_id: int
    sender: int
    offset: int
    words: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Phase 4, server to survivor: which neighbours' self-mask shares and which mask-key shares to reveal."""

    round_id: int
    receiver: int
    survived: list[int]
    dropped: list[int]


@dataclass(frozen=True)
class RevealedShare:
    """A Shamir share (66 bytes, big-endian) of the owner's secret, held by the message's sender."""

    owner: int
    share: bytes


@dataclass(frozen=True)
class UnmaskResponse:
    """Phase 4 answer: self-mask shares of survivors, mask-key shares of dropped neighbours, never both."""

    round_id: int
    sender: int
    self_mask_shares: list[RevealedShare]
    mask_key_shares: list[RevealedShare]
