"""The dashboard's HTML: the run report's sections, a live-state line, and the script that refreshes them in place.

Pure: records, config and summary in, one HTML document out (fedlm.report's run_sections and
html_page, unchanged). The inline script (REFRESH_SCRIPT) is the same bytes on every page, so
the Content-Security-Policy can name it by its hash and refuse every other script; it
- every `refresh_seconds` (a <meta> in the head) fetches the page's own URL again (no-store,
  header X-Fedlm-Refresh: 1), parses it with DOMParser and swaps document.body's children:
  no reload, the scroll position and the open <details> kept; scripts in the fetched page
  never run (DOMParser marks them inert), and the page holds none in its body anyway;
- copies the round the page shows (#dashboard-state's data-round) to document.body.dataset.round
  and counts refreshes in document.body.dataset.refreshes, for a reader's tools and the browser tests;
- says in #dashboard-status when a refresh failed (the server stopped, a refusal) and keeps
  the last page it had;
- sends a "make production" button's version (`data-production-version`, inside an element
  with `data-action`, the URL to POST to) as JSON with the header X-Fedlm-Operator-Action: 1,
  after a confirm(), and shows the answer in #registry-message.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from fedlm.report.page import anchor_of, html_page, section
from fedlm.report.records import round_of
from fedlm.report.run_report import run_sections, subtitle_of

REFRESH_HEADER = "X-Fedlm-Refresh"  # sent by the script on each background refresh
OPERATOR_HEADER = "X-Fedlm-Operator-Action"  # sent by the script with a registry change (a cross-site form cannot set it)

REFRESH_SCRIPT = """
(() => {
  "use strict";
  const seconds = Number(document.querySelector('meta[name="fedlm-refresh-seconds"]').content);
  let refreshes = 0, message = "", updated = "page load", timer;

  function showState() {
    const state = document.getElementById("dashboard-state");
    document.body.dataset.round = state ? state.dataset.round : "";
    document.body.dataset.refreshes = String(refreshes);
    const note = document.getElementById("registry-message");
    if (note) note.textContent = message;
  }

  function setStatus(text) {
    const status = document.getElementById("dashboard-status");
    if (status) status.textContent = text;
  }

  async function reason(answer) {
    const text = await answer.text();
    try {
      const detail = JSON.parse(text).detail;
      if (detail) return typeof detail === "string" ? detail : JSON.stringify(detail);
    } catch (_) { /* not JSON: the status and the start of the text say enough */ }
    return `HTTP ${answer.status}` + (text ? `: ${text.slice(0, 200)}` : "");
  }

  function swap(fresh) {
    const x = window.scrollX, y = window.scrollY;
    const open = [...document.querySelectorAll("details")].map(d => d.open);
    document.title = fresh.title;
    document.body.replaceChildren(...fresh.body.childNodes);
    document.querySelectorAll("details").forEach((d, i) => { if (i < open.length) d.open = open[i]; });
    window.scrollTo(x, y);
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const answer = await fetch(location.href, {cache: "no-store", credentials: "same-origin",
                                                 headers: {"X-Fedlm-Refresh": "1"}});
      if (!answer.ok) throw new Error(await reason(answer));
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
      refreshes += 1;
      updated = new Date().toLocaleTimeString();
      swap(fresh);
      setStatus(`live: updated ${updated}, every ${seconds} s`);
    } catch (err) {
      setStatus(`not updated since ${updated}: ${err.message}`);
    } finally {
      showState();
      timer = setTimeout(refresh, seconds * 1000);
    }
  }

  async function makeProduction(button) {
    const panel = button.closest("[data-action]");
    const version = Number(button.dataset.productionVersion);
    if (!panel || !window.confirm(`Make version ${version} the production model?`)) return;
    button.disabled = true;
    try {
      const answer = await fetch(panel.dataset.action, {
        method: "POST", cache: "no-store", credentials: "same-origin", body: JSON.stringify({version}),
        headers: {"Content-Type": "application/json", "X-Fedlm-Operator-Action": "1"}});
      message = answer.ok ? `production is now version ${version}` : `refused: ${await reason(answer)}`;
    } catch (err) {
      message = `not sent: ${err.message}`;
    }
    await refresh();
  }

  document.addEventListener("click", event => {
    const button = event.target.closest ? event.target.closest("button[data-production-version]") : null;
    if (button) makeProduction(button);
  });
  document.addEventListener("DOMContentLoaded", () => {
    showState();
    timer = setTimeout(refresh, seconds * 1000);
  });
})();
"""
SCRIPT_HASH = base64.b64encode(hashlib.sha256(REFRESH_SCRIPT.encode()).digest()).decode()
# Only the script above runs; requests go to this origin only; no frame may hold the page (clickjacking).
CONTENT_SECURITY_POLICY = (f"default-src 'none'; script-src 'sha256-{SCRIPT_HASH}'; style-src 'unsafe-inline'; "
                           "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
HEAD_END = "</head>"


def last_round(records: Sequence[Mapping[str, Any]]) -> float:
    """The last round the lines hold (0 before the first)."""
    return max((round_of(dict(r), i) for i, r in enumerate(records)), default=0)


def state_line(records: Sequence[Mapping[str, Any]], refresh_seconds: float) -> str:
    """The line under the title: the round shown (data-round) and whether the page is live."""
    round_shown = last_round(records)
    text = (f"round {round_shown:g} is the last one finished" if records
            else "no round has finished yet: the charts appear after the first")
    return (f'<p class="note" id="dashboard-state" data-round="{round_shown:g}">{escape(text)} · '
            f'<span id="dashboard-status">live: refreshes every {refresh_seconds:g} s</span></p>')


def with_head(page: str, extra: str) -> str:
    """`page` with `extra` markup at the end of its <head> (html_page escapes its title, so the first
    </head> is the real one)."""
    head, found, rest = page.partition(HEAD_END)
    if not found:
        raise ValueError("the page has no </head>")
    return head + extra + found + rest


def head_markup(refresh_seconds: float) -> str:
    return (f'<meta name="fedlm-refresh-seconds" content="{refresh_seconds:g}">'
            f'<link rel="icon" href="data:,"><script>{REFRESH_SCRIPT}</script>')


def dashboard_page(
    records: Sequence[Mapping[str, Any]], config: Mapping[str, Any], summary: Mapping[str, Any] | None, *,
    title: str, refresh_seconds: float, controls: Sequence[tuple[str, str]] = (), current_note: str = "latest",
) -> str:
    """The whole dashboard document: `controls` ((title, HTML) sections, e.g. the registry) first, then the report's
    sections; the versions table marks summary["version"] (the last version when absent) with `current_note`."""
    if not (math.isfinite(refresh_seconds) and refresh_seconds > 0):
        raise ValueError(f"refresh_seconds must be a finite number > 0, got {refresh_seconds}")
    sections = [*controls, *run_sections(records, config, summary, current_note=current_note)]
    body = state_line(records, refresh_seconds) + "".join(
        section(name, html, anchor=anchor_of(name)) for name, html in sections)
    page = html_page(title, body, subtitle=subtitle_of(records, config, summary), sections=[name for name, _ in sections])
    return with_head(page, head_markup(refresh_seconds))
