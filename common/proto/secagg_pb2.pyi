from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecAggParams(_message.Message):
    __slots__ = ("round_id", "clients", "graph_seed", "neighbours", "threshold", "clip", "bits", "weight_bound", "ring_bits", "vector_length", "window")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SEED_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BOUND_FIELD_NUMBER: _ClassVar[int]
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    clients: int
    graph_seed: bytes
    neighbours: int
    threshold: int
    clip: float
    bits: int
    weight_bound: int
    ring_bits: int
    vector_length: int
    window: int
    def __init__(self, round_id: _Optional[int] = ..., clients: _Optional[int] = ..., graph_seed: _Optional[bytes] = ..., neighbours: _Optional[int] = ..., threshold: _Optional[int] = ..., clip: _Optional[float] = ..., bits: _Optional[int] = ..., weight_bound: _Optional[int] = ..., ring_bits: _Optional[int] = ..., vector_length: _Optional[int] = ..., window: _Optional[int] = ...) -> None: ...

class SecAggSetup(_message.Message):
    __slots__ = ("index", "params")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    index: int
    params: SecAggParams
    def __init__(self, index: _Optional[int] = ..., params: _Optional[_Union[SecAggParams, _Mapping]] = ...) -> None: ...

class SecAggPublicKeys(_message.Message):
    __slots__ = ("round_id", "sender", "encryption_public", "masking_public")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    MASKING_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    sender: int
    encryption_public: bytes
    masking_public: bytes
    def __init__(self, round_id: _Optional[int] = ..., sender: _Optional[int] = ..., encryption_public: _Optional[bytes] = ..., masking_public: _Optional[bytes] = ...) -> None: ...

class SecAggNeighbourKeys(_message.Message):
    __slots__ = ("round_id", "receiver", "keys")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    receiver: int
    keys: _containers.RepeatedCompositeFieldContainer[SecAggPublicKeys]
    def __init__(self, round_id: _Optional[int] = ..., receiver: _Optional[int] = ..., keys: _Optional[_Iterable[_Union[SecAggPublicKeys, _Mapping]]] = ...) -> None: ...

class SecAggShareBox(_message.Message):
    __slots__ = ("sender", "receiver", "box")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    sender: int
    receiver: int
    box: bytes
    def __init__(self, sender: _Optional[int] = ..., receiver: _Optional[int] = ..., box: _Optional[bytes] = ...) -> None: ...

class SecAggShareKeys(_message.Message):
    __slots__ = ("round_id", "sender", "shares")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    sender: int
    shares: _containers.RepeatedCompositeFieldContainer[SecAggShareBox]
    def __init__(self, round_id: _Optional[int] = ..., sender: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[SecAggShareBox, _Mapping]]] = ...) -> None: ...

class SecAggForwardedShares(_message.Message):
    __slots__ = ("round_id", "receiver", "shares")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    receiver: int
    shares: _containers.RepeatedCompositeFieldContainer[SecAggShareBox]
    def __init__(self, round_id: _Optional[int] = ..., receiver: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[SecAggShareBox, _Mapping]]] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("round_id", "receiver", "survived", "dropped")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    SURVIVED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    receiver: int
    survived: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, round_id: _Optional[int] = ..., receiver: _Optional[int] = ..., survived: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ...) -> None: ...

class SecAggRevealedShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class SecAggUnmaskResponse(_message.Message):
    __slots__ = ("round_id", "sender", "self_mask_shares", "mask_key_shares")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    sender: int
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[SecAggRevealedShare]
    mask_key_shares: _containers.RepeatedCompositeFieldContainer[SecAggRevealedShare]
    def __init__(self, round_id: _Optional[int] = ..., sender: _Optional[int] = ..., self_mask_shares: _Optional[_Iterable[_Union[SecAggRevealedShare, _Mapping]]] = ..., mask_key_shares: _Optional[_Iterable[_Union[SecAggRevealedShare, _Mapping]]] = ...) -> None: ...
