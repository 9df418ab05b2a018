"""Progress bars of ``int8flow run``: one per Dask fan-out, jobs done of total and examples/s.

The pipeline reports through a plain callback (``int8flow.tasks.distributed.fanout.ProgressSink``), so Airflow tasks can
log the same events as lines while the terminal shows bars.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from int8flow.schemas.stage_records import ClusterRecord
from int8flow.tasks.distributed.fanout import job_unit


class StageProgress:
    """A ProgressSink drawing rich bars, one per step (each gate attempt is a step of its own), each
    counting what its jobs are (``fanout.job_unit``: shards, or the sensitivity ranking's nodes)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(bar_width=12),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]:<6} {task.fields[examples]:>6} examples {task.fields[rate]:>6}/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> StageProgress:
        self.bars.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.bars.__exit__(kind, error, trace)

    def __call__(self, stage: str, done: int, total: int, examples: int, seconds: float) -> None:
        rate = f"{examples / seconds:.1f}" if seconds > 0 else "-"
        if done == 0:
            self.tasks[stage] = self.bars.add_task(stage, total=total, examples=0, rate=rate, unit=job_unit(stage))
            return
        self.bars.update(self.tasks[stage], completed=done, examples=examples, rate=rate)

    def announce_cluster(self, info: ClusterRecord) -> None:
        self.console.print(
            f"Dask {info.kind}: {info.workers} worker(s) at {info.scheduler}; dashboard: {info.dashboard or 'none'}",
            soft_wrap=True,
        )
