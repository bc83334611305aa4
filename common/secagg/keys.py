"""Per-round X25519 key pairs, pairwise agreement, HKDF-derived keys and the AES-GCM boxes that carry shares.

Every client makes two fresh pairs per round: one whose agreement keys the share boxes (encryption), one whose
agreement seeds the pairwise masks (masking; its private key is Shamir-shared so dropped clients' masks can be
removed). A box binds (round, sender, receiver) as associated data, so a share replayed into another round or
redirected to another pair fails authentication.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedstream.common.secagg.errors import SecAggError

PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_SHARE_KEY_INFO = b"fedstream secagg v1 share key"
_MASK_SEED_INFO = b"fedstream secagg v1 pairwise mask seed"
_BOX_AD = b"fedstream secagg v1 share box"


@dataclass(frozen=True)
class RoundKeys:
    """A client's two key pairs for one round."""

    encryption: X25519PrivateKey
    masking: X25519PrivateKey

    @classmethod
    def generate(cls) -> "RoundKeys":
        return cls(X25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def encryption_public(self) -> bytes:
        return public_bytes(self.encryption)

    @property
    def masking_public(self) -> bytes:
        return public_bytes(self.masking)


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def private_key_from_bytes(data: bytes) -> X25519PrivateKey:
    """An X25519 private key rebuilt from its 32 reconstructed bytes."""
    return X25519PrivateKey.from_private_bytes(data)


def check_public_key(data: bytes, what: str) -> X25519PublicKey:
    """A peer's public key from the wire; refuses the wrong length (low-order points fail in `agree`)."""
    if len(data) != PUBLIC_KEY_BYTES:
        raise SecAggError(f"{what} has {len(data)} bytes; an X25519 public key has {PUBLIC_KEY_BYTES}")
    return X25519PublicKey.from_public_bytes(data)


def agree(private: X25519PrivateKey, peer_public: bytes, what: str = "peer public key") -> bytes:
    """The 32-byte X25519 shared secret; a low-order peer key (all-zero secret) is refused."""
    try:
        return private.exchange(check_public_key(peer_public, what))
    except ValueError as exc:
        if isinstance(exc, SecAggError):
            raise
        raise SecAggError(f"{what} is a low-order point ({exc}); send a fresh X25519 public key") from exc


def _hkdf(secret: bytes, info: bytes, round_id: int, low: int, high: int) -> bytes:
    """HKDF-SHA256 bound to the round and the unordered pair, so both ends derive the same 32 bytes."""
    context = struct.pack(">QQQ", round_id, low, high)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info + context).derive(secret)


def share_key(shared_secret: bytes, round_id: int, a: int, b: int) -> bytes:
    """The AES-256-GCM key for boxes between clients a and b in this round."""
    return _hkdf(shared_secret, _SHARE_KEY_INFO, round_id, min(a, b), max(a, b))


def pairwise_mask_seed(shared_secret: bytes, round_id: int, a: int, b: int) -> bytes:
    """The ChaCha20 key of the mask clients a and b add (the lower index) and subtract (the higher)."""
    return _hkdf(shared_secret, _MASK_SEED_INFO, round_id, min(a, b), max(a, b))


def _associated_data(round_id: int, sender: int, receiver: int) -> bytes:
    return _BOX_AD + struct.pack(">QQQ", round_id, sender, receiver)


def encrypt_share(key: bytes, round_id: int, sender: int, receiver: int, plaintext: bytes) -> bytes:
    """nonce || AES-GCM(plaintext) with (round, sender, receiver) authenticated."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _associated_data(round_id, sender, receiver))


def decrypt_share(key: bytes, round_id: int, sender: int, receiver: int, box: bytes) -> bytes:
    """The plaintext of a box, or SecAggError naming the pair when it fails authentication."""
    if len(box) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError(f"share box from client {sender} has {len(box)} bytes; at least {NONCE_BYTES + TAG_BYTES} expected")
    try:
        return AESGCM(key).decrypt(box[:NONCE_BYTES], box[NONCE_BYTES:], _associated_data(round_id, sender, receiver))
    except InvalidTag as exc:
        raise SecAggError(
            f"share box from client {sender} to client {receiver} fails AES-GCM authentication for round {round_id}; "
            "it was corrupted, replayed from another round or redirected from another pair"
        ) from exc
