"""The phase messages as protobuf payloads (protos/fedstream/v1/secagg.proto), both ways, with size limits.

Every `parse_*` takes bytes from the other side: it refuses what does not decode, lists longer than a round
can need and byte fields of the wrong size with SecAggError, before the protocol state machines see anything.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from fedstream.common.proto import secagg_pb2 as pb
from fedstream.common.secagg.errors import SecAggError
from fedstream.common.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    ForwardedShares,
    NeighbourKeys,
    RevealedShare,
    RoundSetup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedstream.common.secagg.params import RoundParams

ADVERTISE = "secagg/advertise-keys"
SHARE_KEYS = "secagg/share-keys"
MASKED_INPUT = "secagg/masked-input"
UNMASKING = "secagg/unmasking"
ABORT = "secagg/abort"
PHASES = (ADVERTISE, SHARE_KEYS, MASKED_INPUT, UNMASKING)

MAX_PARTIES = 1 << 16  # no round has more clients than this; longer lists are refused before parsing them
MAX_FIELD_BYTES = 256  # keys are 32 bytes, boxes 160, shares 66
MAX_PAYLOAD_BYTES = 64 << 20

M = TypeVar("M", bound=Message)


def _decode(kind: type[M], payload: bytes, what: str) -> M:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SecAggError(f"{what} of {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")
    message = kind()
    try:
        message.ParseFromString(payload)
    except (DecodeError, ValueError) as exc:
        raise SecAggError(f"{what} does not decode as {kind.DESCRIPTOR.name}: {str(exc)[:120]}") from None
    return message


def _short(value: bytes, what: str) -> bytes:
    if len(value) > MAX_FIELD_BYTES:
        raise SecAggError(f"{what} has {len(value)} bytes; at most {MAX_FIELD_BYTES}")
    return bytes(value)


def _bounded(items, what: str):
    if len(items) > MAX_PARTIES:
        raise SecAggError(f"{what} lists {len(items)} entries; a round has at most {MAX_PARTIES} clients")
    return items


# ----- round setup ------------------------------------------------------------------------------------------


def setup_bytes(setup: RoundSetup) -> bytes:
    p = setup.params
    return pb.SecAggSetup(index=setup.index, params=pb.SecAggParams(
        round_id=p.round_id, clients=p.clients, graph_seed=p.graph_seed, neighbours=p.neighbours,
        threshold=p.threshold, clip=p.clip, bits=p.bits, weight_bound=p.weight_bound, ring_bits=p.ring_bits,
        vector_length=p.vector_length, window=p.window)).SerializeToString()


def parse_setup(payload: bytes) -> RoundSetup:
    m = _decode(pb.SecAggSetup, payload, "round setup")
    p = m.params
    params = RoundParams(round_id=p.round_id, clients=p.clients, graph_seed=_short(p.graph_seed, "graph seed"),
                         neighbours=p.neighbours, threshold=p.threshold, clip=p.clip, bits=p.bits,
                         weight_bound=p.weight_bound, ring_bits=p.ring_bits, vector_length=p.vector_length,
                         window=p.window)
    return RoundSetup(m.index, params)


# ----- phase 1: public keys ---------------------------------------------------------------------------------


def _keys_pb(keys: AdvertiseKeys) -> pb.SecAggPublicKeys:
    return pb.SecAggPublicKeys(round_id=keys.round_id, sender=keys.sender, encryption_public=keys.encryption_public,
                               masking_public=keys.masking_public)


def _keys(m: pb.SecAggPublicKeys) -> AdvertiseKeys:
    return AdvertiseKeys(m.round_id, m.sender, _short(m.encryption_public, "encryption key"),
                         _short(m.masking_public, "masking key"))


def public_keys_bytes(keys: AdvertiseKeys) -> bytes:
    return _keys_pb(keys).SerializeToString()


def parse_public_keys(payload: bytes) -> AdvertiseKeys:
    return _keys(_decode(pb.SecAggPublicKeys, payload, "public keys"))


def neighbour_keys_bytes(message: NeighbourKeys) -> bytes:
    return pb.SecAggNeighbourKeys(round_id=message.round_id, receiver=message.receiver,
                                  keys=[_keys_pb(k) for k in message.keys]).SerializeToString()


def parse_neighbour_keys(payload: bytes) -> NeighbourKeys:
    m = _decode(pb.SecAggNeighbourKeys, payload, "neighbour keys")
    return NeighbourKeys(m.round_id, m.receiver, [_keys(k) for k in _bounded(m.keys, "neighbour keys")])


# ----- phase 2: share boxes ---------------------------------------------------------------------------------


def _boxes_pb(boxes: list[EncryptedShare]) -> list[pb.SecAggShareBox]:
    return [pb.SecAggShareBox(sender=b.sender, receiver=b.receiver, box=b.box) for b in boxes]


def _boxes(items, what: str) -> list[EncryptedShare]:
    return [EncryptedShare(b.sender, b.receiver, _short(b.box, "share box")) for b in _bounded(items, what)]


def share_keys_bytes(message: ShareKeys) -> bytes:
    return pb.SecAggShareKeys(round_id=message.round_id, sender=message.sender,
                              shares=_boxes_pb(message.shares)).SerializeToString()


def parse_share_keys(payload: bytes) -> ShareKeys:
    m = _decode(pb.SecAggShareKeys, payload, "share keys")
    return ShareKeys(m.round_id, m.sender, _boxes(m.shares, "share keys"))


def forwarded_shares_bytes(message: ForwardedShares) -> bytes:
    return pb.SecAggForwardedShares(round_id=message.round_id, receiver=message.receiver,
                                    shares=_boxes_pb(message.shares)).SerializeToString()


def parse_forwarded_shares(payload: bytes) -> ForwardedShares:
    m = _decode(pb.SecAggForwardedShares, payload, "forwarded shares")
    return ForwardedShares(m.round_id, m.receiver, _boxes(m.shares, "forwarded shares"))


# ----- phase 4: unmasking -----------------------------------------------------------------------------------


def unmask_request_bytes(message: UnmaskRequest) -> bytes:
    return pb.SecAggUnmaskRequest(round_id=message.round_id, receiver=message.receiver, survived=message.survived,
                                  dropped=message.dropped).SerializeToString()


def parse_unmask_request(payload: bytes) -> UnmaskRequest:
    m = _decode(pb.SecAggUnmaskRequest, payload, "unmask request")
    return UnmaskRequest(m.round_id, m.receiver, list(_bounded(m.survived, "unmask request")),
                         list(_bounded(m.dropped, "unmask request")))


def _revealed_pb(shares: list[RevealedShare]) -> list[pb.SecAggRevealedShare]:
    return [pb.SecAggRevealedShare(owner=s.owner, share=s.share) for s in shares]


def _revealed(items, what: str) -> list[RevealedShare]:
    return [RevealedShare(s.owner, _short(s.share, "revealed share")) for s in _bounded(items, what)]


def unmask_response_bytes(message: UnmaskResponse) -> bytes:
    return pb.SecAggUnmaskResponse(round_id=message.round_id, sender=message.sender,
                                   self_mask_shares=_revealed_pb(message.self_mask_shares),
                                   mask_key_shares=_revealed_pb(message.mask_key_shares)).SerializeToString()


def parse_unmask_response(payload: bytes) -> UnmaskResponse:
    m = _decode(pb.SecAggUnmaskResponse, payload, "unmask response")
    return UnmaskResponse(m.round_id, m.sender, _revealed(m.self_mask_shares, "unmask response"),
                          _revealed(m.mask_key_shares, "unmask response"))
