"""Long-term identities that sign SecAgg messages, so a malicious server cannot forge them (Bonawitz et al. 2017, §6).

Two messages are signed, each as a canonical, length-prefixed encoding (`canonical`):

- the key advert: "fedlm-secagg/advert", round, client id, cipher_public, mask_public. A
  neighbour checks it before sealing any share, so a server that swaps in keys of its own
  (to open the shares sealed to that neighbour, or to agree the pairwise masks) is caught;
- the survivor sets: "fedlm-secagg/survivors", round, the signer's advertised mask_public,
  the sorted survivors, the sorted dropped. A client releases unmask shares only after
  `threshold` of its surviving neighbours signed exactly the sets it signed (secagg.client).
  The signer's fresh mask_public binds the signature to this round of this run: a signature
  from another run's round with the same number cannot be replayed.

A `Signer` has a `credential` (what others verify with) and `sign(bytes)`; a `Verifier`
is `verify(client, credential, message, signature) -> bool` and answers False for any
credential that is not `client`'s. Two kinds:

- the simulation: Ed25519 keys from an in-process `Directory`, made fresh per round, that
  stands in for the PKI (the credential is the raw public key; the directory's key for the
  client is the only one accepted);
- the service: the client's TLS certificate and its EC P-256 key, ECDSA-SHA256 (the
  credential is the certificate, PEM). `certificate_verifier` accepts a certificate only if
  `owner` (the CA chain, validity dates, CRL: service.certs.ClientVerifier) names `client`.

Trust assumption, plainly: signatures are only as good as the CA. Whoever holds the CA key
can issue certificates for ids of its choosing (Sybil clients) and sign anything in their
name; a coordinator that also holds the CA key can therefore defeat every check here. The
CA key must be held by someone other than the party running the coordinator.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

ADVERT_DOMAIN = "fedlm-secagg/advert"
SURVIVORS_DOMAIN = "fedlm-secagg/survivors"
MAX_SIGNATURE_BYTES = 128  # Ed25519: 64; ECDSA P-256 DER: at most 72
MAX_CREDENTIAL_BYTES = 4096  # a P-256 client certificate in PEM is about 600

Field = str | bytes | int | Sequence[str]
# (client, credential, message, signature) -> whether `credential` is `client`'s and signed `message`
Verifier = Callable[[str, bytes, bytes, bytes], bool]


class Signer(Protocol):
    """What a client signs with: `credential` for the others to verify, `sign(message)`."""

    @property
    def credential(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


def _framed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def canonical(*fields: Field) -> bytes:
    """Each field length-prefixed (4 bytes, big-endian): str as UTF-8, int as 8 signed bytes,
    a sequence of ids as the framed concatenation of its framed items. No two field lists share an encoding."""
    parts = []
    for value in fields:
        if isinstance(value, bytes):
            parts.append(_framed(value))
        elif isinstance(value, str):
            parts.append(_framed(value.encode()))
        elif isinstance(value, int):
            parts.append(_framed(struct.pack(">q", value)))
        else:
            parts.append(_framed(b"".join(_framed(item.encode()) for item in value)))
    return b"".join(parts)


def advert_message(round: int, client: str, cipher_public: bytes, mask_public: bytes) -> bytes:
    return canonical(ADVERT_DOMAIN, round, client, cipher_public, mask_public)


def survivors_message(round: int, signer_mask_public: bytes, survivors: Iterable[str], dropped: Iterable[str]) -> bytes:
    return canonical(SURVIVORS_DOMAIN, round, signer_mask_public, sorted(survivors), sorted(dropped))


# ---- the simulation: Ed25519 and an in-process directory ---------------------------------------
@dataclass(frozen=True)
class Ed25519Signer:
    key: Ed25519PrivateKey = field(repr=False)
    credential: bytes = b""  # the raw 32-byte public key

    @classmethod
    def generate(cls) -> Ed25519Signer:
        key = Ed25519PrivateKey.generate()
        return cls(key, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


def ed25519_verifies(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Directory:
    """A stand-in for the PKI in one process: each client's Ed25519 signer, and the public keys everyone trusts."""

    signers: Mapping[str, Ed25519Signer]

    def verify(self, client: str, credential: bytes, message: bytes, signature: bytes) -> bool:
        signer = self.signers.get(client)
        return signer is not None and credential == signer.credential and ed25519_verifies(credential, message, signature)


def make_directory(clients: Iterable[str]) -> Directory:
    return Directory({c: Ed25519Signer.generate() for c in clients})


# ---- the service: the client's certificate and its EC key ---------------------------------------
@dataclass(frozen=True)
class CertificateSigner:
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    credential: bytes = b""  # the certificate, PEM

    @classmethod
    def from_files(cls, cert_path: Path, key_path: Path) -> CertificateSigner:
        """The signer of a `fedlm join` client: its TLS certificate and key (ValueError if they do not match)."""
        pem = Path(cert_path).read_bytes()
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(pem)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
            raise ValueError(f"the key {key_path} is not the EC key of the certificate {cert_path}")
        return cls(key, cert.public_bytes(serialization.Encoding.PEM))

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message, ec.ECDSA(hashes.SHA256()))


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def certificate_verifier(owner: Callable[[x509.Certificate], str | None] = common_name) -> Verifier:
    """A Verifier over PEM certificates: `owner` returns the client id a certificate may speak for, or None
    for one it does not trust (the service passes its CA, date and CRL checks; the default trusts any CN).

    Each certificate is parsed and judged once per verifier (a client makes one per round), so checking a
    neighbour's confirmation after its advert costs one ECDSA verification, not a second chain check."""
    judged: dict[bytes, tuple[str | None, ec.EllipticCurvePublicKey | None]] = {}

    def judge(credential: bytes) -> tuple[str | None, ec.EllipticCurvePublicKey | None]:
        if credential not in judged:
            try:
                cert = x509.load_pem_x509_certificate(credential)
            except ValueError:
                return None, None
            public = cert.public_key()
            judged[credential] = (owner(cert), public if isinstance(public, ec.EllipticCurvePublicKey) else None)
        return judged[credential]

    def verify(client: str, credential: bytes, message: bytes, signature: bytes) -> bool:
        named, public = judge(credential)
        if named != client or public is None:
            return False
        try:
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    return verify


def trusted_owner(identify: Callable[[x509.Certificate], str],
                  refusal: type[Exception]) -> Callable[[x509.Certificate], str | None]:
    """An `owner` for certificate_verifier from a check that raises `refusal` for a certificate it does not trust
    (the service's ClientVerifier.identify and its Refused)."""

    def owner(cert: x509.Certificate) -> str | None:
        try:
            return identify(cert)
        except refusal:
            return None

    return owner
