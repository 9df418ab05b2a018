"""What the gate tells a watcher while it works: every step that takes long reports what it does and
how far it is, through the run's ProgressSink (the CLI's bars, the Airflow task's log lines).

Real parts: the committed Fashion-MNIST ResNet, Debian's Fashion-MNIST, an embedded Dask cluster of
two worker processes."""

from __future__ import annotations

import pytest
from conftest import DEMO_MODEL

from int8flow.schemas.run_config import RunConfig
from int8flow.tasks.data import fashion_mnist_folder
from int8flow.tasks.distributed.cluster import dask_client
from int8flow.tasks.distributed.fanout import job_unit
from int8flow.tasks.run import stages
from int8flow.tasks.run.plan import plan_run

SHARDS = 2
CANDIDATES = 14  # the demo's quantizable nodes: 9 Conv, 3 Add, GlobalAveragePool, Gemm
BUDGET = 2


class Recorder:
    """A ProgressSink that keeps (stage, done, total) of every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int, examples: int, seconds: float) -> None:
        self.calls.append((stage, done, total))


def steps(stage: str, total: int) -> list[tuple[str, int, int]]:
    return [(stage, done, total) for done in range(total + 1)]


@pytest.fixture(scope="module")
def failing_gate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recorder, stages.GateRecord]:
    """A small run up to its validation, then a gate no attempt can pass, its progress recorded."""
    folder = tmp_path_factory.mktemp("gate")
    out = str(folder / "out")
    config = RunConfig.from_mapping(
        {
            "model": str(DEMO_MODEL),
            "calib_data": f"{fashion_mnist_folder()}#train",
            "val_data": f"{fashion_mnist_folder()}#t10k",
            "preprocess": "mnist",
            "calib_examples": 64,
            "val_examples": 64,
            "sensitivity_examples": 16,
            "batch_size": 32,
            "bias_correction": False,
            "max_top1_drop": -1,  # no INT8 model gains a point over FP32 here
            "fallback_budget": BUDGET,
            "shards": SHARDS,
            "workers": 2,
            "out": out,
            "tracking_uri": f"sqlite:///{folder}/mlflow.db",
        }
    )
    plan_run(config)
    recorder = Recorder()
    with dask_client(workers=2) as (client, _):
        stages.observe(out, client, config=config)
        stages.thresholds(out)
        stages.build(out, config)
        stages.validate(out, client, config=config)
        record = stages.gate(out, client, recorder, config)
    return recorder, record


def test_the_gate_reports_nodes_ranked_then_each_attempts_shards_validated(
    failing_gate: tuple[Recorder, stages.GateRecord],
) -> None:
    recorder, record = failing_gate
    assert not record.passed and len(record.attempts) == 1 + BUDGET
    assert recorder.calls == [
        *steps("gate: sensitivity", CANDIDATES),
        *steps("gate: attempt 2/3 validate", SHARDS),
        *steps("gate: attempt 3/3 validate", SHARDS),
    ]


def test_progress_counts_nodes_in_the_ranking_and_shards_elsewhere() -> None:
    assert job_unit("gate: sensitivity") == "nodes"
    assert job_unit("gate: attempt 2/3 validate") == job_unit("observe") == "shards"
