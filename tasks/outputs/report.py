"""The run report of ``int8flow run``: ``report.json`` for machines, ``report.md`` for people.

The pipeline builds one plain dict (model, data, settings, accuracy, stage timings, cluster, gate
attempts, sensitivity, tensors, plot paths) and this module only renders it. Every section is
optional, because a run that fails at the gate or skips validation still deserves a report of what
it did. Both files are written atomically: a half-written report that still parses would misstate a
run that an audit relies on.

Formats are fixed here once so the JSON, the Markdown and the CLI summary agree: percentages and
accuracy drops with 2 decimals, durations and rates with 3 significant digits, thresholds ``%.6g``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from int8flow.schemas.run_folder import REPORT_JSON, REPORT_MD
from int8flow.tasks.outputs.atomic_files import atomic_write_text

STAGE_ORDER = ("observe", "reduce", "thresholds", "correct", "build", "validate", "gate", "track")
# The stages that turn images into a calibration table; their sum is the "calibration time".
CALIBRATION_STAGES = ("observe", "reduce", "thresholds", "correct")
TOP_ROWS = 10
MISSING = "—"


def write_report(out_dir: str, report: Mapping[str, Any]) -> tuple[str, str]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (path or fsspec URL); return both paths.

    JSON has no NaN: a NaN (e.g. the divergence of a method that computes none) is written as null,
    as in the calibration table; an infinity is an error, since no field of a report can hold one.
    """
    base = out_dir.rstrip("/")
    json_path = f"{base}/{REPORT_JSON}"
    md_path = f"{base}/{REPORT_MD}"
    text = json.dumps(_nan_to_none(report), sort_keys=True, indent=2, allow_nan=False) + "\n"
    atomic_write_text(json_path, text)
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path


