"""What the red-team script (benchmarks/red_team.py) shares: real `fedlm serve` processes on loopback, the clients'
TLS identities, raw sockets for half-sent requests, and before/after snapshots of the store and the data directory.

A `Lab` is one temporary folder: a CA and client certificates (fedlm.service.certs), server.toml files, the
servers' logs. Every request a client makes goes over a fresh mutual-TLS connection (the server closes idle ones
after `read_timeout_seconds`), and every error code a server answers with is remembered (finding 10 checks them
against docs/service.md). A `Snapshot` holds what a refused attack must leave alone: every table of the store but
the audit log (compared row by row), the blobs (by content hash, which covers the global vectors' bytes) and the
staging files; the audit log is counted by event, so a row can say what was only audited.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

FEDLM = str(Path(sys.executable).parent / "fedlm")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "service.md"
# the store's tables a refused request must leave as they were: (columns compared, how many of them make the key)
TABLES = {
    "clients": ("id, last_round", 1), "rounds": ("round, version, status, stage, cohort, target, deadline, closed_at", 1),
    "tasks": ("round, client_id, status", 2), "updates": ("id, round, client_id, version, sha256, size, num_samples, metrics", 1),
    "secagg_messages": ("id, round, kind, client_id", 1), "privacy_ledger": ("round, epsilon", 1),
    "pointers": ("name, version", 1), "model_versions": ("version, round, state_sha256, global_sha256, status", 1),
}


@dataclass(frozen=True)
class Row:
    """One line of the table: what was tried, what the server did, and whether that is the safe behaviour."""

    number: str
    attack: str
    answer: str
    changed: str
    expected: str
    verdict: str  # PASS, FAIL or SKIP


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toml_text(tables: dict[str, dict[str, Any]]) -> str:
    """A TOML file of flat tables (strings, numbers, booleans, lists of strings)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | list):
            return json.dumps(v)
        return repr(v)

    return "".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in body.items()) for name, body in tables.items())


def shorten(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most about `limit` characters."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def first_error_line(text: str) -> str:
    """The line a failed `fedlm` command ended with (its `error: ...`, rich-wrapped over several lines), joined."""
    start = text.rfind("error:")
    return " ".join(text[start:].split()) if start >= 0 else " ".join(text.split())[-200:]


class Process:
    """A `fedlm` command in its own process, its output in ROOT/NAME.log."""

    def __init__(self, root: Path, name: str, args: list[str]) -> None:
        self.log_path = root / f"{name}.log"
        self.args = args
        self.process: subprocess.Popen | None = None
        self.started = 0.0

    def launch(self) -> Process:
        log = open(self.log_path, "ab")
        self.started = time.monotonic()
        wide = {**os.environ, "COLUMNS": "1000"}  # rich wraps error lines (and paths) at the terminal's width otherwise
        self.process = subprocess.Popen([FEDLM, *self.args], stdout=log, stderr=subprocess.STDOUT, env=wide)
        log.close()
        return self

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down within its 2 s grace), then SIGKILL if it lingers."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            if self.wait(30) is None:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def mark(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def since(self, mark: int) -> list[str]:
        with open(self.log_path, "rb") as handle:
            handle.seek(mark)
            return handle.read().decode(errors="replace").splitlines()


@dataclass
class Snapshot:
    tables: dict[str, frozenset]
    audit: Counter
    blobs: dict[str, str]
    staging: tuple[str, ...]


