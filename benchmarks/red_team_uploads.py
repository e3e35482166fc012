"""Attacks by cohort members during an open round of the plain coordinator (benchmarks/red_team.py).

Findings 1 (one member wrecks the model), 2 and 3 (a second `fedlm serve` while uploads stream), 6 (slow, held and
oversized requests), 7 (pathological headers, a client gone mid-upload) and 8 (free text smuggled in). Each attack
takes a snapshot of the store and the data directory before and after (red_team_lab.Snapshot).
"""

from __future__ import annotations

import hashlib
import json
import select
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from red_team_lab import (
    Lab, Process, Row, describe, first_error_line, is_closed, read_response, shorten, state_changes, upload_head, verdict,
    wait_until,
)

MAX_UPLOAD = 65536  # server.max_upload_bytes = server.max_staging_bytes in the lab's server.toml
SECRET = f"redteam-secret-{uuid.uuid4().hex[:12]}"  # free text an attacker tries to get stored; searched for after
ATTACKER_SAMPLES = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    read_timeout: float  # server.read_timeout_seconds
    max_body: float  # server.max_body_seconds


@dataclass(frozen=True)
class OpenRound:
    number: int
    version: int
    size: int  # values in an update


def honest_update(name: str, round: int, size: int) -> np.ndarray:
    """A small update (L2 norm about 0.6 for the tiny model's 3,584 values), the same for the same client and round."""
    seed = int.from_bytes(hashlib.sha256(f"{name}/{round}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(0, 0.01, size).astype(np.float32)


def dense(vector: np.ndarray) -> bytes:
    from fedlm.updates import wire

    return wire.serialize_dense(vector)


def open_round(lab: Lab, cohort: tuple[str, ...], port_of: dict[str, int] | None = None) -> OpenRound:
    """Register and check in `cohort` (each at its port in `port_of`, default the lab's) until each holds a task of the
    same round (it opens once all are available)."""
    port_of = port_of or {}
    for name in cohort:
        lab.request(name, "POST", "/v1/clients/register", json={}, port=port_of.get(name)).raise_for_status()
    tasks: dict[str, dict] = {}

    def everyone_tasked() -> bool:
        for name in set(cohort) - set(tasks):
            task = lab.request(name, "POST", "/v1/tasks/next", json={}, port=port_of.get(name)).json()["task"]
            if task is not None:
                tasks[name] = task
        return len(tasks) == len(cohort)

    wait_until(everyone_tasked, 30, f"a round with cohort {cohort}", poll=0.2)
    (number,), (version,) = {t["round"] for t in tasks.values()}, {t["version"] for t in tasks.values()}
    size = lab.request(cohort[0], "GET", "/v1/config").json()["update_size"]
    return OpenRound(number, version, size)


def upload(lab: Lab, name: str, rnd: OpenRound, body: bytes, *, samples: int = 10, headers: dict | None = None,
           port: int | None = None):
    return lab.request(name, "POST", f"/v1/rounds/{rnd.number}/updates", content=body, headers=headers or {},
                       params={"version": rnd.version, "num_samples": samples}, port=port)


def drip_until_closed(sock: ssl.SSLSocket, drip: bytes, *, every: float, within: float) -> tuple[float | None, bytes]:
    """Send `drip` every `every` seconds until the server closes; (seconds it took or None, what it sent meanwhile)."""
    started, received = time.monotonic(), b""
    sock.settimeout(0)
    while time.monotonic() - started < within:
        try:
            sock.sendall(drip)
        except (OSError, ssl.SSLError):
            return time.monotonic() - started, received
        readable, _, _ = select.select([sock], [], [], every)
        try:
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    return time.monotonic() - started, received
                received += chunk
        except ssl.SSLWantReadError:
            continue
        except (OSError, ssl.SSLError):
            return time.monotonic() - started, received
    return None, received


def status_of(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
    try:
        return status, str(json.loads(body).get("error", ""))
    except ValueError:
        return status, ""


# ---- finding 6: slow, held and oversized requests ------------------------------------------------------------


def head_dripped(lab: Lab, limits: Limits) -> Row:
    before = lab.snapshot()
    sock = lab.socket(None)
    sock.sendall(b"GET /v1/health HTTP/1.1\r\n")
    took, _ = drip_until_closed(sock, b"X", every=0.2, within=limits.read_timeout * 4 + 5)
    after = lab.snapshot()
    ok = took is not None and took < limits.read_timeout + 3 and not state_changes(before, after)
    answer = "never closed" if took is None else f"connection closed after {took:.1f} s (no answer)"
    return Row("6a", "request head dripped one byte per 0.2 s, no client certificate", answer, describe(before, after),
               f"closed at the head deadline (read_timeout_seconds = {limits.read_timeout:g})", verdict(ok))


def body_stalled(lab: Lab, rnd: OpenRound, name: str, limits: Limits) -> Row:
    body = dense(honest_update(name, rnd.number, rnd.size))
    before = lab.snapshot()
    sock = lab.socket(name)
    started = time.monotonic()
    sock.sendall(upload_head(rnd.number, rnd.version, len(body)) + body[:10])
    status, reply = read_response(sock)
    took, closed = time.monotonic() - started, is_closed(sock, 3)
    after = lab.snapshot()
    code = lab.remember(reply)
    ok = (status, code) == (408, "request_timeout") and took < limits.read_timeout + 3 and closed
    ok = ok and not state_changes(before, after)
    return Row("6b", f"upload by cohort member {name}: 10 of {len(body)} declared bytes, then silence",
               f"{status} {code} after {took:.1f} s, connection closed" if closed else f"{status} {code}, left open",
               describe(before, after), "408 request_timeout at read_timeout_seconds; nothing staged", verdict(ok))


def body_dripped(lab: Lab, rnd: OpenRound, name: str, limits: Limits) -> Row:
    body = dense(honest_update(name, rnd.number, rnd.size))
    before = lab.snapshot()
    sock = lab.socket(name)
    sock.sendall(upload_head(rnd.number, rnd.version, len(body)))
    took, received = drip_until_closed(sock, b"\x00", every=limits.read_timeout / 4, within=limits.max_body + 15)
    after = lab.snapshot()
    status, code = status_of(received)
    lab.remember(received.partition(b"\r\n\r\n")[2])
    ok = took is not None and limits.max_body - 1 <= took < limits.max_body + 5 and not state_changes(before, after)
    answer = "never cut off" if took is None else f"{status or 'no answer'} {code}, closed after {took:.1f} s".replace("  ", " ")
    return Row("6c", f"upload by {name} dripped one byte per {limits.read_timeout / 4:g} s (each in time, the whole never)",
               answer, describe(before, after), f"cut off at max_body_seconds = {limits.max_body:g}", verdict(ok))


def second_concurrent_upload(lab: Lab, rnd: OpenRound, name: str) -> Row:
    body = dense(honest_update(name, rnd.number, rnd.size))
    before = lab.snapshot()
    first = lab.socket(name)
    first.sendall(upload_head(rnd.number, rnd.version, len(body)) + body[:20])
    time.sleep(0.3)
    second = lab.socket(name)
    second.sendall(upload_head(rnd.number, rnd.version, len(body)))
    status, reply = read_response(second)
    code = lab.remember(reply)
    first.close()  # the held one goes away: its staged part must go too
    wait_until(lambda: lab.snapshot().staging == before.staging, 10, "the staged part of the dropped upload to go")
    after = lab.snapshot()
    ok = (status, code) == (429, "upload_in_progress") and not state_changes(before, after)
    return Row("6d", f"{name} opens a second upload while its first is held half-sent", f"{status} {code}",
               describe(before, after), "429 upload_in_progress before the body is read", verdict(ok))


def staging_exhausted(lab: Lab, rnd: OpenRound, holder: str, victim: str) -> Row:
    body = dense(honest_update(victim, rnd.number, rnd.size))
    before = lab.snapshot()
    held = lab.socket(holder)
    held.sendall(upload_head(rnd.number, rnd.version, MAX_UPLOAD) + b"\x00" * 20)
    time.sleep(0.3)
    sock = lab.socket(victim)
    sock.sendall(upload_head(rnd.number, rnd.version, len(body)))
    status, reply = read_response(sock)
    code = lab.remember(reply)
    held.close()
    wait_until(lambda: lab.snapshot().staging == before.staging, 10, "the held upload's staged part to go")
    after = lab.snapshot()
    ok = (status, code) == (507, "staging_full") and not state_changes(before, after)
    return Row("6e", f"{holder} holds an upload declaring all {MAX_UPLOAD} bytes of staging space; {victim} uploads",
               f"{victim}: {status} {code}", describe(before, after),
               "507 staging_full (max_staging_bytes) before the body is read; held part removed", verdict(ok))


def huge_json_declared(lab: Lab) -> Row:
    before = lab.snapshot()
    sock = lab.socket(None)
    sock.sendall(b"POST /v1/clients/register HTTP/1.1\r\nHost: fedlm\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 9437184\r\n\r\n{")
    status, reply = read_response(sock)
    code, closed = lab.remember(reply), is_closed(sock, 3)
    after = lab.snapshot()
    ok = (status, code) == (413, "too_large") and closed and not state_changes(before, after)
    return Row("6f", "POST /v1/clients/register declaring a 9 MiB JSON body, no certificate",
               f"{status} {code}" + (", connection closed" if closed else ", left open"), describe(before, after),
               "413 too_large before the body is read, connection closed", verdict(ok))


# ---- findings 7 and 8: headers and bodies no client should send ---------------------------------------------


def metrics_header(lab: Lab, rnd: OpenRound, name: str, number: str, what: str, header: str, expected: str) -> Row:
    before = lab.snapshot()
    answer = upload(lab, name, rnd, dense(honest_update(name, rnd.number, rnd.size)), headers={"X-Fedlm-Metrics": header})
    after = lab.snapshot()
    code = lab.remember(answer.content)
    ok = f"{answer.status_code} {code}" == expected and not state_changes(before, after)
    return Row(number, f"upload by {name} with X-Fedlm-Metrics {what}", f"{answer.status_code} {code}",
               describe(before, after), expected + ", nothing kept", verdict(ok))


def disconnect_mid_upload(lab: Lab, server: Process, rnd: OpenRound, name: str) -> Row:
    body = dense(honest_update(name, rnd.number, rnd.size))
    before, mark = lab.snapshot(), server.mark()
    sock = lab.socket(name)
    sock.sendall(upload_head(rnd.number, rnd.version, len(body)) + body[:10])
    time.sleep(0.3)
    sock.close()
    wait_until(lambda: lab.snapshot().staging == before.staging, 10, "the cut-off upload's staged part to go")
    time.sleep(1.0)  # anything else the disconnect would log comes now
    lines = server.since(mark)
    warnings = [line for line in lines if "closed the connection in the middle of" in line]
    errors = [line for line in lines if " ERROR " in line or "Traceback" in line]
    after = lab.snapshot()
    ok = len(warnings) == 1 and " WARNING " in warnings[0] and not errors and not state_changes(before, after)
    return Row("7c", f"{name} closes the connection after 10 bytes of its upload",
               f"{len(warnings)} WARNING line, {len(errors)} ERROR/traceback lines in the log", describe(before, after),
               "one WARNING line naming the client, no traceback, nothing kept", verdict(ok))


def secret_found(lab: Lab, server: Process) -> list[str]:
    """Files of the data directory, and the server's log, that hold SECRET."""
    files = [p for p in lab.data_dir.rglob("*") if p.is_file()] + [server.log_path]
    return [str(p.relative_to(lab.root)) for p in files if SECRET.encode() in p.read_bytes()]


def free_text_metric(lab: Lab, server: Process, rnd: OpenRound, name: str) -> Row:
    before = lab.snapshot()
    header = json.dumps({f"my password is {SECRET}": 1.0, "train_loss": 2.0})
    answer = upload(lab, name, rnd, dense(honest_update(name, rnd.number, rnd.size)), headers={"X-Fedlm-Metrics": header})
    after, found = lab.snapshot(), secret_found(lab, server)
    code = lab.remember(answer.content)
    ok = (answer.status_code, code) == (400, "bad_metrics") and not found and not state_changes(before, after)
    return Row("8a", f"upload by {name} with free text as a metric name", f"{answer.status_code} {code}",
               describe(before, after) + ("" if not found else f"; text found in {found}"),
               "400 bad_metrics; the text is nowhere in the store, blobs or log", verdict(ok))


def safetensors_metadata(lab: Lab, server: Process, rnd: OpenRound, name: str) -> Row:
    from safetensors.numpy import save

    before = lab.snapshot()
    body = save({"update": honest_update(name, rnd.number, rnd.size)}, metadata={"note": f"patient 42: {SECRET}"})
    answer = upload(lab, name, rnd, body)
    after, found = lab.snapshot(), secret_found(lab, server)
    code = lab.remember(answer.content)
    ok = (answer.status_code, code) == (400, "malformed_update") and not found and not state_changes(before, after)
    return Row("8b", f"upload by {name}: a valid safetensors update with free text in __metadata__",
               f"{answer.status_code} {code}", describe(before, after) + ("" if not found else f"; text found in {found}"),
               "400 malformed_update; the text is nowhere in the store, blobs or log", verdict(ok))


# ---- findings 2 and 3: a second coordinator while uploads stream -------------------------------------------


class HeldUpload:
    """An upload sent half, kept alive one byte at a time, finished on demand."""

    def __init__(self, lab: Lab, name: str, rnd: OpenRound) -> None:
        self.body = dense(honest_update(name, rnd.number, rnd.size))
        self.sock = lab.socket(name, timeout=30)
        self.sent = len(self.body) // 2
        self.sock.sendall(upload_head(rnd.number, rnd.version, len(self.body)) + self.body[: self.sent])

    def drip(self) -> None:
        if self.sent < len(self.body) - 1:
            self.sock.sendall(self.body[self.sent: self.sent + 1])
            self.sent += 1

    def finish(self) -> tuple[int, bytes]:
        self.sock.sendall(self.body[self.sent:])
        return read_response(self.sock)


def second_serves(lab: Lab, server: Process, rnd: OpenRound, configs: dict[str, tuple[str, Path]],
                  streaming: tuple[str, ...]) -> list[Row]:
    """Start a `fedlm serve` per config (number -> (what, path)) while `streaming` clients' uploads are half sent."""
    held = {name: HeldUpload(lab, name, rnd) for name in streaming}
    time.sleep(0.3)
    before = lab.snapshot()
    seconds = {number: lab.serve(path, name=f"second-serve-{number}") for number, (_, path) in configs.items()}
    deadline = time.monotonic() + 180
    while any(p.running() for p in seconds.values()) and time.monotonic() < deadline:
        for upload_ in held.values():
            upload_.drip()
        time.sleep(0.7)
    after = lab.snapshot()
    finished = {name: upload_.finish() for name, upload_ in held.items()}
    alive = server.running() and lab.request(streaming[0], "GET", "/v1/status").status_code == 200
    accepted = all(status == 200 for status, _ in finished.values())
    rows = []
    for number, (what, _) in configs.items():
        process = seconds[number]
        code = process.wait(5)
        process.stop()
        said = first_error_line(process.output())
        ok = code not in (0, None) and "already serves" in said and not state_changes(before, after)
        ok = ok and len(before.staging) == len(streaming) and accepted and alive
        kept = (f"the {len(before.staging)} staged uploads kept, then finished: "
                + ", ".join(f"{n} {s}" for n, (s, _) in finished.items()))
        rows.append(Row(number, f"{what}, while {' and '.join(streaming)} upload", f"exit {code}: {shorten(said, 170)}",
                        describe(before, after) + "; " + kept,
                        "refused before touching anything; the live uploads kept and accepted", verdict(ok)))
    return rows


# ---- finding 1: one cohort member against the default limits ---------------------------------------------


def version_metrics(lab: Lab, version: int) -> dict:
    (metrics,), = lab.query("SELECT metrics FROM model_versions WHERE version = :v", v=version)
    return metrics if isinstance(metrics, dict) else json.loads(metrics)


def one_member_wrecks_the_model(lab: Lab, rnd: OpenRound, honest_done: tuple[str, ...], honest_left: tuple[str, ...],
                                attacker: str, *, norm_bound: float, weight_cap: float) -> Row:
    """The honest updates (10 samples each) and the attacker's 1e14s claiming 2^31 - 1 samples close the round."""
    start = lab.global_vector(rnd.version, attacker).astype(np.float64)
    for name in honest_left:
        upload(lab, name, rnd, dense(honest_update(name, rnd.number, rnd.size))).raise_for_status()
    before = lab.snapshot()
    answer = upload(lab, attacker, rnd, dense(np.full(rnd.size, 1e14, np.float32)), samples=ATTACKER_SAMPLES)
    after = lab.snapshot()
    lab.remember(answer.content)
    version = lab.status(attacker)["version"]
    delta = lab.global_vector(version, attacker).astype(np.float64) - start
    # worked: honest updates pass unscaled (norm ~0.6 < bound) at weight 10; the attacker's is scaled to norm B (each
    # of n equal values B / sqrt(n)) at weight W = the cap
    honest = sum(10 * honest_update(n, rnd.number, rnd.size).astype(np.float64) for n in (*honest_done, *honest_left))
    attack = np.full(rnd.size, norm_bound / np.sqrt(rnd.size))
    expected = (honest + weight_cap * attack) / (10 * (len(honest_done) + len(honest_left)) + weight_cap)
    norm, share = float(np.linalg.norm(delta)), version_metrics(lab, version).get("max_client_share")
    ok = answer.status_code == 200 and version == rnd.version + 1 and np.allclose(delta, expected, rtol=1e-4, atol=1e-6)
    ok = ok and norm <= norm_bound * (1 + 1e-5) and np.isfinite(delta).all()
    return Row("1", f"cohort member {attacker}: num_samples=2147483647, dense body of 1e14 values (default limits)",
               f"{answer.status_code} accepted; round {rnd.number} closed as v{version}",
               f"{describe(before, after)}; |delta global| = {norm:.2f} (max |x| {np.abs(delta).max():.3f}), "
               f"attacker's weight share {share:.3f}",
               f"bounded: |delta| <= limits.norm_bound = {norm_bound:g} and equal to the worked mean", verdict(ok))
