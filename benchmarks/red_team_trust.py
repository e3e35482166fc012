"""Attacks on who gets in and what the server serves, against a running coordinator (benchmarks/red_team.py).

Findings 4 (a global blob damaged on disk), 5 (revocation that failed open), 9 (refused authentications that left
no trace) and 10 (docs against behaviour). The CRL is changed on disk while `fedlm serve` runs, as an operator (or
an attacker with write access to its folder) would change it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import warnings
from pathlib import Path

from red_team_lab import (
    Lab, Process, Row, describe, documented_codes, file_inode, shorten, state_changes, verdict, wait_until,
)


def forge_certificate(folder: Path, file_name: str, common_name: str, *, expired: bool = False) -> tuple[Path, Path]:
    """A client certificate signed by the CA in `folder` whose CN is `common_name` as given (no length or form check),
    optionally expired yesterday; written to folder/clients/FILE_NAME.pem and .key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    key, now = ec.generate_private_key(ec.SECP256R1()), dt.datetime.now(dt.timezone.utc)
    start, end = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else (now - dt.timedelta(minutes=5),
                                                                                           now + dt.timedelta(days=30))
    with warnings.catch_warnings():  # cryptography warns of a CN past 64 characters even unvalidated: that is the point
        warnings.simplefilter("ignore")
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name, _validate=False)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    out = folder / "clients"
    out.mkdir(exist_ok=True)
    (out / f"{file_name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{file_name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return out / f"{file_name}.pem", out / f"{file_name}.key"


def flipped_global(lab: Lab, server: Process, as_client: str) -> Row:
    version = lab.status(as_client)["version"]
    (sha,), = lab.query("SELECT global_sha256 FROM model_versions WHERE version = :v", v=version)
    path = lab.data_dir / "blobs" / sha[:2] / sha[2:]
    before, mark, original = lab.snapshot(), server.mark(), path.read_bytes()
    damaged = bytearray(original)
    damaged[-1] ^= 0x01
    path.write_bytes(bytes(damaged))
    answer = lab.request(as_client, "GET", f"/v1/models/{version}/global")
    named = any(" ERROR " in line and str(path) in line for line in server.since(mark))
    path.write_bytes(original)  # repaired: served again
    again = lab.request(as_client, "GET", f"/v1/models/{version}/global")
    after = lab.snapshot()
    code = lab.remember(answer.content)
    ok = (answer.status_code, code) == (500, "corrupt_blob") and bytes(damaged) not in answer.content and named
    ok = ok and again.status_code == 200 and again.headers.get("X-Content-SHA256") == sha and not state_changes(before, after)
    return Row("4c", f"one bit flipped in global v{version}'s blob on disk, then GET /v1/models/{version}/global",
               f"{answer.status_code} {code}; ERROR line names the file: {'yes' if named else 'no'}; "
               f"repaired: {again.status_code}", describe(before, after) + " (the blob was repaired afterwards)",
               "never served: 500 corrupt_blob naming the file in the log", verdict(ok))


def revoke_by_cli(lab: Lab, victim: str, bystander: str) -> Row:
    crl = lab.certs / "crl.pem"
    inode, before = file_inode(crl), lab.snapshot()
    revoke = Process(lab.root, "certs-revoke", ["certs", "revoke", str(lab.certs / "clients" / f"{victim}.pem"),
                                                "--dir", str(lab.certs)]).launch()
    code = revoke.wait(120)
    refused = lab.request(victim, "GET", "/v1/status")
    allowed = lab.request(bystander, "GET", "/v1/status")
    after = lab.snapshot()
    replaced = file_inode(crl) != inode and not (lab.certs / "crl.pem.new").exists()
    status = f"{refused.status_code} {lab.remember(refused.content)}"
    ok = code == 0 and status == "403 revoked_certificate" and allowed.status_code == 200 and replaced
    ok = ok and not state_changes(before, after)
    return Row("5a", f"`fedlm certs revoke {victim}.pem` while the server runs; {victim} asks GET /v1/status",
               f"{victim}: {status}; {bystander}: {allowed.status_code}; crl.pem replaced by rename: "
               f"{'yes' if replaced else 'no'}", describe(before, after),
               "403 revoked_certificate from the next request on, no restart; the CRL swapped atomically", verdict(ok))


def crl_damaged(lab: Lab, number: str, what: str, damage, revoked: str, bystander: str) -> Row:
    """Apply `damage(crl_path)` while serving; everyone must be refused (503), then the restored CRL applies again."""
    crl, saved = lab.certs / "crl.pem", lab.root / "crl.pem.saved"
    shutil.copy2(crl, saved)
    before = lab.snapshot()
    damage(crl)
    answers = {name: lab.request(name, "GET", "/v1/status") for name in (revoked, bystander)}
    os.replace(saved, crl)
    os.utime(crl, (time.time() + 1, time.time() + 1))  # a new mtime: the server re-reads it
    restored = {name: lab.request(name, "GET", "/v1/status").status_code for name in (revoked, bystander)}
    after = lab.snapshot()
    seen = {name: f"{a.status_code} {lab.remember(a.content)}" for name, a in answers.items()}
    ok = set(seen.values()) == {"503 crl_unavailable"} and restored == {revoked: 403, bystander: 200}
    ok = ok and not state_changes(before, after)
    return Row(number, f"{what} while the server runs; revoked {revoked} and valid {bystander} ask",
               f"{revoked}: {seen[revoked]}, {bystander}: {seen[bystander]}; restored: {restored[revoked]}, "
               f"{restored[bystander]}", describe(before, after),
               "fails closed: 503 crl_unavailable for everyone, never the revoked one let in", verdict(ok))


def foreign_crl(lab: Lab):
    """A damage: the CRL replaced by another CA's (empty) one."""
    from fedlm.service import certs

    other = lab.root / "other-ca"
    if not other.exists():
        certs.init_ca(other)

    def damage(crl: Path) -> None:
        crl.write_bytes((other / "crl.pem").read_bytes())
    return damage


def auth_rows(lab: Lab, since_id: int) -> list[tuple]:
    return lab.query("SELECT id, client_id, sha256, detail FROM audit_log WHERE event = 'auth_refused' AND id > :i "
                     "ORDER BY id", i=since_id)


def last_audit_id(lab: Lab) -> int:
    return lab.query("SELECT coalesce(max(id), 0) FROM audit_log")[0][0]


def refusals_counted(lab: Lab, as_client: str, reason: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = lab.request(as_client, "GET", "/metrics").text
    return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "fedlm_auth_refused_total" and s.labels == {"reason": reason}), 0.0)


