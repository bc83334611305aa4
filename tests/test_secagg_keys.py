import pytest

from fedstream.common.secagg.errors import SecAggError
from fedstream.common.secagg.keys import (
    RoundKeys,
    agree,
    decrypt_share,
    encrypt_share,
    pairwise_mask_seed,
    private_bytes,
    private_key_from_bytes,
    public_bytes,
    share_key,
)


def test_both_ends_derive_the_same_keys_and_they_differ_by_purpose_round_and_pair() -> None:
    a, b = RoundKeys.generate(), RoundKeys.generate()
    s_ab = agree(a.masking, b.masking_public)
    assert s_ab == agree(b.masking, a.masking_public)
    assert pairwise_mask_seed(s_ab, 1, 3, 8) == pairwise_mask_seed(s_ab, 1, 8, 3)
    derived = {share_key(s_ab, 1, 3, 8), pairwise_mask_seed(s_ab, 1, 3, 8), pairwise_mask_seed(s_ab, 2, 3, 8), pairwise_mask_seed(s_ab, 1, 3, 9)}
    assert len(derived) == 4


def test_masking_key_survives_its_byte_form() -> None:
    keys = RoundKeys.generate()
    assert public_bytes(private_key_from_bytes(private_bytes(keys.masking))) == keys.masking_public


def _box() -> tuple[bytes, bytes]:
    a, b = RoundKeys.generate(), RoundKeys.generate()
    key = share_key(agree(a.encryption, b.encryption_public), 5, 1, 2)
    return key, encrypt_share(key, 5, 1, 2, b"s" * 132)


def test_box_opens_for_its_round_and_pair_only() -> None:
    key, box = _box()
    assert decrypt_share(key, 5, 1, 2, box) == b"s" * 132
    for round_id, sender, receiver in [(6, 1, 2), (5, 2, 1), (5, 1, 3), (4, 1, 2)]:
        with pytest.raises(SecAggError, match="fails AES-GCM authentication"):
            decrypt_share(key, round_id, sender, receiver, box)


def test_tampered_or_truncated_box_is_refused() -> None:
    key, box = _box()
    flipped = box[:20] + bytes([box[20] ^ 1]) + box[21:]
    with pytest.raises(SecAggError, match="authentication"):
        decrypt_share(key, 5, 1, 2, flipped)
    with pytest.raises(SecAggError, match="bytes"):
        decrypt_share(key, 5, 1, 2, box[:10])


@pytest.mark.parametrize("peer", [bytes(32), b"\x01" + bytes(31), b"abc"])
def test_low_order_or_malformed_peer_key_is_refused(peer: bytes) -> None:
    with pytest.raises(SecAggError):
        agree(RoundKeys.generate().encryption, peer)
