"""Key agreement and share encryption for SecAgg: X25519 + HKDF-SHA256, AES-256-GCM.

Two clients derive the same secret from one's private key and the other's public key
(Diffie-Hellman over Curve25519, Bernstein 2006); HKDF (RFC 5869) turns it into a key
bound to the round and to its use, so a pairwise mask seed and a share-encryption key
never coincide. Shares travel through the server sealed with AES-GCM, whose associated
data names the round, sender and receiver: a share tampered with or replayed into another
round or pair fails authentication.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12


class ShareTampered(ValueError):
    """A sealed share failed authentication: it was altered, or sent for another round or pair."""


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private(data: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(data)


def is_usable_public(public: bytes) -> bool:
    """False for a point that agrees the all-zero secret with every key (a low-order point)."""
    try:
        new_private_key().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


def agree(private: X25519PrivateKey, peer_public: bytes, *, purpose: str, round: int, length: int) -> bytes:
    """A `length`-byte key that the two ends of the exchange derive alike for this purpose and round."""
    if len(peer_public) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an X25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(peer_public)}")
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    info = f"fedlm-secagg/{purpose}/round-{round}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise ShareTampered("a sealed share failed authentication") from None