def handshake(lab: Lab, name: str) -> str:
    """Connect with certs/clients/NAME.pem and ask; what the client saw."""
    try:
        sock = lab.socket(name, timeout=5)
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: fedlm\r\n\r\n")
        data = sock.recv(100)
        return "answered" if data else "connection closed after the handshake, no answer"
    except (OSError, ConnectionError) as err:
        return f"handshake failed ({type(err).__name__})"


def traced(lab: Lab, server: Process, number: str, attack: str, reason: str, act, *, observer: str,
           shows: str = "") -> Row:
    """Run `act()` (what the client saw); one auth_refused audit row with `reason`, a WARNING line and a count."""
    start, before, mark = last_audit_id(lab), lab.snapshot(), server.mark()
    counted = refusals_counted(lab, observer, reason)
    seen = act()
    rows = wait_until(lambda: auth_rows(lab, start), 5, "the refusal's audit row")  # a handshake's is written by the tick
    lines = [line for line in server.since(mark) if "authentication refused" in line]
    after, counted_after = lab.snapshot(), refusals_counted(lab, observer, reason)
    detail = rows[-1][3]
    ok = len(rows) == 1 and detail.startswith(reason) and len(lines) == 1 and " WARNING " in lines[0]
    ok = ok and counted_after == counted + 1 and (not shows or shows in lines[0]) and not state_changes(before, after)
    return Row(number, attack, f"{seen}; audit: \"{shorten(detail, 120)}\"; log: {len(lines)} WARNING; "
               f"fedlm_auth_refused_total{{{reason}}} +{counted_after - counted:g}", describe(before, after),
               "counted, one WARNING line and one auth_refused audit row (CN and fingerprint only)", verdict(ok))


