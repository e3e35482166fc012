"""`fedlm simulate --dashboard`: the dashboard of a run directory, served on loopback while the run writes it.

A stdlib ThreadingHTTPServer in a daemon thread, bound to a loopback address only (anything
else is refused: the page has no authentication of its own). The page lives at a random path
(`/<token>/`, 128 bits from `secrets`): another local user or a web page that guesses ports
(DNS rebinding included) cannot find it; every other path answers 404. Each request reads
metrics.jsonl, config.toml and summary.json afresh, so the page follows the run; the last
line of metrics.jsonl while the run is still writing it (no newline yet) is left for the
next refresh, not an error. A damaged file is a 500 naming it, which the page's script shows.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import threading
import tomllib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedlm.dashboard.page import SECURITY_HEADERS, dashboard_page
from fedlm.report.records import parse_metrics_lines
from fedlm.sim.rundir import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE
REFRESH_SECONDS = 2.0


def complete_lines(text: str) -> str:
    """The lines of `text` that end with a newline: a line still being written is left out."""
    return text[: text.rfind("\n") + 1]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The finished lines of metrics.jsonl; none when the file is absent or holds no finished line yet."""
    if not path.is_file():
        return []
    text = complete_lines(path.read_text(encoding="utf-8", errors="replace"))
    return parse_metrics_lines(text, str(path)) if text.strip() else []


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8", errors="replace"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML ({err})") from None


def read_summary(path: Path) -> dict[str, Any] | None:
    """summary.json (written whole, by rename) once the run has ended; None before."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a JSON object")
    return value


def render_run_dir(run_dir: Path, *, refresh_seconds: float) -> str:
    """The dashboard of `run_dir` as it is now (ValueError naming a damaged file)."""
    records = read_metrics(run_dir / METRICS_FILE)
    config = read_config(run_dir / CONFIG_FILE)
    summary = read_summary(run_dir / SUMMARY_FILE)
    note = "adapter/ (final)" if summary else "latest"
    return dashboard_page(records, config, summary, title=f"fedlm live dashboard: {run_dir.resolve().name}",
                          refresh_seconds=refresh_seconds, current_note=note)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_handler(run_dir: Path, token: str, refresh_seconds: float) -> type[BaseHTTPRequestHandler]:
    page_path = f"/{token}/"

    class DashboardHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if urlsplit(self.path).path != page_path:
                self.answer(404, "text/plain", "not found\n")
                return
            try:
                self.answer(200, "text/html", render_run_dir(run_dir, refresh_seconds=refresh_seconds))
            except (ValueError, OSError) as err:
                self.answer(500, "text/plain", f"{err}\n")

        def answer(self, status: int, kind: str, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # the run's progress bars own the terminal; the page itself says what failed

    return DashboardHandler


def serve_run_dir(run_dir: Path, host: str = "127.0.0.1", port: int = 0, *,
                  refresh_seconds: float = REFRESH_SECONDS) -> tuple[str, Callable[[], None]]:
    """Serve the dashboard of `run_dir` (which need not exist yet) in a daemon thread: (its URL, a function that stops it).

    `port` 0 takes a free one. Refuses a host that is not a loopback address.
    """
    if not is_loopback(host):
        raise ValueError(f"the run dashboard binds only to a loopback address (127.0.0.1, ::1, localhost), not {host!r}: "
                         "it has no authentication of its own")
    token = secrets.token_urlsafe(16)
    server_class = type("DashboardServer", (ThreadingHTTPServer,),
                        {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET, "daemon_threads": True})
    server = server_class((host, port), make_handler(Path(run_dir), token, refresh_seconds))
    thread = threading.Thread(target=server.serve_forever, name="fedlm-dashboard", daemon=True)
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return f"http://{shown}:{bound_port}/{token}/", stop