def take_snapshot(engine: Any, data_dir: Path) -> Snapshot:
    from sqlalchemy import text

    tables, audit = {}, Counter()
    with engine.connect() as connection:
        for table, (columns, _) in TABLES.items():
            rows = connection.execute(text(f"SELECT {columns} FROM {table}"))
            tables[table] = frozenset(tuple(json.dumps(v, sort_keys=True, default=str) for v in row) for row in rows)
        for event, count in connection.execute(text("SELECT event, count(*) FROM audit_log GROUP BY event")):
            audit[event] = count
    blobs, staging = {}, []
    for path in sorted((data_dir / "blobs").rglob("*")):
        if not path.is_file():
            continue
        relative = str(path.relative_to(data_dir / "blobs"))
        if relative.startswith("staging"):
            staging.append(relative)
        else:
            blobs[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return Snapshot(tables, audit, blobs, tuple(staging))


def state_changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed besides the audit log, one short phrase per table (+ rows added, ~ changed, - removed) or folder
    (empty: nothing)."""
    changes = []
    for table, (_, key) in TABLES.items():
        old = {row[:key]: row for row in before.tables[table]}
        new = {row[:key]: row for row in after.tables[table]}
        counts = (len(new.keys() - old.keys()), sum(old[k] != new[k] for k in old.keys() & new.keys()),
                  len(old.keys() - new.keys()))
        if any(counts):
            changes.append(f"{table} " + " ".join(f"{sign}{n}" for sign, n in zip("+~-", counts, strict=True) if n))
    added = set(after.blobs) - set(before.blobs)
    altered = [b for b in set(before.blobs) & set(after.blobs) if before.blobs[b] != after.blobs[b]]
    removed = set(before.blobs) - set(after.blobs)
    for count, what in ((len(added), "new"), (len(altered), "altered"), (len(removed), "removed")):
        if count:
            changes.append(f"{count} blob(s) {what}")
    if before.staging != after.staging:
        changes.append(f"staging {len(before.staging)} -> {len(after.staging)} files")
    return changes


def audit_added(before: Snapshot, after: Snapshot) -> dict[str, int]:
    return {event: n - before.audit.get(event, 0) for event, n in after.audit.items() if n > before.audit.get(event, 0)}


def describe(before: Snapshot, after: Snapshot) -> str:
    """'no', or 'yes: ...'; audit rows added are named in brackets (an audit row is not a change of state)."""
    changes = state_changes(before, after)
    audit = ", ".join(f"+{n} {event}" for event, n in sorted(audit_added(before, after).items()))
    head = "no" if not changes else "yes: " + "; ".join(changes)
    return head + (f" (audit {audit})" if audit else "")


def connect(port: int, context: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_response(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """Status and body of one response (0 when the server closed without answering)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except (OSError, ssl.SSLError):
        head, body = data, b""
    return (int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0), body


def is_closed(sock: ssl.SSLSocket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (whatever it sends first is read and dropped)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except (TimeoutError, socket.timeout):
        return False
    except (OSError, ssl.SSLError):
        return True


def error_code(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return ""


def upload_head(round: int, version: int, length: int | None, *, samples: int = 10) -> bytes:
    """An upload's request head; `length` None sends the body chunked."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/rounds/{round}/updates?version={version}&num_samples={samples} HTTP/1.1\r\nHost: fedlm\r\n"
            f"Content-Type: application/octet-stream\r\n{framing}\r\n\r\n").encode()


@dataclass
class Lab:
    """A temporary folder with a CA, client certificates and server configs; one server port."""

    root: Path
    clients: tuple[str, ...]
    port: int = field(default_factory=free_port)
    data_dir_name: str = "state"
    database_url: str = ""
    codes_seen: set[str] = field(default_factory=set)
    processes: list[Process] = field(default_factory=list)  # every server started here, stopped by `close`

    def __post_init__(self) -> None:
        from fedlm.service import certs

        self.root.mkdir(parents=True, exist_ok=True)
        certs.init_ca(self.root / "certs")
        for name in self.clients:
            certs.issue_client(self.root / "certs", name)
        self._contexts: dict[str | None, ssl.SSLContext] = {}
        self._engine = None

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def data_dir(self) -> Path:
        return self.root / self.data_dir_name

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'fedlm.db'}"

    def write_config(self, file_name: str, *, run: dict[str, dict[str, Any]], server: dict[str, Any],
                     **tables: dict[str, Any]) -> Path:
        """run.toml-like RUN (written as FILE_NAME's run file) and a server.toml over this lab's data directory."""
        run_path = self.root / f"run-{file_name}"
        run_path.write_text(toml_text(run))
        base = {"port": self.port, "data_dir": self.data_dir_name, "run_config": run_path.name, "tick_seconds": 0.2}
        if self.database_url:
            base["database_url"] = self.database_url
        path = self.root / file_name
        path.write_text(toml_text({"server": {**base, **server}, **tables}))
        return path

    def serve(self, config: Path, name: str = "server") -> Process:
        process = Process(self.root, name, ["serve", "--config", str(config)]).launch()
        self.processes.append(process)
        return process

    def context(self, name: str | None) -> ssl.SSLContext:
        """Trusts this lab's CA; presents certs/clients/NAME.pem (none for None)."""
        if name not in self._contexts:
            context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
            if name is not None:
                context.load_cert_chain(self.certs / "clients" / f"{name}.pem", self.certs / "clients" / f"{name}.key")
            self._contexts[name] = context
        return self._contexts[name]

    def request(self, name: str | None, method: str, path: str, *, port: int | None = None, **kwargs: Any) -> httpx.Response:
        """One request over a fresh mutual-TLS connection; the error code it answers with is remembered."""
        answer = httpx.request(method, f"https://127.0.0.1:{port or self.port}{path}", verify=self.context(name),
                               timeout=30, **kwargs)
        self.remember(answer.content)
        return answer

    def remember(self, body: bytes) -> str:
        code = error_code(body)
        if code:
            self.codes_seen.add(code)
        return code

    def socket(self, name: str | None, timeout: float = 10.0) -> ssl.SSLSocket:
        return connect(self.port, self.context(name), timeout)

    def wait_healthy(self, server: Process, timeout: float = 180.0, port: int | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not server.running():
                raise RuntimeError(f"fedlm serve exited with {server.process.returncode}: {server.output()[-1500:]}")
            try:
                if self.request(None, "GET", "/v1/health", port=port).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"fedlm serve did not answer within {timeout:.0f} s: {server.output()[-1500:]}")

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from sqlalchemy import create_engine

            self._engine = create_engine(self.url)
        return self._engine

    def snapshot(self) -> Snapshot:
        return take_snapshot(self.engine, self.data_dir)

    def query(self, sql: str, **params: Any) -> list[tuple]:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]

    def global_vector(self, version: int, as_client: str) -> np.ndarray:
        from fedlm.updates import wire

        answer = self.request(as_client, "GET", f"/v1/models/{version}/global")
        answer.raise_for_status()
        return wire.deserialize(answer.content)[1]["vector"]

    def status(self, as_client: str) -> dict[str, Any]:
        return self.request(as_client, "GET", "/v1/status").json()

    def close(self) -> None:
        """Stop every server this lab started; let go of the database."""
        for process in self.processes:
            process.stop()
        if self._engine is not None:
            self._engine.dispose()


def wait_until(predicate: Any, timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def documented_codes() -> set[str]:
    """Every `code` in docs/service.md's table of error codes (its rows start with a status: `| 409 | ...`)."""
    import re

    rows = [line for line in DOCS.read_text().splitlines() if re.match(r"\| (\d{3}|any other) \|", line)]
    return {code for line in rows for code in re.findall(r"`([a-z_]+)`", line)}


def file_inode(path: Path) -> int:
    return os.stat(path).st_ino
