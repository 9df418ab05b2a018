"""ONNX models whose weights live in external data files (``model.onnx`` + ``model.onnx.data``).

The data is read next to the model, never from the working directory, the fingerprint covers it,
and workers refuse data that changed after planning. onnxruntime, which resolves external data
relative to the model file, is the oracle.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import fsspec
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DEMO_MODEL
from graph_builders import INPUT_SHAPES, MODELS

from int8flow.schemas.run_config import RunConfig
from int8flow.tasks.data import fashion_mnist_folder
from int8flow.tasks.distributed.shard_jobs import ModelRef, fp32_graph
from int8flow.tasks.graph.executor import GraphExecutor
from int8flow.tasks.graph.ir import Graph
from int8flow.tasks.graph.load import ModelLoadError, load_graph
from int8flow.tasks.graph.simplify import simplify
from int8flow.tasks.run.plan import OutputDirectoryError, plan_run

DATA_FILE = "model.onnx.data"


def save_external(model: onnx.ModelProto, folder: Path) -> Path:
    """``folder``/model.onnx with every initializer in ``folder``/model.onnx.data."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=DATA_FILE, size_threshold=0)
    return path


def batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (4, *INPUT_SHAPES["cnn"])).astype(np.float32)


def ours(graph: Graph, inputs: np.ndarray) -> np.ndarray:
    return next(iter(GraphExecutor(simplify(graph)).run({"input": inputs}).values()))


def onnxruntime_output(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": inputs})[0]


def assert_matches_onnxruntime(graph: Graph, path: Path) -> None:
    inputs = batch()
    np.testing.assert_allclose(ours(graph, inputs), onnxruntime_output(path, inputs), rtol=1e-5, atol=0)


def rewrite_first_weight(data_file: Path) -> None:
    """Another value for the first float of the data file: same size, so only the bytes tell."""
    weights = bytearray(data_file.read_bytes())
    weights[0:4] = np.float32(0.125).tobytes()
    data_file.write_bytes(bytes(weights))


def single_line(error: pytest.ExceptionInfo[ModelLoadError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_external_data_is_read_next_to_the_model_from_another_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_url: bool
) -> None:
    path = save_external(MODELS["cnn"](), tmp_path / "a")
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")

    graph, _ = load_graph(path.as_uri() if as_url else str(path))

    assert_matches_onnxruntime(graph, path)


def test_a_decoy_data_file_in_the_working_directory_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_external(MODELS["cnn"](seed=0), tmp_path / "a")
    decoy = save_external(MODELS["cnn"](seed=7), tmp_path / "b")
    assert (decoy.parent / DATA_FILE).read_bytes() != (path.parent / DATA_FILE).read_bytes()
    monkeypatch.chdir(tmp_path / "b")

    graph, fingerprint = load_graph(str(path))

    assert_matches_onnxruntime(graph, path)
    assert fingerprint != load_graph(str(decoy))[1]


def test_the_fingerprint_covers_the_data_and_workers_refuse_data_changed_after_planning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_external(MODELS["cnn"](), tmp_path / "a")
    monkeypatch.chdir(path.parent)  # so that even a loader reading the working directory finds the data
    planned = load_graph(str(path))[1]
    rewrite_first_weight(path.parent / DATA_FILE)

    changed = load_graph(str(path))[1]

    assert changed != planned
    assert hashlib.sha256(path.read_bytes()).hexdigest() not in (planned, changed)
    with pytest.raises(ModelLoadError) as error:
        fp32_graph(ModelRef(str(path), planned, "cpu", "int8flow"))
    assert single_line(error).startswith(f"{path}: the model changed since the run was planned")
    assert_matches_onnxruntime(fp32_graph(ModelRef(str(path), changed, "cpu", "int8flow")), path)


def test_a_planned_run_fingerprints_the_data_and_its_workers_check_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_external(onnx.load(DEMO_MODEL), tmp_path / "a")
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    config = RunConfig.from_mapping(
        {
            "model": str(path),
            "calib_data": f"{fashion_mnist_folder()}#train",
            "preprocess": "mnist",
            "calib_examples": 64,
            "batch_size": 32,
            "workers": 1,
            "out": str(tmp_path / "out"),
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        }
    )

    plan = plan_run(config)

    assert (plan.model.path, plan.model.sha256) == (str(path), load_graph(str(path))[1])
    rewrite_first_weight(path.parent / DATA_FILE)
    with pytest.raises(ModelLoadError, match="changed since the run was planned"):
        fp32_graph(plan.model)
    with pytest.raises(OutputDirectoryError, match="holds the results of another run"):
        plan_run(config)  # other weights, another run key


def test_a_model_and_its_data_load_from_an_fsspec_memory_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_dir: str
) -> None:
    path = save_external(MODELS["cnn"](), tmp_path / "a")
    for name in ("model.onnx", DATA_FILE):
        with fsspec.open(f"{memory_dir}/models/{name}", "wb") as file:
            file.write((path.parent / name).read_bytes())
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")

    graph, fingerprint = load_graph(f"{memory_dir}/models/model.onnx")

    assert_matches_onnxruntime(graph, path)
    assert fingerprint == load_graph(str(path))[1]


@pytest.mark.parametrize("escape", ["relative", "absolute"])
def test_a_location_outside_the_model_folder_is_refused_by_tensor_and_file(tmp_path: Path, escape: str) -> None:
    path = save_external(MODELS["cnn"](), tmp_path / "a" / "model")
    outside = tmp_path / "a" / DATA_FILE
    outside.write_bytes((path.parent / DATA_FILE).read_bytes())
    location = f"../{DATA_FILE}" if escape == "relative" else str(outside)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())
    first = model.graph.initializer[0].name

    with pytest.raises(ModelLoadError) as error:
        load_graph(str(path))

    assert single_line(error).startswith(
        f"{path}: tensor {first!r} names external data file {location!r} outside the model's folder;"
    )


def test_a_missing_data_file_names_the_model_the_tensor_the_file_and_the_remedy(tmp_path: Path) -> None:
    path = save_external(MODELS["cnn"](), tmp_path / "a")
    (path.parent / DATA_FILE).unlink()
    first = onnx.load(str(path), load_external_data=False).graph.initializer[0].name

    with pytest.raises(ModelLoadError) as error:
        load_graph(str(path))

    message = single_line(error)
    assert message.startswith(f"{path}: tensor {first!r} keeps its data in {DATA_FILE!r}")
    assert f"{path.parent / DATA_FILE} does not exist" in message
    assert "copy the data file next to the model" in message
