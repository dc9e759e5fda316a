"""X25519 against RFC 7748's test vectors and wg's own output format."""

from __future__ import annotations

import base64

from wg_wrap import keys


def test_rfc7748_vector_1() -> None:
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    expected = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    assert keys.x25519(scalar, u).hex() == expected


def test_rfc7748_diffie_hellman() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_pub = keys.public_key(alice)
    bob_pub = keys.public_key(bob)
    assert alice_pub.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob_pub.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert keys.x25519(alice, bob_pub).hex() == shared
    assert keys.x25519(bob, alice_pub).hex() == shared


def test_generated_keys_are_clamped_and_encode_like_wg() -> None:
    k = keys.generate_private_key()
    assert k[0] & 7 == 0 and k[31] & 128 == 0 and k[31] & 64
    text = keys.encode(k)
    assert len(text) == 44 and base64.b64decode(text) == k
