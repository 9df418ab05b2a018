"""The ``int8flow`` command line.

Every error a user can cause is printed on one line with its remedy, and the exit status says what
happened (0 done, 2 bad input), so scripts and Airflow tasks can tell a bad setting from a crash.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from kernels.histogram import DEFAULT_NUM_BINS, check_num_bins
from kernels.thresholds import METHODS, ThresholdSettings
from schemas.calibration_table import CalibrationTable
from tasks.demo import run_demo
from tasks.threshold import rethreshold

EXIT_BAD_INPUT = 2


def _add_threshold_options(parser: argparse.ArgumentParser) -> None:
    defaults = ThresholdSettings()
    parser.add_argument("--method", choices=METHODS, default=defaults.method, help="threshold method (default: %(default)s)")
    parser.add_argument(
        "--num-quantized-bins",
        type=int,
        default=defaults.num_quantized_bins,
        help="entropy: quantization groups of a signed tensor; non-negative ones use N//2+1 (default: %(default)s)",
    )
    parser.add_argument(
        "--percentile", type=float, default=defaults.percentile, help="percentile of |x| (default: %(default)s)"
    )
    parser.add_argument(
        "--no-spike-fix",
        dest="spike_fix",
        action="store_false",
        help="entropy: keep spikes of repeated values (exact zeros, constants) in the histogram: the published search, unsafe on ReLU outputs",
    )
    parser.add_argument(
        "--unsigned-activations",
        action="store_true",
        help="choose thresholds of non-negative tensors for uint8 storage (255 steps over [0, t] instead of 127)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="int8flow", description="Distributed, reproducible post-training INT8 calibration of ONNX models."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="calibrate the bundled example three ways and show the thresholds are bit-identical",
        description="Calibrate generated activations as 1, 4 and 7 shards; write partial histograms, "
        "the calibration table and TensorRT cache to --out; print every method's thresholds.",
    )
    demo.add_argument("--out", default="demo-out", help="output directory (default: %(default)s)")
    demo.add_argument("--examples", type=int, default=1024, help="calibration examples (default: %(default)s)")
    demo.add_argument("--num-bins", type=int, default=DEFAULT_NUM_BINS, help="histogram bins, a power of two (default: %(default)s)")

    again = commands.add_parser(
        "rethreshold",
        help="new thresholds from a run's partial histograms, no forward pass",
        description="Merge the partial-histogram Parquet files of HISTOGRAM_DIR and write calibration.json "
        "and calibration.cache (TensorRT) to --out.",
    )
    again.add_argument("histogram_dir", metavar="HISTOGRAM_DIR", help="folder of shard=NNNNN.parquet files (path or fsspec URL)")
    again.add_argument("--out", required=True, help="output directory (path or fsspec URL)")
    _add_threshold_options(again)
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
    _print_table(console, f"Thresholds from {args.examples} examples, split as: {splits}", result.tables, result.identical)
    console.print(f"partial histograms: {args.out}/histograms/   calibration table: {args.out}/calibration.json, {args.out}/calibration.cache")
    if not all(result.identical.values()):
        console.print("[red]thresholds differ between splits[/red]")
        return 1
    console.print("[green]every method gave bit-identical thresholds for every split[/green]")
    return 0


def _run_rethreshold(args: argparse.Namespace, console: Console) -> int:
    settings = ThresholdSettings(
        args.method, args.num_quantized_bins, args.percentile, args.spike_fix, args.unsigned_activations
    )
    table = rethreshold(args.histogram_dir, settings, args.out)
    _print_table(console, f"{args.method} thresholds from {args.histogram_dir}", {args.method: table}, {})
    console.print(f"wrote {args.out}/calibration.json and {args.out}/calibration.cache")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    handlers = {"demo": _run_demo, "rethreshold": _run_rethreshold}
    try:
        return handlers[args.command](args, console)
    except (ValueError, OSError) as error:
        print(f"int8flow: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
