"""The ``int8flow`` command line.

Every error a user can cause is printed on one line with its remedy, and the exit status says what
happened (0 done, 1 accuracy gate failed, 2 bad input, 3 a service unreachable, 4 anything else, with
the traceback in a file), so scripts and Airflow tasks can tell a bad setting from a transient
failure or a crash.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from int8flow.schemas.calibration_table import CalibrationTable
from int8flow.schemas.histogram_bins import DEFAULT_NUM_BINS, check_num_bins
from int8flow.schemas.run_config import SETTINGS, SETTINGS_BY_NAME, RunConfig
from int8flow.schemas.run_folder import CALIBRATION_JSON, HISTOGRAM_DIR, TENSORRT_CACHE
from int8flow.schemas.threshold_settings import THRESHOLD_SETTING_NAMES, ThresholdSettings
from int8flow.schemas.uri_redaction import redact_text, redact_uri
from int8flow.tasks.calibration.shard_demo import run_demo
from int8flow.tasks.calibration.table import rethreshold
from int8flow.tasks.cli.progress import StageProgress
from int8flow.tasks.distributed.cluster import ClusterUnavailableError
from int8flow.tasks.outputs.report import summary_rows
from int8flow.tasks.run.pipeline import run_pipeline
from int8flow.tasks.run.plan import load_plan
from int8flow.tasks.run.stages import GateFailedError, check_gate
from int8flow.tasks.tracking.mlflow_store import TrackingUnavailableError, runs_table
from int8flow.tasks.tracking.store_uri import default_tracking_uri

EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_CRASH = 4
UNWRAPPED_WIDTH = 240


def add_setting_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """One option per run setting, with the type, choices, default and help of ``int8flow.schemas.run_config``."""
    for name in names:
        setting = SETTINGS_BY_NAME[name]
        shown = "none" if setting.default in (None, "", ()) else setting.default
        if setting.kind is bool:
            flag = setting.flag if not setting.default else "--no-" + setting.flag[2:]
            action = "store_false" if setting.default else "store_true"
            parser.add_argument(flag, dest=name, action=action, help=setting.help)
        elif setting.positional:
            parser.add_argument(name, metavar=setting.metavar, help=setting.help)
        elif setting.kind is list:
            parser.add_argument(
                setting.flag,
                dest=name,
                nargs="+",
                action="extend",
                default=[],
                metavar=setting.metavar,
                help=f"{setting.help} (repeatable)",
            )
        else:
            parser.add_argument(
                setting.flag,
                dest=name,
                type=setting.kind,
                choices=setting.choices if setting.kind is str else None,
                default=setting.default,
                required=setting.default is None and not setting.nullable,
                metavar=setting.metavar,
                help=f"{setting.help} (default: {shown})",
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="int8flow", description="Distributed, reproducible post-training INT8 calibration of ONNX models."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="calibrate, quantize and validate a model on Dask; log to MLflow; register when the gate passes",
        description="Calibrate MODEL on --calib-data across Dask workers, build the INT8 model, validate it against "
        "FP32 on --val-data, apply the accuracy gate (moving the most sensitive nodes to FP32 if needed), write "
        "histograms/, calibration.json, calibration.cache, model.int8.onnx, report.json, report.md and plots/ "
        "to --out, and log everything to MLflow. Exit status: 0 done, 1 gate failed, 2 bad input, 3 a service "
        "(Dask scheduler, MLflow) is unreachable, 4 an unexpected error (traceback in a file).",
    )
    add_setting_options(run, [setting.name for setting in SETTINGS])

    again = commands.add_parser(
        "rethreshold",
        help="new thresholds from a run's partial histograms, no forward pass",
        description="Merge the partial-histogram Parquet files of HISTOGRAM_DIR and write calibration.json "
        "and calibration.cache (TensorRT) to --out.",
    )
    again.add_argument(
        "histogram_dir", metavar="HISTOGRAM_DIR", help="folder of shard=NNNNN.parquet files (path or fsspec URL)"
    )
    again.add_argument("--out", required=True, help="output directory (path or fsspec URL)")
    add_setting_options(again, THRESHOLD_SETTING_NAMES)

    runs = commands.add_parser(
        "runs",
        help="compare the MLflow runs of int8flow as a table",
        description="One row per calibration run, newest first: accuracy, drop, agreement, time, gate, registration.",
    )
    add_setting_options(runs, ["experiment", "tracking_uri"])

    demo = commands.add_parser(
        "shard-demo",
        help="calibrate generated activations three ways and show the thresholds are bit-identical",
        description="Calibrate generated activations as 1, 4 and 7 shards; write partial histograms, "
        "the calibration table and TensorRT cache to --out; print every method's thresholds.",
    )
    demo.add_argument("--out", default="shard-demo-out", help="output directory (default: %(default)s)")
    demo.add_argument("--examples", type=int, default=1024, help="calibration examples (default: %(default)s)")
    demo.add_argument(
        "--num-bins", type=int, default=DEFAULT_NUM_BINS, help="histogram bins, a power of two (default: %(default)s)"
    )
    return parser


def _print_table(console: Console, title: str, tables: dict[str, CalibrationTable], identical: dict[str, bool]) -> None:
    view = Table(title=title)
    view.add_column("tensor")
    for method in tables:
        view.add_column(f"{method}\n({'identical' if identical.get(method, True) else 'DIFFERENT'})", justify="right")
    records = {method: table.by_name() for method, table in tables.items()}
    for name in next(iter(records.values())):
        view.add_row(name, *(f"{records[method][name].threshold:.6g}" for method in tables))
    console.print(view)


def _run_demo(args: argparse.Namespace, console: Console) -> int:
    check_num_bins(args.num_bins)
    if args.examples < 7:
        raise ValueError(f"--examples {args.examples}: the demo splits the data into 7 shards; use at least 7")
    result = run_demo(args.out, args.examples, args.num_bins)
    splits = "; ".join(split.label for split in result.splits)
    _print_table(
        console, f"Thresholds from {args.examples} examples, split as: {splits}", result.tables, result.identical
    )
    console.print(
        f"partial histograms: {args.out}/{HISTOGRAM_DIR}/   calibration table: {args.out}/{CALIBRATION_JSON}, "
        f"{args.out}/{TENSORRT_CACHE}"
    )
    if not all(result.identical.values()):
        console.print("[red]thresholds differ between splits[/red]")
        return 1
    console.print("[green]every method gave bit-identical thresholds for every split[/green]")
    return 0


def _run_rethreshold(args: argparse.Namespace, console: Console) -> int:
    table = rethreshold(args.histogram_dir, ThresholdSettings.of(args), args.out)
    _print_table(console, f"{args.method} thresholds from {args.histogram_dir}", {args.method: table}, {})
    console.print(f"wrote {args.out}/{CALIBRATION_JSON} and {args.out}/{TENSORRT_CACHE}")
    return 0


def _run_run(args: argparse.Namespace, console: Console) -> int:
    config = RunConfig.from_mapping({setting.name: getattr(args, setting.name) for setting in SETTINGS})
    with StageProgress(console) as progress:
        result = run_pipeline(config, progress, progress.announce_cluster)
    view = Table(title=f"int8flow run: {redact_uri(config.model)}", show_header=False)
    for label, value in summary_rows(result.report, result.out):
        view.add_row(label, value)
    view.add_row("MLflow run", f"{result.mlflow_run_id} ({load_plan(result.out).tracking_uri})")
    if config.register:
        registered = (
            f"{config.register} version {result.registered_version}" if result.registered_version else "not registered"
        )
        view.add_row("registered", registered)
    console.print(view)
    if not result.passed:
        check_gate(result.out)
    return 0


def _run_runs(args: argparse.Namespace, console: Console) -> int:
    tracking_uri = args.tracking_uri or default_tracking_uri(os.getcwd())
    columns, rows = runs_table(tracking_uri, args.experiment or None)
    view = Table(title=f"int8flow runs in {tracking_uri}")
    for column in columns:
        view.add_column(column, no_wrap=True)
    for row in rows:
        view.add_row(*row)
    # Piped into a file or a log, a comparison table is read whole, not folded to 80 columns.
    (console if console.is_terminal else Console(width=UNWRAPPED_WIDTH)).print(view)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for noisy in ("distributed", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console = Console()
    handlers = {"run": _run_run, "runs": _run_runs, "shard-demo": _run_demo, "rethreshold": _run_rethreshold}
    try:
        return handlers[args.command](args, console)
    except GateFailedError as error:
        _say(f"int8flow: {error}")
        return EXIT_GATE_FAILED
    except (ClusterUnavailableError, TrackingUnavailableError) as error:
        _say(f"int8flow: error: {error}")
        return EXIT_UNAVAILABLE
    except (ValueError, OSError) as error:
        _say(f"int8flow: error: {error}")
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 - anything else is a crash: its own status, one line, a log file
        _say(
            f"int8flow: unexpected error: {type(error).__name__}: {_first_line(error)}; "
            f"the traceback is in {_save_traceback()}"
        )
        return EXIT_CRASH


def _say(message: str) -> None:
    """One line on stderr; errors quote the URIs they are about, never their credentials."""
    print(redact_text(message), file=sys.stderr)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _save_traceback() -> str:
    """The current exception's traceback in a file of its own, so the terminal keeps one line."""
    with tempfile.NamedTemporaryFile("w", prefix="int8flow-crash-", suffix=".txt", delete=False) as file:
        file.write(redact_text(traceback.format_exc()))
    return file.name


if __name__ == "__main__":
    sys.exit(main())
