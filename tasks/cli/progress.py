"""Progress bars of ``int8flow run``: one per Dask fan-out, shards done of total and examples/s.

The pipeline reports through a plain callback (``int8flow.tasks.distributed.fanout.ProgressSink``), so Airflow tasks can
log the same events as lines while the terminal shows bars.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from int8flow.schemas.stage_records import ClusterRecord


class StageProgress:
    """A ProgressSink drawing rich bars; a stage that starts again (a gate attempt) gets a new bar."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("shards  {task.fields[examples]:>7} examples  {task.fields[rate]:>9} ex/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}
        self.starts: dict[str, int] = {}

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
            self.starts[stage] = self.starts.get(stage, 0) + 1
            label = stage if self.starts[stage] == 1 else f"{stage} #{self.starts[stage]}"
            self.tasks[stage] = self.bars.add_task(label, total=total, examples=0, rate=rate)
            return
        self.bars.update(self.tasks[stage], completed=done, examples=examples, rate=rate)

    def announce_cluster(self, info: ClusterRecord) -> None:
        self.console.print(
            f"Dask {info.kind}: {info.workers} worker(s) at {info.scheduler}; dashboard: {info.dashboard or 'none'}",
            soft_wrap=True,
        )
