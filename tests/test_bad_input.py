"""Bad input to ``int8flow run``: one line on stderr naming the problem and the remedy, the exit status
that says which kind of failure it was, and no results written. Real files, real clusters."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DEMO_MODEL
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from int8flow.tasks.cli.main import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, main
from int8flow.tasks.data import fashion_mnist_folder, load_mnist_split

MODEL = str(DEMO_MODEL)
CALIB = f"{fashion_mnist_folder()}#train"
VAL = f"{fashion_mnist_folder()}#t10k"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def parquet_data(path: Path, count: int, labels: list[int] | None = None, corrupt: tuple[int, ...] = ()) -> str:
    """``count`` Fashion-MNIST test images as PNG bytes; rows in ``corrupt`` hold truncated PNGs."""
    pixels, real_labels = load_mnist_split(fashion_mnist_folder(), "t10k")
    images = [png(pixels[index])[: 30 if index in corrupt else None] for index in range(count)]
    table = pa.table(
        {"image": pa.array(images, pa.binary()), "label": pa.array(labels or real_labels[:count].tolist(), pa.int64())}
    )
    pq.write_table(table, path)
    return str(path)


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str, model: str = MODEL) -> tuple[int, str]:
    code = main(
        [
            "run",
            model,
            "--preprocess",
            "mnist",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            *args,
        ]
    )
    return code, capsys.readouterr().err


def assert_one_line(error: str, *words: str) -> None:
    assert error.startswith("int8flow: error: ") and error.count("\n") == 1, error
    for word in words:
        assert word in error, (word, error)


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, model=str(tmp_path / "nope.onnx"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "nope.onnx", "not found")
    assert_nothing_written(tmp_path)


def test_a_file_that_is_not_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.onnx").write_text("hello")
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, model=str(tmp_path / "model.onnx"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "model.onnx", "not an ONNX model")
    assert_nothing_written(tmp_path)


def classifier_with(tmp_path: Path, nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray]) -> str:
    """A Fashion-MNIST linear classifier whose logits get ``shift`` added, ``nodes`` computing it from ``constants``."""
    rng = np.random.default_rng(0)
    constants = {"weight": rng.normal(0, 0.05, (784, 10)).astype(np.float32), **constants}
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "weight"], ["scores"], name="gemm"),
            *nodes,
            helper.make_node("Add", ["scores", "shift"], ["logits"], name="add_shift"),
        ],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "classifier.onnx"
    onnx.save(model, path)
    return str(path)


def test_constant_folding_refuses_a_petabyte_constant_before_making_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = [
        helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"], name="huge_fill"),
        helper.make_node("ReduceSum", ["huge"], ["shift"], name="sum_huge", keepdims=0),
    ]
    model = classifier_with(tmp_path, nodes, {"huge_shape": np.array([1 << 25, 1 << 25], dtype=np.int64)})
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, model=model)
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "node 'huge_fill' (ConstantOfShape)", "1,125,899,906,842,624 elements", "2 GiB")
    assert_nothing_written(tmp_path)


def test_an_op_int8flow_does_not_run_is_named_not_evaluated_even_on_constants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = [helper.make_node("Hardmax", ["table"], ["shift"], name="hardmax_table")]
    model = classifier_with(tmp_path, nodes, {"table": np.ones((1, 10), dtype=np.float32)})
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, model=model)
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "node 'hardmax_table' has op type 'Hardmax'", "supported ops:")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("opset", [12, 22])
def test_an_opset_outside_the_supported_range_is_named_with_the_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], opset: int
) -> None:
    model = onnx.load(classifier_with(tmp_path, [], {"shift": np.zeros((1, 10), dtype=np.float32)}))
    model.opset_import[0].version = opset
    path = tmp_path / f"opset{opset}.onnx"
    onnx.save(model, path)
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, model=str(path))
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, f"opset{opset}.onnx", f"ONNX opset {opset}", "opsets 13 to 21", "opset_version=17")
    assert_nothing_written(tmp_path)


def test_an_op_mode_int8flow_does_not_run_names_node_op_opset_and_remedy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = [helper.make_node("Pad", ["scores", "pads"], ["shift"], name="pad_scores", mode="mirror")]
    model = classifier_with(tmp_path, nodes, {"pads": np.zeros(4, dtype=np.int64)})
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, model=model)
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "node 'pad_scores' (Pad, opset 17)", "Pad mode 'mirror'", "constant, reflect, edge, wrap")
    assert_nothing_written(tmp_path)


def test_a_constant_int8flow_cannot_read_is_bad_input_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(1, dtype=np.float32), "values"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "indices"),
        [10],
    )
    nodes = [helper.make_node("Constant", [], ["shift"], name="sparse_shift", sparse_value=sparse)]
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, model=classifier_with(tmp_path, nodes, {}))
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "Constant node 'sparse_shift' holds its value as sparse_value", "dense constants")
    assert_nothing_written(tmp_path)


def test_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run(tmp_path, capsys, "--calib-data", str(tmp_path / "images"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, str(tmp_path / "images"))
    assert_nothing_written(tmp_path)


def test_an_idx_folder_without_a_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run(tmp_path, capsys, "--calib-data", fashion_mnist_folder())
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "#t10k")
    assert_nothing_written(tmp_path)


def test_an_empty_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(
        pa.table({"image": pa.array([], pa.binary()), "label": pa.array([], pa.int64())}), tmp_path / "e.parquet"
    )
    code, error = run(tmp_path, capsys, "--calib-data", str(tmp_path / "e.parquet"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "e.parquet", "no rows")
    assert_nothing_written(tmp_path)


def test_fewer_examples_than_one_batch_run_as_one_short_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = parquet_data(tmp_path / "few.parquet", 10)
    code, error = run(tmp_path, capsys, "--calib-data", data, "--batch-size", "64")
    assert code == 0, error
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["calibration"]["examples"] == 10


def test_a_preprocessing_that_does_not_fit_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = (
        main(["run", MODEL, "--calib-data", CALIB, "--preprocess", "imagenet-tf", "--out", str(tmp_path / "out")]),
        capsys.readouterr().err,
    )
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "imagenet-tf", "mnist")
    assert_nothing_written(tmp_path)


def test_a_batch_too_large_to_hold_is_refused_at_plan_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, "--batch-size", "1000000")
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "--batch-size 1000000", "1x28x28 float32", "2.9 GiB", "use --batch-size 342392 or less")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("preprocess", "words"),
    [("mnist,resize=100000", "resize=100000: more than 16384 pixels"), ("mnist,crop=20000", "crop=20000: more than")],
)
def test_an_absurd_image_size_is_refused_at_plan_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preprocess: str, words: str
) -> None:
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, f"--preprocess={preprocess}")
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, words)
    assert_nothing_written(tmp_path)


def test_a_model_declaring_an_absurd_input_size_is_refused_at_plan_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.load(MODEL)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = 100_000, 100_000
    onnx.save(model, tmp_path / "huge_input.onnx")
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, model=str(tmp_path / "huge_input.onnx"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "(N, 1, 100000, 100000)", "a side over 16384 pixels")
    assert_nothing_written(tmp_path)


def test_an_invalid_setting_names_its_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, "--num-bins", "8001")
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "--num-bins=8001", "8192")
    assert_nothing_written(tmp_path)


def test_an_exclusion_that_matches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, "--exclude", "Convv")
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "'Convv'", "Conv")
    assert_nothing_written(tmp_path)


def test_a_registry_uri_that_does_not_resolve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, model="models:/resnet@production")
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "models:/resnet@production")
    assert_nothing_written(tmp_path)


def test_an_unreachable_scheduler_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run(
        tmp_path, capsys, "--calib-data", CALIB, "--calib-examples", "64", "--scheduler", "tcp://127.0.0.1:9"
    )
    assert code == EXIT_UNAVAILABLE
    assert_one_line(error, "tcp://127.0.0.1:9", "did not answer")
    assert not (tmp_path / "out" / "histograms").exists()


def test_labels_out_of_range_for_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = parquet_data(tmp_path / "val.parquet", 8, labels=[0, 1, 2, 3, 4, 5, 6, 12])
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, "--calib-examples", "64", "--val-data", data)
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "val.parquet", "label 12", "10 classes", "1 such labels in the first 8 examples")
    assert_nothing_written(tmp_path)  # found while planning, before any calibration


def test_a_worker_side_error_reaches_the_terminal_as_one_line_only(tmp_path: Path) -> None:
    """The CLI as users run it: its worker processes share the terminal, so no Dask traceback above the line."""
    data = parquet_data(tmp_path / "calib.parquet", 32, corrupt=(5,))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "int8flow"), "run", MODEL, "--preprocess=mnist", "--workers=1"]
        + [f"--out={tmp_path / 'out'}", f"--calib-data={data}", "--calib-examples=32"]
        + [f"--tracking-uri=sqlite:///{tmp_path}/mlflow.db"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == EXIT_BAD_INPUT
    assert done.stderr.startswith(f"int8flow: error: {data} row 5: ") and done.stderr.count("\n") == 1, done.stderr
    assert "--on-bad-image skip" in done.stderr


def test_an_image_that_fails_to_decode_fails_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = parquet_data(tmp_path / "calib.parquet", 64, corrupt=(5,))
    code, error = run(tmp_path, capsys, "--calib-data", data, "--batch-size", "16")
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "calib.parquet row 5", "--on-bad-image skip")
    assert not (tmp_path / "out" / "calibration.json").exists()


def test_images_that_fail_to_decode_are_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = parquet_data(tmp_path / "calib.parquet", 64, corrupt=(5, 40))
    code, _ = run(tmp_path, capsys, "--calib-data", data, "--batch-size", "16", "--on-bad-image", "skip")
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["calibration"]["examples"] == 62
    assert report["data"]["calibration"]["skipped_images"] == 2


def test_nan_activations_name_the_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = onnx.load(MODEL)
    weight = next(init for init in model.graph.initializer if len(init.dims) == 4)
    broken = numpy_helper.to_array(weight).copy()
    broken.flat[0] = np.inf
    weight.CopyFrom(numpy_helper.from_array(broken, weight.name))
    onnx.save(model, tmp_path / "broken.onnx")
    code, error = run(
        tmp_path, capsys, "--calib-data", CALIB, "--calib-examples", "64", model=str(tmp_path / "broken.onnx")
    )
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "tensor '", "NaN", "infinite")
    assert not (tmp_path / "out" / "calibration.json").exists()


def test_an_output_directory_of_another_run_is_refused_unless_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, capsys, "--calib-data", CALIB, "--calib-examples", "64")[0] == 0
    before = (tmp_path / "out" / "calibration.json").read_bytes()
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, "--calib-examples", "64", "--method", "naive")
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "another run", "--overwrite")
    assert (tmp_path / "out" / "calibration.json").read_bytes() == before
    assert (
        run(tmp_path, capsys, "--calib-data", CALIB, "--calib-examples", "64", "--method", "naive", "--overwrite")[0]
        == 0
    )
    assert (tmp_path / "out" / "calibration.json").read_bytes() != before


def test_device_gpu_where_nvml_sees_none_is_refused_before_any_worker_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, error = run(tmp_path, capsys, "--calib-data", CALIB, "--calib-examples", "64", "--device", "gpu")
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "--device gpu: NVML sees no GPU", "--device cpu")
    assert not (tmp_path / "out" / "histograms").exists()


def test_a_cpu_worker_asked_for_the_gpu_fails_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], external_dask_scheduler: str
) -> None:
    """An existing cluster whose workers have no GPU: the worker refuses rather than computing in NumPy."""
    code, error = run(
        tmp_path,
        capsys,
        "--calib-data",
        CALIB,
        "--calib-examples",
        "64",
        "--device",
        "gpu",
        "--scheduler",
        external_dask_scheduler,
    )
    assert code == EXIT_BAD_INPUT
    assert_one_line(error, "device 'gpu' was requested but no CUDA GPU is usable", "--device cpu")
