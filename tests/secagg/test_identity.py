"""secagg.identity: the canonical encoding signed, the simulation's Ed25519 directory, certificates for the service."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedlm.secagg.identity import (
    CertificateSigner, Ed25519Signer, advert_message, canonical, certificate_verifier, make_directory, survivors_message,
)


def test_canonical_encoding_frames_every_field_so_no_two_field_lists_collide():
    # Prepare / Execute / Assert: worked bytes, then pairs that naive concatenation would confuse
    assert canonical("ab", 1) == b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x08" + (1).to_bytes(8, "big")
    assert canonical(["a", "b"]) == b"\x00\x00\x00\x0a" + b"\x00\x00\x00\x01a" + b"\x00\x00\x00\x01b"
    assert canonical("ab", "c") != canonical("a", "bc")
    assert canonical(["a", "b"], []) != canonical(["a"], ["b"])
    assert survivors_message(1, b"k", ["b", "a"], ["c"]) == survivors_message(1, b"k", ["a", "b"], ["c"])  # sorted
    assert survivors_message(1, b"k", ["a", "b"], ["c"]) != survivors_message(2, b"k", ["a", "b"], ["c"])
    assert advert_message(1, "a", b"x" * 32, b"y" * 32) != advert_message(1, "b", b"x" * 32, b"y" * 32)


def test_the_directory_accepts_only_each_clients_own_key():
    # Prepare
    directory = make_directory(["a", "b"])
    message = advert_message(1, "a", b"x" * 32, b"y" * 32)
    a, b, outsider = directory.signers["a"], directory.signers["b"], Ed25519Signer.generate()
    # Execute / Assert
    assert directory.verify("a", a.credential, message, a.sign(message))
    assert not directory.verify("a", a.credential, message + b"!", a.sign(message))  # another message
    assert not directory.verify("a", b.credential, message, b.sign(message))  # b's key speaking for a
    assert not directory.verify("a", outsider.credential, message, outsider.sign(message))  # a key the directory never saw
    assert not directory.verify("zed", outsider.credential, message, outsider.sign(message))  # no such client


def self_signed(tmp_path, cn: str):
    """A certificate and key for `cn`, written as `fedlm certs issue` would (PEM), self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{cn}.pem", tmp_path / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_a_certificate_signature_verifies_only_for_the_client_its_owner_check_names(tmp_path):
    # Prepare: an owner check that trusts only c1's certificate
    signer = CertificateSigner.from_files(*self_signed(tmp_path, "c1"))
    other = CertificateSigner.from_files(*self_signed(tmp_path, "c2"))
    trusted = certificate_verifier(
        lambda cert: "c1" if cert.public_bytes(serialization.Encoding.PEM) == signer.credential else None)
    message = advert_message(1, "c1", b"x" * 32, b"y" * 32)
    # Execute / Assert
    assert trusted("c1", signer.credential, message, signer.sign(message))
    assert not trusted("c2", signer.credential, message, signer.sign(message))  # the certificate is not c2's
    assert not trusted("c1", other.credential, message, other.sign(message))  # untrusted certificate
    assert not trusted("c1", signer.credential, message, other.sign(message))  # signed by another key
    assert not trusted("c1", b"not a certificate", message, signer.sign(message))
    assert not trusted("c1", signer.credential, message, b"\x30\x00")  # not a DER signature


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path):
    cert_path, _ = self_signed(tmp_path, "c1")
    _, other_key = self_signed(tmp_path, "c2")
    with pytest.raises(ValueError, match="is not the EC key of the certificate"):
        CertificateSigner.from_files(cert_path, other_key)
