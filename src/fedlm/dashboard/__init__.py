"""The live dashboard: the run report's views, refreshed in place while rounds run.

One page, two servers:
- `fedlm simulate --dashboard` serves a run directory (local.py: stdlib HTTP on loopback,
  at a random unguessable path), re-reading metrics.jsonl on every request;
- `fedlm serve` serves /dashboard from the coordinator's store, behind its mutual TLS and
  for the operators in server.toml only, with the model registry's "make production"
  (fedlm.service.dashboard_routes).

The page (page.py) is fedlm.report's sections with one small inline script that fetches the
same URL again every few seconds and swaps the page's body: nothing is fetched from
anywhere else, so it works on a machine without a network, and a Content-Security-Policy
allows exactly that script and same-origin requests.
"""