def status_of(lab: Lab, name: str | None, path: str, method: str = "GET") -> str:
    answer = lab.request(name, method, path)
    return f"{answer.status_code} {lab.remember(answer.content)}".strip()


def auth_trail_rows(lab: Lab, server: Process, *, revoked: str, observer: str) -> list[Row]:
    forge_certificate(lab.certs, "old", "old", expired=True)
    forge_certificate(lab.certs, "bad-cn", "../../etc/passwd")
    from fedlm.service import certs

    outsider = lab.root / "outsider-ca"
    certs.init_ca(outsider)
    certs.issue_client(outsider, "intruder")
    for suffix in ("pem", "key"):
        shutil.copy(outsider / "clients" / f"intruder.{suffix}", lab.certs / "clients" / f"intruder.{suffix}")
    return [
        traced(lab, server, "9a", "GET /v1/status without a client certificate", "no_client_certificate",
               lambda: status_of(lab, None, "/v1/status"), observer=observer),
        traced(lab, server, "9b", "TLS handshake with an expired certificate of this CA", "tls_certificate_rejected",
               lambda: handshake(lab, "old"), observer=observer, shows="certificate has expired"),
        traced(lab, server, "9c", "TLS handshake with a certificate of another CA (same CA name)",
               "tls_certificate_rejected", lambda: handshake(lab, "intruder"), observer=observer),
        traced(lab, server, "9d", f"GET /v1/config with {revoked}'s revoked certificate", "revoked_certificate",
               lambda: status_of(lab, revoked, "/v1/config"), observer=observer, shows=f"client={revoked}"),
        traced(lab, server, "9e", "POST /v1/clients/register, certificate of this CA with CN '../../etc/passwd'",
               "bad_client_id", lambda: status_of(lab, "bad-cn", "/v1/clients/register", "POST"), observer=observer),
    ]


def api_description(lab: Lab, member: str) -> Row:
    before = lab.snapshot()
    seen = {path: status_of(lab, None, path) for path in ("/openapi.json", "/docs", "/redoc")}
    member_view = lab.request(member, "GET", "/openapi.json")
    after = lab.snapshot()
    ok = seen == {"/openapi.json": "401 no_client_certificate", "/docs": "404 not_found", "/redoc": "404 not_found"}
    ok = ok and member_view.status_code == 200 and "/v1/rounds/{round}/updates" in member_view.json()["paths"]
    ok = ok and not state_changes(before, after)
    return Row("10a", "GET /openapi.json, /docs, /redoc without a certificate",
               "; ".join(f"{p}: {s}" for p, s in seen.items()) + f"; with a certificate: {member_view.status_code}",
               describe(before, after), "401 for the description, no browsable pages (404)", verdict(ok))


def long_client_ids(lab: Lab) -> Row:
    from fedlm.service import certs

    try:
        certs.issue_client(lab.certs, "a" * 65)
        issued = "issued"
    except ValueError as err:
        issued = "refused (" + str(err).split(";")[-1].strip()[:60] + ")"
    forge_certificate(lab.certs, "cn65", "c" * 65)
    certs.issue_client(lab.certs, "b" * 64)
    before = lab.snapshot()
    forged = status_of(lab, "cn65", "/v1/clients/register", "POST")
    longest = lab.request("b" * 64, "POST", "/v1/clients/register", json={})
    after = lab.snapshot()
    ok = issued.startswith("refused") and not (lab.certs / "clients" / f"{'a' * 65}.pem").exists()
    ok = ok and forged == "403 bad_client_id" and longest.json().get("client_id") == "b" * 64
    ok = ok and state_changes(before, after) == ["clients +1"]
    return Row("10b", "client ids past 64 characters: `certs issue` of 65; a CA-signed certificate with a 65-character CN",
               f"certs issue: {issued}; 65-character CN: {forged}; a 64-character id registers: {longest.status_code}",
               describe(before, after) + " (the 64-character client, as expected)",
               "65 refused at issue and by the server (403 bad_client_id); 64 works", verdict(ok))