def render_markdown(report: Mapping[str, Any], plot_image: Callable[[str], str] | None = None) -> str:
    """The Markdown summary: title first, then each section the report holds, in reading order.

    ``plot_image``: the plots as images whose source it gives for each path (``report_html`` embeds
    them); None: links to the files beside report.md."""
    sections = [
        _title(report),
        _run_line(report),
        _model_section(report.get("model")),
        _data_section(report.get("data")),
        _accuracy_section(report.get("accuracy"), report.get("gate"), report.get("settings") or {}),
        _gate_section(report.get("gate")),
        _correction_section((report.get("stages") or {}).get("correct")),
        _stages_section(report.get("stages")),
        _cluster_section(report.get("cluster")),
        _sensitivity_section(report.get("sensitivity")),
        _tensors_section(report.get("tensors")),
        _plots_section(report.get("plots"), plot_image),
        _settings_section(report.get("settings")),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def summary_rows(report: Mapping[str, Any], out_dir: str | None = None) -> list[tuple[str, str]]:
    """The few lines the CLI prints when a run ends; rows whose value the report lacks are left out."""
    accuracy = report.get("accuracy") or {}
    stages = report.get("stages") or {}
    observe = stages.get("observe") or {}
    rows = [
        ("FP32 top-1", _percent(accuracy.get("fp32_top1"))),
        ("INT8 top-1", _percent(accuracy.get("int8_top1"))),
        ("top-1 drop (points)", _points(accuracy.get("top1_drop"))),
        ("FP32 top-5", _percent(accuracy.get("fp32_top5"))),
        ("INT8 top-5", _percent(accuracy.get("int8_top5"))),
        ("top-5 drop (points)", _points(accuracy.get("top5_drop"))),
        ("top-1 agreement", _percent(accuracy.get("agreement_top1"))),
        ("INT8 top-1 deployed", _percent(accuracy.get("deploy_int8_top1"))),
        ("deployed top-1 agreement", _percent(accuracy.get("deploy_agreement_top1"))),
        ("gate", _gate_verdict(report.get("gate"))),
        ("calibration time (s)", _significant(_calibration_seconds(stages))),
        ("observe throughput (examples/s)", _significant(observe.get("examples_per_second"))),
        ("output", out_dir),
    ]
    return [(label, value) for label, value in rows if value is not None]


def divergence_rank(name: str, divergence: float | None) -> tuple[bool, float, str]:
    """Sort key: largest value first, ties by name, tensors without one (None or NaN) last."""
    missing = divergence is None or math.isnan(divergence)
    return (missing, 0.0 if missing else -divergence, name)


def ranking_figure(methods: Iterable[str]) -> str:
    """What tensors are ranked by: an entropy table by its KL divergences, the figure its method
    minimised; any other (percentile and naive minimise nothing, auto mixes methods) by the relative
    quantization error, which every threshold has."""
    return "divergence" if set(methods) == {"entropy"} else "error"


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value


def _title(report: Mapping[str, Any]) -> str:
    model = report.get("model") or {}
    name = model.get("registered_name")
    if name is None and model.get("uri"):
        name = str(model["uri"]).rstrip("/").rpartition("/")[2]
    if name and model.get("registered_version") is not None:
        name = f"{name} v{model['registered_version']}"
    return f"# INT8 calibration report: {name or 'unnamed model'}"


def _run_line(report: Mapping[str, Any]) -> str:
    return ", ".join(
        _present(
            report,
            [
                ("int8flow_version", "int8flow {}".format),
                ("started", "started {}".format),
                ("finished", "finished {}".format),
            ],
        )
    )


def _model_section(model: Mapping[str, Any] | None) -> str:
    if not model:
        return ""
    lines = _present(
        model,
        [("uri", lambda uri: f"- source: {_code(uri)}"), ("sha256", lambda sha256: f"- SHA-256: {_code(sha256)}")],
    )
    if model.get("registered_name") is not None:
        version = model.get("registered_version")
        suffix = "" if version is None else f" version {version}"
        lines.append(f"- registered as {_code(model['registered_name'])}{suffix}")
    return _section("Model", "\n".join(lines))


def _data_section(data: Mapping[str, Any] | None) -> str:
    splits = {name: split for name, split in (data or {}).items() if split}
    if not splits:
        return ""
    fields = (
        ("source", "uri", _code),
        ("fingerprint", "fingerprint", _code),
        ("examples", "examples", _count),
        ("skipped images", "skipped_images", _count),
    )
    rows = [
        [label, *(MISSING if split.get(key) is None else render(split[key]) for split in splits.values())]
        for label, key, render in fields
        if any(split.get(key) is not None for split in splits.values())
    ]
    return _section("Data", _table(["", *splits], rows, "l" * (len(splits) + 1)))


def _accuracy_section(
    accuracy: Mapping[str, Any] | None, gate: Mapping[str, Any] | None, settings: Mapping[str, Any]
) -> str:
    if not accuracy:
        return ""
    runtime = (gate or {}).get("deploy_runtime")
    deployed = accuracy.get("deploy_int8_top1") is not None
    rows = [
        [
            label,
            _cell(_percent(accuracy.get(f"fp32_{key}"))),
            _cell(_percent(accuracy.get(f"int8_{key}"))),
            _cell(_points(accuracy.get(f"{key}_drop"))),
            *(
                [
                    _cell(_percent(accuracy.get(f"deploy_int8_{key}"))),
                    _cell(_points(accuracy.get(f"deploy_{key}_drop"))),
                ]
                if deployed
                else []
            ),
        ]
        for label, key in (("top-1", "top1"), ("top-5", "top5"))
        if any(accuracy.get(field) is not None for field in (f"fp32_{key}", f"int8_{key}", f"{key}_drop"))
    ]
    headers = ["", "FP32", "INT8", "drop (points)"]
    if deployed:
        headers += [f"INT8 in {runtime}", f"drop in {runtime}"]
    parts = [_table(headers, rows, "l" + "r" * (len(headers) - 1))] if rows else []
    agreement = _percent(accuracy.get("agreement_top1"))
    if agreement is not None:
        parts.append(f"Top-1 agreement of FP32 and INT8: {agreement}.")
    deployed_agreement = _percent(accuracy.get("deploy_agreement_top1"))
    if deployed_agreement is not None:
        parts.append(
            f"INT8 is int8flow's exact-integer executor; `model.int8.onnx` in {runtime} is what users deploy"
            f"{_storage_words(settings)}. Their top-1 agreement: {deployed_agreement}."
        )
    if accuracy.get("examples") is not None:
        parts.append(f"Validation examples: {_count(accuracy['examples'])}.")
    return _section("Accuracy", "\n\n".join(parts))


def _storage_words(settings: Mapping[str, Any]) -> str:
    """How the export stores activations, the choice that decides whether onnxruntime runs it in integers."""
    if "signed_storage" not in settings:
        return ""
    signed = "uint8 at zero point 128" if settings["signed_storage"] == "uint8" else "int8 at zero point 0"
    unsigned = "non-negative ones as uint8" if settings.get("unsigned_activations") else "every tensor signed"
    return f" (signed activations stored as {signed}, {unsigned})"


def _gate_section(gate: Mapping[str, Any] | None) -> str:
    if not gate:
        return ""
    parts = []
    verdict = _gate_verdict(gate)
    if verdict is not None:
        limit = _points(gate.get("max_top1_drop"))
        decided = (
            f" The drop compared is {gate['decided_by']}'s, the worse of the two." if gate.get("decided_by") else ""
        )
        parts.append(f"**{verdict}**" + ("" if limit is None else f": maximum top-1 drop {limit} points.{decided}"))
    attempts = gate.get("attempts") or []
    if attempts:
        rows = [
            [
                str(number),
                _excluded(attempt.get("excluded")),
                _cell(_percent(attempt.get("int8_top1"))),
                _cell(_percent(attempt.get("deploy_int8_top1"))),
                _cell(_points(attempt.get("top1_drop"))),
                _cell(_passed(attempt.get("passed"))),
            ]
            for number, attempt in enumerate(attempts, start=1)
        ]
        headers = ["attempt", "kept in FP32", "INT8 top-1", "deployed top-1", "top-1 drop", "result"]
        parts.append(_table(headers, rows, "rlrrrl"))
    return _section("Gate", "\n\n".join(parts))


def _correction_section(correct: Mapping[str, Any] | None) -> str:
    """How far quantization had moved the layers' means: what bias correction took back."""
    if not correct or not correct.get("layers"):
        return ""
    return _section(
        "Bias correction",
        f"The biases of {_count(correct['layers'])} layers were shifted by FP32's mean output minus INT8's over "
        f"{_count(correct.get('examples'))} calibration examples; the largest shift, "
        f"{_significant(correct.get('largest_shift'))}, is in {_code(correct.get('largest_shift_layer'))}.",
    )


def _stages_section(stages: Mapping[str, Mapping[str, Any]] | None) -> str:
    if not stages:
        return ""
    names = [name for name in STAGE_ORDER if name in stages] + [name for name in stages if name not in STAGE_ORDER]
    rows = []
    for name in names:
        stage = stages[name] or {}
        rows.append(
            [
                name,
                _cell(_significant(stage.get("seconds"))),
                _cell(_count(stage.get("examples"))),
                _cell(_significant(stage.get("examples_per_second"))),
            ]
        )
    seconds = [stage["seconds"] for stage in stages.values() if stage and stage.get("seconds") is not None]
    if seconds:
        rows.append(["total", _significant(math.fsum(seconds)), "", ""])
    return _section("Stage timings", _table(["stage", "seconds", "examples", "examples/s"], rows, "lrrr"))


EXTERNAL_CLUSTER = "external"


def _cluster_section(cluster: Mapping[str, Any] | None) -> str:
    """An external cluster's scheduler and dashboard; an embedded one's kind only, since its
    dashboard closed with the run and a link there would lead nowhere."""
    if not cluster:
        return ""
    kind = cluster.get("kind")
    where = (
        [("scheduler", lambda scheduler: f"scheduler {_code(scheduler)}"), ("dashboard", "dashboard <{}>".format)]
        if kind in (None, EXTERNAL_CLUSTER)
        else [("kind", "an embedded {} (closed with the run)".format)]
    )
    parts = _present(
        cluster,
        [("workers", "{} workers".format), ("shards", "{} shards".format), ("device", "device {}".format), *where],
    )
    return _section("Cluster", ", ".join(parts) + ".") if parts else ""


def _present(values: Mapping[str, Any], parts: Sequence[tuple[str, Callable[[Any], str]]]) -> list[str]:
    """Each part rendered from its value, for the values the report holds: sections stay optional."""
    return [render(values[key]) for key, render in parts if values.get(key) is not None]


def _sensitivity_section(sensitivity: Sequence[Mapping[str, Any]] | None) -> str:
    if not sensitivity:
        return ""
    rows = [
        [str(rank), _code(entry.get("node")), _cell(entry.get("op_type")), _cell(_statistic(entry.get("error")))]
        for rank, entry in enumerate(sensitivity[:TOP_ROWS], start=1)
    ]
    heading = f"Most sensitive nodes ({len(rows)} of {len(sensitivity)})"
    return _section(heading, _table(["rank", "node", "op type", "error"], rows, "rllr"))


def _tensors_section(tensors: Sequence[Mapping[str, Any]] | None) -> str:
    if not tensors:
        return ""
    figure = ranking_figure(tensor.get("method", "") for tensor in tensors)
    ranked = sorted(tensors, key=lambda tensor: divergence_rank(tensor["name"], tensor.get(figure)))
    rows = [
        [
            _code(tensor["name"]),
            _cell(tensor.get("method")),
            _cell(_threshold(tensor.get("threshold"))),
            _cell(_statistic(tensor.get("divergence"))),
            _cell(_statistic(tensor.get("error"))),
            _cell(_yes_no(tensor.get("signed"))),
        ]
        for tensor in ranked[:TOP_ROWS]
    ]
    title = "Largest divergence" if figure == "divergence" else "Largest quantization error"
    columns = ["tensor", "method", "threshold", "divergence", "error", "signed"]
    return _section(f"{title} ({len(rows)} of {len(tensors)} tensors)", _table(columns, rows, "llrrrl"))


def _plots_section(plots: Sequence[str] | None, plot_image: Callable[[str], str] | None) -> str:
    if not plots:
        return ""
    if plot_image is not None:
        return _section("Plots", "\n\n".join(f"![{path}]({plot_image(path)})" for path in plots))
    return _section("Plots", "\n".join(f"- [{path}]({path})" for path in plots))


def _settings_section(settings: Mapping[str, Any] | None) -> str:
    if not settings:
        return ""
    rows = [[_code(name), _code(_setting(settings[name]))] for name in sorted(settings)]
    return _section("Settings", _table(["setting", "value"], rows, "ll"))


def _gate_verdict(gate: Mapping[str, Any] | None) -> str | None:
    if not gate or gate.get("passed") is None:
        return None
    if "max_top1_drop" in gate and gate["max_top1_drop"] is None:
        return "not set (validated only)"  # "passed" would claim a check nobody asked for
    attempts = len(gate.get("attempts") or [])
    verdict = _passed(gate["passed"])
    return verdict if attempts == 0 else f"{verdict} ({attempts} attempt{'s' if attempts != 1 else ''})"


def _calibration_seconds(stages: Mapping[str, Mapping[str, Any]]) -> float | None:
    seconds = [
        stages[name]["seconds"]
        for name in CALIBRATION_STAGES
        if stages.get(name) and stages[name].get("seconds") is not None
    ]
    return math.fsum(seconds) if seconds else None


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value:z.2f}%"


