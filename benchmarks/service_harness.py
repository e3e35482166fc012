"""What the service benchmarks share: certificates, TLS contexts, server processes, their memory, and the servers.

Each server runs in its own process (this machine's Python, the benchmark script with
`--serve SPEC.json`), so the load generator's work never lands in the server's figures and
its peak memory is the process's own (`VmHWM` in /proc/PID/status). Two kinds of server:

- the coordinator as `fedlm serve` builds it (`service.runtime.build_runtime`: server.toml's
  settings, `[limits]` as they are, the instance lock, request limits, the tick), with one
  change: the model assembly is replaced by a zero vector of the benchmark's update size and
  the pipeline built for that layout, so no model loads and the update size is free; with
  `replica` in the spec, one of several such processes over one PostgreSQL database and one
  data directory (server.replica = true, service.replica), started one after the other so
  that the first one leads the rounds;
- bare ASGI apps under the same uvicorn, the same mutual TLS and the same protocol class:
  `discard_app` reads a body and throws it away; `BareProtocol` answers the light clients'
  whole protocol (register, poll, download, upload) from memory, counting uploads into
  rounds, with no identity check, database, disk or validation.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

CERTS = "certs"
CHUNK = 64 * 1024  # Starlette FileResponse's piece size


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_context(root: Path, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(root / CERTS / "ca.pem"))
    context.load_cert_chain(root / CERTS / "clients" / f"{name}.pem", root / CERTS / "clients" / f"{name}.key")
    return context


def make_certificates(root: Path, names: list[str]) -> None:
    """A CA, the server's certificate and one client certificate per name under root/certs (fedlm's own certs
    module; EC P-256, about 0.4 ms each here)."""
    from fedlm.service import certs

    certs.init_ca(root / CERTS)
    for name in names:
        certs.issue_client(root / CERTS, name)


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise this process's soft limit on open files to its hard limit (1,000 clients hold 1,000 sockets, and the
    server's as many again); returns (soft limit before, soft limit after, hard limit)."""
    import resource

    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if before < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return before, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard


def status_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status in KiB (VmRSS: now; VmHWM: the peak since start or the last reset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # guest time is counted in user


def database_cpu_seconds() -> float | None:
    """CPU seconds of every PostgreSQL process on this machine (user + system), the backends that exited included
    (the postmaster's reaped children); None where none is visible. Other users of the same server count too."""
    total, seen = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:  # the process ended while listed
            continue
        if head.endswith("(postgres"):
            fields = tail.split()
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            seen = True
    return total if seen else None


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of a process (its exited threads included) or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def error_lines(log: str) -> list[str]:
    """A server log's ERROR lines and whole tracebacks, each with the line before it (what printed it: "Exception in
    thread", "Exception ignored in", a logged error); the server logs ids, sizes and hashes only."""
    lines, kept, inside = log.splitlines(), set(), False
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            kept.add(max(i - 1, 0))
            inside = True
        if inside or "ERROR" in line or "Error:" in line:
            kept.add(i)
        inside = inside and line.startswith((" ", "Traceback"))  # the exception's own line ends the traceback
    return [lines[i] for i in sorted(kept)]


class ServerProcess:
    """A benchmark server in its own process: started from a spec, waited for, measured, stopped."""

    def __init__(self, script: str, spec: dict[str, Any], root: Path, health_as: str) -> None:
        self.spec, self.root = spec, root
        self.spec_path = root / f"server-{spec['port']}.json"
        self.spec_path.write_text(json.dumps(spec))
        self.log_path = root / f"server-{spec['port']}.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, script, "--serve", str(self.spec_path)],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_healthy(health_as)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_healthy(self, name: str, timeout: float = 120.0) -> None:
        import httpx

        deadline, context = time.monotonic() + timeout, client_context(self.root, name)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                httpx.get(f"https://127.0.0.1:{self.spec['port']}/v1/health", verify=context, timeout=2)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait_logged(self, text: str, timeout: float = 60.0) -> None:
        """Until the server's log holds `text` (a replica: "leads the rounds now")."""
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not log {text!r}: {self.log_tail()}")
            time.sleep(0.1)

    def logged(self, text: str) -> int:
        """How many of the log's lines contain `text`."""
        return sum(text in line for line in self.log_path.read_text(errors="replace").splitlines())

    def staging(self) -> Path | None:
        """The coordinator's staging folder (a replica's own one, made before it answers), None for a bare server."""
        if self.spec["kind"] != "service":
            return None
        blobs = self.root / self.spec["data_dir"] / "blobs"
        if not self.spec.get("replica"):
            return blobs / "staging"
        named = sorted(blobs.glob(f"staging-*-{self.spec['port']}"))  # service.runtime names it by host and port
        return named[0] if len(named) == 1 else None

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def peak_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")

    def cpu(self) -> tuple[float, float]:
        """(CPU seconds of the whole process, of its main thread: under uvicorn, the event loop's)."""
        return cpu_seconds(self.pid), cpu_seconds(self.pid, self.pid)

    def reset_peak(self) -> bool:
        """Start VmHWM again from the current RSS (Linux: '5' into clear_refs); False where that is not allowed."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down, the server writes its profile), then wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def errors(self) -> list[str]:
        return error_lines(self.log_path.read_text(errors="replace"))


LEADS = "leads the rounds now"  # a replica's log line once it holds the leader lock (service.replica)


def start_servers(script: str, specs: list[dict[str, Any]], root: Path, health_as: str) -> list[ServerProcess]:
    """Each spec's server, one after the other; a replica only once the first one leads, so the first one does."""
    servers: list[ServerProcess] = []
    try:
        for spec in specs:
            servers.append(ServerProcess(script, spec, root, health_as))
            if spec.get("replica") and len(servers) == 1:
                servers[0].wait_logged(LEADS)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


# ---- servers (run inside the server process) ---------------------------------------------------------------


def stub_assembly(size: int):
    """`fedlm.assembly.assemble` without a model: the run's pipeline over a `size`-value layout, zeros as version 0."""
    from fedlm.assembly import make_update_path
    from fedlm.core.vectors import make_spec

    def assemble(config: Any, *, population: int, work: Any = None) -> Any:
        spec = make_spec([("lora_A", (size // 2, 1)), ("lora_B", (size - size // 2, 1))])
        plan, pipeline = make_update_path(config, spec, population)
        return SimpleNamespace(pipeline=pipeline, plan=plan, adapter=SimpleNamespace(initial_shared=np.zeros(size, np.float32)))

    return assemble


def coordinator_runtime(spec: dict[str, Any]) -> Any:
    """The coordinator `fedlm serve` would build from this server.toml (the spec's settings), model assembly stubbed."""
    import fedlm.assembly
    from fedlm.service.runtime import build_runtime
    from fedlm.service.settings import settings_from_dict

    root = Path(spec["root"])
    (root / "run.toml").write_text(f"[federation]\nrounds = {spec['rounds']}\nclients_per_round = {spec['clients']}\n")
    server = {"port": spec["port"], "data_dir": spec["data_dir"], "run_config": "run.toml",
              "max_upload_bytes": spec["max_upload_bytes"], "max_staging_bytes": spec["max_staging_bytes"]}
    if spec.get("database_url"):
        server["database_url"] = spec["database_url"]
    if spec.get("replica"):
        server["replica"] = True
    settings = settings_from_dict({"server": server, "scheduling": {"deadline_seconds": spec["deadline_seconds"]}}, root=root)
    fedlm.assembly.assemble = stub_assembly(spec["size"])
    return build_runtime(settings)


async def discard_app(scope, receive, send) -> None:
    """Read the body, throw it away, answer 200: the upload benchmark's baseline."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"accepted": true}'})


class BareProtocol:
    """The light clients' protocol answered from memory: a round ends when `clients` uploads came, the run after
    `rounds`; bodies are read and thrown away, the global is one bytes object. No identity, database, disk or checks."""

    def __init__(self, *, clients: int, rounds: int, global_body: bytes) -> None:
        import hashlib

        self.clients, self.rounds, self.round, self.received = clients, rounds, 1, 0
        self.global_body, self.global_sha = global_body, hashlib.sha256(global_body).hexdigest()
        self.state = SimpleNamespace()  # service.tls reads app.state for limits; none here: its defaults apply

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        body, kind = self.answer(scope["method"], scope["path"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
        view = memoryview(body)
        for start in range(0, max(len(body), 1), CHUNK):  # in Starlette FileResponse's pieces, so the same flow control applies
            await send({"type": "http.response.body", "body": bytes(view[start:start + CHUNK]),
                        "more_body": start + CHUNK < len(body)})

    def answer(self, method: str, path: str) -> tuple[bytes, bytes]:
        finished = self.round > self.rounds
        if path.endswith("/global"):
            return self.global_body, b"application/octet-stream"
        if path.endswith("/updates"):
            self.received += 1
            if self.received == self.clients:
                self.round, self.received = self.round + 1, 0
            return b'{"accepted": true}', b"application/json"
        if path == "/v1/tasks/next":
            task = None if finished else {"round": self.round, "version": self.round - 1, "global_sha256": self.global_sha}
            return json.dumps({"task": task, "finished": finished, "retry_after": 0.5}).encode(), b"application/json"
        return b'{"client_id": "bare", "registered": true, "status": "ok"}', b"application/json"


def serve_forever(app: Any, *, root: Path, port: int, runtime: Any = None, profile_to: Path | None = None) -> None:
    """uvicorn with fedlm's mutual TLS around `app` (a runtime's app when given); with `profile_to`, the server's
    stacks are sampled and the coordinator's lock timed (benchmarks/server_profile.py) into that file."""
    import uvicorn

    from fedlm.service.runtime import Runtime, uvicorn_config
    from fedlm.service.settings import settings_from_dict

    from server_profile import StackSampler, TimedLock

    if runtime is None:
        runtime = Runtime(settings_from_dict({"server": {"port": port}}, root=root), None, None, app, None)
    sampler = StackSampler(profile_to) if profile_to is not None else None
    if sampler is not None and runtime.coordinator is not None:
        sampler.lock = runtime.coordinator.lock = TimedLock()  # before any request: every hold is counted
    if sampler is not None:
        sampler.start()
    uvicorn.Server(uvicorn_config(runtime)).run()  # re-raises the SIGTERM it stopped on: nothing after this runs


def uses_postgres_at(url: str) -> str:
    """A fresh scratch database on the server of `url` (as tests/service/conftest.py's fixture makes one); its URL."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"fedlm_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_postgres(url: str, admin_url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    finally:
        admin.dispose()