def join_with_expired_certificate(lab: Lab) -> Row:
    (lab.root / "join-data").mkdir(exist_ok=True)
    (lab.root / "join-data" / "notes.txt").write_text("the quick brown fox\n\njumps over the lazy dog\n")
    before = lab.snapshot()
    join = Process(lab.root, "join-expired", ["join", "--server", f"https://127.0.0.1:{lab.port}", "--data",
                                              str(lab.root / "join-data"), "--cert", str(lab.certs / "clients" / "old.pem"),
                                              "--key", str(lab.certs / "clients" / "old.key"),
                                              "--ca", str(lab.certs / "ca.pem")]).launch()
    code = join.wait(330)
    took = time.monotonic() - join.started
    join.stop()
    after = lab.snapshot()
    said = " ".join(join.output().split())
    start = said.find("certificate problem")
    ok = code == 1 and start >= 0 and "expired" in said and took < 120 and not state_changes(before, after)
    return Row("10d", "`fedlm join` with an expired certificate",
               f"exit {code} after {took:.0f} s (process start included): {shorten(said[start:] if start >= 0 else said[-120:], 120)}",
               describe(before, after), "stops at once saying the certificate expired (was: 300 s of retries)",
               verdict(ok))


def after_the_last_round(lab: Lab, server: Process, rounds: int, member: str) -> Row:
    wait_until(lambda: any("rounds done" in line for line in server.since(0)), 10, "the last-round line")
    time.sleep(1.0)  # more ticks: the line must not repeat
    lines = [line for line in server.since(0) if f"all {rounds} rounds done" in line]
    before = lab.snapshot()
    answer = lab.request(member, "POST", "/v1/tasks/next", json={}).json()
    version = lab.status(member)["version"]
    served = lab.request(member, "GET", f"/v1/models/{version}/global").status_code
    after = lab.snapshot()
    ok = len(lines) == 1 and answer["finished"] is True and answer["task"] is None and served == 200
    ok = ok and server.running() and not state_changes(before, after)
    said = shorten(lines[0].split(" fedlm.service ")[-1], 110) if lines else "nothing"
    return Row("10e", f"after the last of {rounds} rounds: the log, a check-in, a download",
               f"logged once: \"{said}...\"; check-in: finished={answer['finished']}; v{version} download: {served}",
               describe(before, after), "says once that the run is done, keeps serving the final version", verdict(ok))


def codes_documented(lab: Lab) -> Row:
    documented = documented_codes()
    missing = sorted(lab.codes_seen - documented)
    return Row("10c", "every error code the server answered with in this run, against docs/service.md's table",
               f"{len(lab.codes_seen)} codes seen: {', '.join(sorted(lab.codes_seen))}",
               "n/a", "each one documented", verdict(not missing) if lab.codes_seen else "FAIL")


def crl_rows(lab: Lab, revoked: str, bystander: str) -> list[Row]:
    def moved(crl: Path) -> None:
        crl.rename(crl.with_name("crl.pem.moved"))

    def emptied(crl: Path) -> None:
        crl.write_bytes(b"")

    return [revoke_by_cli(lab, revoked, bystander),
            crl_damaged(lab, "5b", "crl.pem moved away", moved, revoked, bystander),
            crl_damaged(lab, "5c", "crl.pem emptied", emptied, revoked, bystander),
            crl_damaged(lab, "5d", "crl.pem replaced by another CA's CRL", foreign_crl(lab), revoked, bystander)]