def _points(value: float | None) -> str | None:
    return None if value is None else f"{value:z.2f}"


def _significant(value: float | None) -> str | None:
    """Seconds and rates: three significant digits, but whole numbers from 100 up ("0.500", "1234")."""
    if value is None:
        return None
    return f"{value:z.0f}" if abs(value) >= 100 else f"{value:z#.3g}"


def _count(value: int | None) -> str | None:
    return None if value is None else f"{value:,}"


def _threshold(value: float | None) -> str | None:
    return None if value is None else f"{value:.6g}"


def _statistic(value: float | None) -> str | None:
    """Divergences and errors: 4 significant digits; None and NaN (none computed) render as missing."""
    return None if value is None or math.isnan(value) else f"{value:.4g}"


def _passed(value: bool | None) -> str | None:
    return None if value is None else ("passed" if value else "failed")


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _excluded(nodes: Iterable[str] | None) -> str:
    names = list(nodes or [])
    return ", ".join(_code(name) for name in names) if names else "none"


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _cell(text: str | None) -> str:
    return MISSING if text is None else _escape(str(text))


def _code(value: Any) -> str:
    """A code span that survives any name: backticks widen the fence, pipes are table-escaped."""
    text = _escape(str(value))
    if "`" in text:
        return f"`` {text} ``"
    return f"`{text}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    rules = {"l": "---", "r": "---:"}
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(rules[side] for side in align) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def _section(heading: str, body: str) -> str:
    """A heading over its body; nothing at all when the report held nothing to put under it."""
    return f"## {heading}\n\n{body}" if body else ""
