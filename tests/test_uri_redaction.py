"""Credentials in URIs never leave the process: not in run files, reports, MLflow, the terminal or logs.

The end-to-end test serves the demo model and Parquet data over real HTTP that demands Basic auth
and a signed query, runs the released CLI on them, checks the credentials were sent with every
request, then greps every file the run and its MLflow store wrote, and both output streams.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import DEMO_MODEL, flags
from http_files import ServedFiles, serving
from mlflow import MlflowClient
from test_bad_input import parquet_data

from int8flow.schemas.run_config import RunConfig, RunConfigError
from int8flow.schemas.uri_redaction import REDACTED, redact_text, redact_uri
from int8flow.tasks.run.plan import OutputDirectoryError, load_plan, working_plan

SCRIPT = str(Path(sys.executable).parent / "int8flow")
PASSWORD = "s3cr3t-pass"
TOKENS = ("s3cr3t-token-monday", "s3cr3t-token-tuesday")  # a signed URL, rotated between two runs
SECRET_MARK = "s3cr3t"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://alice:s3cr3t@host/m.onnx", f"http://{REDACTED}@host/m.onnx"),
        ("https://bob@host:8443/m.onnx#x", f"https://{REDACTED}@host:8443/m.onnx#x"),
        ("http://a:p@ss@h:99/x#train", f"http://{REDACTED}@h:99/x#train"),
        (
            "https://acct.blob.core.windows.net/c/m.onnx?sv=2024-01-01&sp=r&sig=abc%2Bdef",
            f"https://acct.blob.core.windows.net/c/m.onnx?sv=2024-01-01&sp=r&sig={REDACTED}",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA&X-Amz-Expires=60&X-Amz-Signature=ff",
            f"https://b.s3.amazonaws.com/k?X-Amz-Credential={REDACTED}&X-Amz-Expires=60&X-Amz-Signature={REDACTED}",
        ),
        ("https://h/x?X-Goog-Signature=1&page=2", f"https://h/x?X-Goog-Signature={REDACTED}&page=2"),
        ("https://h/x?access_token=1&api_key=2", f"https://h/x?access_token={REDACTED}&api_key={REDACTED}"),
        ("http://[::1/broken", REDACTED),
    ],
)
def test_credentials_are_replaced_and_the_rest_of_the_uri_kept(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


@pytest.mark.parametrize(
    "uri", ["/data/model.onnx", "models:/resnet@production", "s3://bucket/k.onnx", "http://h/x?q=1"]
)
def test_uris_without_credentials_are_left_alone(uri: str) -> None:
    assert redact_uri(uri) == uri


def test_every_url_in_a_message_is_redacted() -> None:
    message = 'error: --calib-data "http://u:pw@h/x.parquet": no such file; model https://h/m?sig=abc (see http://ok/x)'
    assert redact_text(message) == (
        f'error: --calib-data "http://{REDACTED}@h/x.parquet": no such file; model https://h/m?sig={REDACTED} '
        "(see http://ok/x)"
    )


@pytest.mark.parametrize("name", ["out", "scheduler"])
def test_settings_shown_everywhere_refuse_credentials(name: str) -> None:
    with pytest.raises(RunConfigError, match=rf"--{name}=s3://{REDACTED}@bucket/x: carries credentials") as error:
        RunConfig.from_mapping({"model": "m.onnx", "calib_data": "d", name: "s3://key:s3cr3t@bucket/x"})
    assert SECRET_MARK not in str(error.value)


def test_mlflow_params_are_redacted_and_secrets_map_them_back() -> None:
    config = RunConfig.from_mapping(
        {
            "model": "http://alice:s3cr3t@h/m.onnx",
            "calib_data": "https://h/d.parquet?sig=s3cr3t",
            "tracking_uri": "https://bob:s3cr3t@mlflow.example",
        }
    )
    params, operational = config.mlflow_params(), config.operational_texts()
    assert params["model"] == f"http://{REDACTED}@h/m.onnx"
    assert params["calib_data"] == f"https://h/d.parquet?sig={REDACTED}"
    assert operational["tracking_uri"] == f"https://{REDACTED}@mlflow.example"  # a tag
    assert not any(SECRET_MARK in value for value in [*params.values(), *operational.values()])
    assert config.secrets() == {
        params["model"]: config.model,
        params["calib_data"]: config.calib_data,
        operational["tracking_uri"]: config.tracking_uri,
    }


def all_text_under(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("site")
    shutil.copy(DEMO_MODEL, root / "model.onnx")
    parquet_data(root / "calib.parquet", 96)
    parquet_data(root / "val.parquet", 64)
    served = ServedFiles(root, "alice", PASSWORD, "sig", TOKENS)
    with serving(served) as host:
        yield served, host


def run_cli(host: str, token: str, work: Path) -> subprocess.CompletedProcess[str]:
    base = f"http://alice:{PASSWORD}@{host}"
    settings = {"preprocess": "mnist", "calib_examples": 96, "batch_size": 32, "workers": 1, "shards": 2}
    return subprocess.run(
        [
            SCRIPT, "run", f"{base}/model.onnx?sig={token}", f"--calib-data={base}/calib.parquet?sig={token}",
            f"--val-data={base}/val.parquet?sig={token}", *flags(settings), "--max-top1-drop=100",
            "--register=redaction-int8", f"--out={work / 'out'}", f"--tracking-uri=sqlite:///{work / 'mlflow.db'}",
        ],
        capture_output=True, text=True, timeout=600, cwd=work,
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_run(site, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    served, host = site
    work = tmp_path_factory.mktemp("work")
    served.requests.clear()
    done = run_cli(host, TOKENS[0], work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work, done, list(served.requests)


def test_a_run_from_urls_with_credentials_uses_them_and_writes_them_nowhere(site, first_run) -> None:  # type: ignore[no-untyped-def]
    _, host = site
    work, done, requests = first_run
    assert requests and all(status in (200, 206) for _, status in requests), requests
    assert {path for path, _ in requests} == {"/model.onnx", "/calib.parquet", "/val.parquet"}

    leaks = [name for name, data in all_text_under(work).items() if SECRET_MARK.encode() in data]
    assert not leaks, f"credentials written to {leaks}"
    assert SECRET_MARK not in done.stdout + done.stderr
    plan = json.loads((work / "out" / "run.json").read_text())
    assert plan["model_uri"] == f"http://{REDACTED}@{host}/model.onnx?sig={REDACTED}"

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("int8flow/model").experiment_id])
    assert run.data.params["calib_data"] == f"http://{REDACTED}@{host}/calib.parquet?sig={REDACTED}"
    shown = [*run.data.params.values(), *run.data.tags.values()]
    version = client.get_model_version("redaction-int8", "1")
    shown += [*version.tags.values(), version.source]
    assert not [value for value in shown if SECRET_MARK in value]


def real_config(host: str, work: Path) -> RunConfig:
    """The configuration ``run_cli`` gave, credentials and all."""
    stored = load_plan(str(work / "out")).config
    base = f"http://alice:{PASSWORD}@{host}"
    return replace(
        stored,
        model=f"{base}/model.onnx?sig={TOKENS[0]}",
        calib_data=f"{base}/calib.parquet?sig={TOKENS[0]}",
        val_data=f"{base}/val.parquet?sig={TOKENS[0]}",
    )


def test_stages_read_the_real_uris_only_from_the_runs_configuration(site, first_run) -> None:  # type: ignore[no-untyped-def]
    _, host = site
    work, _, _ = first_run
    out = str(work / "out")
    with pytest.raises(OutputDirectoryError, match="carry credentials, which int8flow does not store"):
        working_plan(out)
    config = real_config(host, work)
    plan = working_plan(out, config)
    assert (plan.model.path, plan.calibration.uri) == (config.model, config.calib_data)
    assert plan.validation is not None and plan.validation.uri == config.val_data
    with pytest.raises(OutputDirectoryError, match=r"planned with other settings \(method\)"):
        working_plan(out, replace(config, method="naive"))


def test_a_rotated_token_is_the_same_run(site, first_run) -> None:  # type: ignore[no-untyped-def]
    """Signed URLs expire: the next night's token reads the same data, so it finds its own --out."""
    _, host = site
    work, _, _ = first_run
    key = json.loads((work / "out" / "run.json").read_text())["run_key"]
    again = run_cli(host, TOKENS[1], work)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((work / "out" / "run.json").read_text())["run_key"] == key
