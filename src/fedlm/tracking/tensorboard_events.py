"""TensorBoard event files for a run: the config as hparams, each round's numbers as scalars at step = round.

Written with `torch.utils.tensorboard.SummaryWriter` (which needs the tensorboard package).
Scalars are stored in double precision, so they read back equal to metrics.jsonl; tags join
nested keys with "/" ("eval/loss", "sites/<id>/loss") so TensorBoard groups them. A round's
"round" scalar is written last: its presence says the whole round is in the files.

A resumed run reads the event directory back (TensorBoard's own reader) to find the last
round it holds, writes a new event file into the same directory, logs the rounds it lacks
from metrics.jsonl and goes on. Each event file starts with a session-start marker at its
first round, the convention TensorBoard uses to drop what a crashed writer left past it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedlm.tracking.libraries import import_library
from fedlm.tracking.records import round_metrics
from fedlm.tracking.settings import TrackingSettings
from fedlm.tracking.state import TENSORBOARD_DIR

log = logging.getLogger(__name__)

# the hparams dashboard's metric columns: scalars every round record has
HPARAM_METRICS = ("eval/loss", "eval/perplexity", "train_loss")
EVENT_FILES = "events.out.tfevents.*"


def tensorboard_dir(settings: TrackingSettings, out: Path) -> Path:
    return Path(settings.tensorboard_dir) if settings.tensorboard_dir else Path(out) / TENSORBOARD_DIR


def last_logged_round(log_dir: Path) -> int:
    """The last round whose "round" scalar the event files hold (0 when none): read with TensorBoard's reader."""
    if not any(log_dir.glob(EVENT_FILES)):
        return 0
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={TENSORS: 0})
    events.Reload()
    if "round" not in events.Tags()["tensors"]:
        return 0
    return max(event.step for event in events.Tensors("round"))


class TensorBoardTracker:
    """One SummaryWriter, flushed after every round so a crash keeps what was logged."""

    name = "tensorboard"

    def __init__(self, writer: Any, log_dir: Path) -> None:
        self.writer, self.log_dir = writer, log_dir

    def log_round(self, record: dict[str, Any]) -> None:
        scalars = round_metrics(record, sep="/")
        marker = scalars.pop("round")
        for tag, value in [*scalars.items(), ("round", marker)]:
            self.writer.add_scalar(tag, value, record["round"], new_style=True, double_precision=True)
        self.writer.flush()

    def state(self) -> dict[str, Any]:
        return {"dir": str(self.log_dir.resolve())}

    def close(self, status: str, artifacts: tuple[Path, ...]) -> None:
        self.writer.close()  # the run's status and files stay in the run directory; event files hold numbers only

    def abandon(self) -> None:
        self.writer.close()


def write_hparams(writer: Any, params: dict[str, str]) -> None:
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(params, dict.fromkeys(HPARAM_METRICS, 0.0)):
        writer.file_writer.add_summary(summary)


def open_tensorboard(
    settings: TrackingSettings, out: Path, *, params: dict[str, str], history: list[dict[str, Any]], resume: bool,
    saved: dict[str, Any],
) -> TensorBoardTracker:
    """A writer on the run's event directory that has logged every round of `history` (on resume, those it lacked)."""
    import_library("tensorboard", "tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    log_dir = tensorboard_dir(settings, out)
    logged = last_logged_round(log_dir) if resume else 0
    if not resume and any(log_dir.glob(EVENT_FILES)):
        log.warning("tracking.tensorboard_dir %s already holds event files; TensorBoard shows them beside this run's. "
                    "Give each run its own directory", log_dir)
    writer = SummaryWriter(log_dir=str(log_dir), purge_step=logged + 1)
    tracker = TensorBoardTracker(writer, log_dir)
    try:
        if not logged:
            write_hparams(writer, params)
        for record in history:
            if record["round"] > logged:
                tracker.log_round(record)
    except BaseException:
        writer.close()
        raise
    return tracker
