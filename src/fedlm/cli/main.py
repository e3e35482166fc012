"""The `fedlm` entry point: every command group hangs off this Typer app."""

from __future__ import annotations

import warnings

import typer

from fedlm.cli import bench_cmd, certs_cmd, config_cmd, data_cmd, experiment_cmd, models_cmd, privacy_cmd
from fedlm.cli import rag_cmd
from fedlm.cli.export_cmd import export_command
from fedlm.cli.join_cmd import join_command
from fedlm.cli.report_cmd import report_command
from fedlm.cli.serve_cmd import serve_command
from fedlm.cli.simulate import simulate_command
from fedlm.config import settings_listing

app = typer.Typer(
    help="fedlm: federated LoRA fine-tuning of language models. Text stays with its clients; "
    "only adapter updates travel.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    # Plain help for every command (sub-apps inherit the root's mode): with Rich markup on, a TOML table
    # name such as [experiment] in a help text is read as a style tag and vanishes, and Typer's Rich
    # panels show a value type (<bool>) for flags that take none.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)
app.command("simulate", epilog="Settings (--set section.key=value, or a TOML table per section):\n\n"
            + "\n\n".join(settings_listing()))(simulate_command)
app.command("export")(export_command)
app.command("report")(report_command)
app.add_typer(config_cmd.app, name="config")
app.add_typer(models_cmd.app, name="models")
app.add_typer(privacy_cmd.app, name="privacy")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(experiment_cmd.app, name="experiment")
app.command("serve")(serve_command)
app.command("join")(join_command)
app.add_typer(certs_cmd.app, name="certs")
app.add_typer(data_cmd.app, name="data")
app.add_typer(rag_cmd.app, name="rag")


@app.callback()
def main() -> None:
    """Quiet the libraries underneath: their progress bars would drown ours."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
