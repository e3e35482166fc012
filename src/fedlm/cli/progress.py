"""Rich progress bars for a simulation: rounds, clients in the round, local steps."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedlm.eval.metrics import EvalResult


class RichReporter:
    def __init__(self, console: Console, task_kind: str = "causal_lm") -> None:
        self.console, self.task_kind = console, task_kind
        self.progress = Progress(
            TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.rounds = self.clients = self.steps = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def run_started(self, rounds: int) -> None:
        self.rounds = self.progress.add_task("rounds", total=rounds, info="")
        self.clients = self.progress.add_task("clients", total=1, info="")
        self.steps = self.progress.add_task("steps", total=1, info="")

    def round_started(self, round: int, cohort_size: int) -> None:
        self.progress.reset(self.clients, total=max(cohort_size, 1), info=f"round {round}")

    def client_started(self, round: int, index: int, steps: int) -> None:
        self.progress.reset(self.steps, total=steps, info="")

    def step_done(self, step: int, loss: float) -> None:
        self.progress.update(self.steps, advance=1, info=f"loss {loss:.3f}")

    def client_done(self, round: int, index: int) -> None:
        self.progress.update(self.clients, advance=1)

    def evaluated(self, label: str, result: EvalResult) -> None:
        row = result.as_dict()
        if self.task_kind == "classify":
            self.console.print(f"[bold]{label}[/] held-out {headline(row, self.task_kind)} (loss {result.loss:.4f}, "
                               f"{result.tokens} samples)")
        elif "recall_at_10" in row:
            self.console.print(f"[bold]{label}[/] held-out {headline(row)} (MRR@10 {row['mrr_at_10']:.3f}, "
                               f"{row['queries']} queries)")
        else:
            self.console.print(f"[bold]{label}[/] held-out perplexity {result.perplexity:.2f} (loss {result.loss:.4f}, {result.tokens} tokens)")

    def round_done(self, record: dict[str, Any]) -> None:
        ev = record.get("eval")  # a FedBuff step between evaluations has none
        self.progress.update(self.rounds, advance=1, info=short_headline(ev, self.task_kind) if ev else "")
        loss = record.get("train_loss")
        updates = f"{record['accepted']}/{record['cohort']} updates" if "cohort" in record else f"{record.get('accepted', '?')} updates"
        self.console.print(
            f"round {record['round']}: v{record['version']}, {updates}, "
            f"train loss {loss if loss is None else round(loss, 4)}"
            + (f", held-out {headline(ev, self.task_kind)}" if ev else "") + f", {record['seconds']:.1f} s"
            + (f", epsilon {record['epsilon']:.3f}" if "epsilon" in record else "")
        )
        sites = record.get("sites")
        if sites and sites["worst_site"] is not None:
            self.console.print(f"  per site: mean perplexity {sites['mean_perplexity']:.2f}, worst {sites['worst_perplexity']:.2f} "
                               f"({escape(str(sites['worst_site']))})", markup=True)


def headline(row: dict[str, Any], task_kind: str = "causal_lm") -> str:
    """The figure a run is judged by: recall@10 (retrieval, rerank), accuracy (classify), perplexity (language models)."""
    if task_kind == "classify":
        return f"accuracy {row['accuracy']:.3f}"
    if "recall_at_10" in row:
        return f"recall@10 {row['recall_at_10']:.3f}"
    return f"perplexity {row['perplexity']:.2f}"


def short_headline(row: dict[str, Any], task_kind: str = "causal_lm") -> str:
    if task_kind == "classify":
        return f"acc {row['accuracy']:.3f}"
    return f"R@10 {row['recall_at_10']:.3f}" if "recall_at_10" in row else f"ppl {row['perplexity']:.2f}"
