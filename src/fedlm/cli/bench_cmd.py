"""`fedlm bench`: measure parts of fedlm in-process on synthetic inputs.

Each subcommand lives in its own module and registers itself here.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Measure fedlm's parts on synthetic inputs (timings, memory).", no_args_is_help=True)

from fedlm.cli.bench_secagg import bench_secagg_command  # noqa: E402

app.command("secagg")(bench_secagg_command)

from fedlm.cli.bench_sim import bench_sim_command  # noqa: E402

app.command("sim")(bench_sim_command)
