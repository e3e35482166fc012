"""Identity for mutual TLS: a private CA, the server's certificate, client certificates, a CRL.

Built on the `cryptography` package's x509 API; keys are ECDSA P-256. The client id is
the certificate's subject CN, so at most 64 characters (X.509's bound on a CN), one rule
for `certs issue` and for the server (CLIENT_ID). TLS (uvicorn, ssl.CERT_OPTIONAL) already refuses a peer
whose certificate does not chain to the CA, and the app refuses a request without one
(401); `ClientVerifier` then checks a certificate again in the app
(issuer signature, validity dates, the revocation list, the CN's form) so a revoked
certificate is refused with a clear 403 and a new CRL takes effect without a restart.

Revocation fails closed: once a CRL is configured, a CRL that is missing, unreadable or not
signed by the CA admits nobody (503 `crl_unavailable`, and an error in the log) until the
operator restores it, rather than letting revoked certificates back in. `certs revoke`
replaces the file atomically, so the server never reads half a CRL.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlm.service.errors import Refused

log = logging.getLogger("fedlm.service")
MAX_CLIENT_ID = 64  # the X.509 upper bound on a CN (RFC 5280, ub-common-name)
CLIENT_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_CLIENT_ID - 1}}}")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CRL = "ca.pem", "ca.key", "server.pem", "server.key", "crl.pem"


def check_client_id(client_id: str) -> str:
    if len(client_id) > MAX_CLIENT_ID:
        raise ValueError(f"client id {client_id[:12]!r}... is {len(client_id)} characters long; a certificate's CN, "
                         f"and so a client id, holds at most {MAX_CLIENT_ID}")
    if not CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"client id {client_id!r} must be 1-{MAX_CLIENT_ID} of letters, digits, '.', '_', '-' "
                         "(a letter or digit first)")
    return client_id


def well_formed_client_id(cert: x509.Certificate) -> str | None:
    """The certificate's CN if it is a well-formed client id, else None (so nothing else from it reaches a log)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = str(names[0].value) if names else ""
    return value if CLIENT_ID.fullmatch(value) else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not (folder / CA_KEY).is_file():
        raise ValueError(f"{folder} holds no CA; run `fedlm certs init {folder}` first")
    cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    return cert, key


def _sign(subject: str, public_key, issuer: x509.Certificate | None, issuer_key, *, days: int, ca: bool,
          usage: x509.ObjectIdentifier | None, names: list[x509.GeneralName] = ()) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def init_ca(folder: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 825) -> None:
    """Make a CA, a server certificate for `hosts`, and an empty CRL in `folder` (refused if a CA is there)."""
    folder = Path(folder)
    if (folder / CA_KEY).exists():
        raise ValueError(f"{folder} already holds a CA; refusing to overwrite it")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _sign("fedlm CA", ca_key.public_key(), None, ca_key, days=days * 2, ca=True, usage=None)
    (folder / CA_CERT).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / CA_KEY, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [_general_name(h) for h in hosts]
    server = _sign(hosts[0], server_key.public_key(), ca, ca_key, days=days, ca=False,
                   usage=ExtendedKeyUsageOID.SERVER_AUTH, names=names)
    (folder / SERVER_CERT).write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / SERVER_KEY, server_key)
    write_crl(folder, [])


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_client(folder: Path, client_id: str, *, out: Path | None = None, days: int = 365) -> tuple[Path, Path]:
    """A client certificate (CN = client id) and key, written to `out` (default folder/clients)."""
    check_client_id(client_id)
    ca, ca_key = _load_ca(Path(folder))
    out = Path(out) if out is not None else Path(folder) / "clients"
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(client_id, key.public_key(), ca, ca_key, days=days, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    cert_path, key_path = out / f"{client_id}.pem", out / f"{client_id}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


def revoked_serials(folder: Path) -> list[int]:
    path = Path(folder) / CRL
    return [r.serial_number for r in x509.load_pem_x509_crl(path.read_bytes())] if path.is_file() else []


def write_crl(folder: Path, serials: list[int]) -> None:
    ca, ca_key = _load_ca(Path(folder))
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(_now())
               .next_update(_now() + dt.timedelta(days=30)))
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_now()).build())
    target = Path(folder) / CRL
    staging = target.with_name(target.name + ".new")
    staging.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    os.replace(staging, target)  # a server re-reading the CRL sees the old one or the new one, never half of one


def revoke(folder: Path, cert_path: Path) -> int:
    """Add the serial of the certificate at `cert_path` to the CRL; returns the serial."""
    serial = x509.load_pem_x509_certificate(Path(cert_path).read_bytes()).serial_number
    write_crl(Path(folder), revoked_serials(Path(folder)) + [serial])
    return serial


@dataclass
class _CrlCache:
    mtime: float = -1.0
    serials: frozenset[int] = frozenset()


class ClientVerifier:
    """Turns a peer certificate into a client id, or refuses it (403) with the reason."""

    def __init__(self, ca_path: Path, crl_path: Path | None) -> None:
        """Checks the CRL once here, so `fedlm serve` refuses to start on a bad one (ValueError naming it)."""
        self.ca = x509.load_pem_x509_certificate(Path(ca_path).read_bytes())
        self.crl_path = Path(crl_path) if crl_path else None
        self._crl = _CrlCache()
        try:
            self.revoked()
        except Refused as err:
            raise ValueError(err.message) from None

    def revoked(self) -> frozenset[int]:
        """The CRL's serials, re-read when the file changes; without a usable CRL nobody is admitted (fail closed)."""
        if self.crl_path is None:
            return frozenset()
        try:
            mtime = self.crl_path.stat().st_mtime
            if mtime != self._crl.mtime:
                crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
                if not crl.is_signature_valid(self.ca.public_key()):
                    raise ValueError("it is not signed by the CA")
                self._crl = _CrlCache(mtime, frozenset(r.serial_number for r in crl))
        except (OSError, ValueError) as err:
            reason = "it is missing" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {err}"
            log.error("revocation list %s unusable (%s): every client is refused until it is restored", self.crl_path, reason)
            raise Refused(503, "crl_unavailable", f"the server's revocation list {self.crl_path.name} is unusable ({reason}); "
                          "no client is admitted until the operator restores it") from None
        return self._crl.serials

    def identify(self, cert: x509.Certificate) -> str:
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, Exception) as err:  # InvalidSignature has no common base
            raise Refused(403, "untrusted_certificate", f"client certificate is not issued by this server's CA ({type(err).__name__})") from None
        if not cert.not_valid_before_utc <= _now() <= cert.not_valid_after_utc:
            raise Refused(403, "expired_certificate", "client certificate is outside its validity period")
        if cert.serial_number in self.revoked():
            raise Refused(403, "revoked_certificate", f"client certificate serial {cert.serial_number:x} is revoked")
        client_id = well_formed_client_id(cert)
        if client_id is None:
            raise Refused(403, "bad_client_id", f"client certificate's CN is not a client id (1-{MAX_CLIENT_ID} of "
                          "letters, digits, '.', '_', '-')")
        return client_id
