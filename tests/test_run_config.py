"""The run configuration: one declaration per setting, and the rules every entry point shares."""

from __future__ import annotations

from dataclasses import fields

import pytest

from int8flow.schemas.histogram_bins import DEFAULT_NUM_BINS, NUM_BINS_CHOICES
from int8flow.schemas.run_config import SETTINGS, SETTINGS_BY_NAME, RunConfig, RunConfigError
from int8flow.schemas.threshold_settings import ThresholdSettings
from int8flow.tasks.cli.main import build_parser

REQUIRED = {"model": "m.onnx", "calib_data": "data.parquet"}


def test_every_setting_is_a_field_of_the_config_in_the_same_order() -> None:
    assert [setting.name for setting in SETTINGS] == [field.name for field in fields(RunConfig)]


def test_every_default_passes_its_own_check() -> None:
    for setting in SETTINGS:
        if setting.default is not None or setting.nullable:
            assert setting.check(setting.default) == setting.default, setting.name


def test_defaults_match_the_kernels() -> None:
    config = RunConfig.from_mapping(REQUIRED)
    assert config.threshold_settings() == ThresholdSettings()
    assert config.num_bins == DEFAULT_NUM_BINS and DEFAULT_NUM_BINS in NUM_BINS_CHOICES


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "kl"}, "--method='kl': choose one of entropy, naive, percentile, mse"),
        ({"num_bins": 8001}, "--num-bins=8001: choose one of 16, 32"),
        ({"batch_size": 0}, "--batch-size=0: must be at least 1"),
        ({"percentile": 0.0}, "--percentile=0.0: must be greater than 0"),
        ({"percentile": 100.5}, "--percentile=100.5: must be at most 100"),
        ({"percentile": float("nan")}, "--percentile=nan: expected a finite number"),
        ({"percentile": float("inf")}, "--percentile=inf: expected a finite number"),
        ({"max_top1_drop": float("nan")}, "--max-top1-drop=nan: expected a finite number"),
        ({"batch_size": 3.5}, "--batch-size=3.5: expected an integer"),
        ({"spike_fix": "yes"}, "--spike-fix='yes': expected true or false"),
        ({"exclude": "Conv"}, "--exclude='Conv': expected a list of names"),
        ({"calib_data": None}, "--calib-data: a value is required"),
        ({"batch": 3}, "unknown setting(s) batch"),
    ],
)
def test_bad_values_name_the_option(values: dict, message: str) -> None:
    with pytest.raises(RunConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        RunConfig.from_mapping({**REQUIRED, **values})


def test_nullable_settings_accept_none_and_empty_validation_data_means_none() -> None:
    config = RunConfig.from_mapping({**REQUIRED, "val_data": "", "max_top1_drop": None})
    assert config.val_data is None and config.max_top1_drop is None


def test_mlflow_params_hold_the_settings_that_change_results_and_tags_the_others() -> None:
    config = RunConfig.from_mapping({**REQUIRED, "exclude": [":first-conv", "Gemm"], "max_top1_drop": 0.5})
    params, operational = config.mlflow_params(), config.operational_texts()
    assert list(operational) == [
        "batch_size", "scheduler", "workers", "shards", "out", "overwrite", "tracking_uri", "experiment", "register",
        "alias", "alias_policy",
    ]  # fmt: skip
    assert list(params) == [name for name in SETTINGS_BY_NAME if name not in operational]
    assert params["exclude"] == ":first-conv,Gemm" and params["max_top1_drop"] == "0.5"
    assert params["spike_fix"] == "true" and params["val_data"] == "" and params["num_bins"] == "8192"
    assert operational["overwrite"] == "false" and operational["alias"] == "int8-candidate"


def test_the_cli_parses_into_the_same_config() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "m.onnx",
            "--calib-data",
            "data.parquet",
            "--exclude",
            "Conv",
            "--exclude",
            "Gemm",
            "--no-spike-fix",
            "--max-top1-drop",
            "0.25",
            "--per-tensor-weights",
        ]
    )
    config = RunConfig.from_mapping({setting.name: getattr(args, setting.name) for setting in SETTINGS})
    assert config == RunConfig.from_mapping(
        {**REQUIRED, "exclude": ["Conv", "Gemm"], "spike_fix": False, "max_top1_drop": 0.25, "per_tensor_weights": True}
    )


def test_the_cli_refuses_a_nan_percentile() -> None:
    args = build_parser().parse_args(["run", "m.onnx", "--calib-data", "data.parquet", "--percentile", "nan"])
    with pytest.raises(RunConfigError, match=r"^--percentile=nan: expected a finite number$"):
        RunConfig.from_mapping({setting.name: getattr(args, setting.name) for setting in SETTINGS})


def test_help_texts_name_no_cli_flag_since_the_trigger_form_shows_them_too() -> None:
    flagged = {setting.name: setting.help for setting in SETTINGS_BY_NAME.values() if "--" in setting.help}
    assert flagged == {}


@pytest.mark.parametrize(
    ("name", "methods"),
    [
        ("num_quantized_bins", "entropy and auto only"),
        ("spike_fix", "entropy and auto only"),
        ("percentile", "percentile and auto only"),
        ("auto_examples", "auto method only"),
    ],
)
def test_method_specific_settings_say_so_first(name: str, methods: str) -> None:
    assert SETTINGS_BY_NAME[name].help.startswith(methods + ": ")


@pytest.mark.parametrize("policy", ["newest", "best:", "best:speed", "best:int8_top1 ", "latest,best:int8_top1"])
def test_an_alias_policy_that_is_not_one_is_refused_naming_the_choices(policy: str) -> None:
    with pytest.raises(RunConfigError, match=r"--alias-policy=.*expected latest\|best:METRIC: .*int8_top1"):
        RunConfig.from_mapping({**REQUIRED, "alias_policy": policy})


@pytest.mark.parametrize("policy", ["latest", "best:int8_top1", "best:top1_drop", "best:deploy_agreement_top1"])
def test_alias_policies_are_latest_or_best_by_an_accuracy_metric(policy: str) -> None:
    assert RunConfig.from_mapping({**REQUIRED, "alias_policy": policy}).alias_policy == policy
