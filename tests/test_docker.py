"""The deployable stack in docker/: checked without a Docker engine (CI has none).

What a `docker compose up` would trip over first is checked statically: the compose file and its
references (Dockerfiles, variables, volumes, services), the Dockerfiles' install step and copied
paths, the secrets template, and that the images hold the demo model and data the trigger form's
defaults name. Where the `docker` CLI exists, `docker compose config` checks the rest.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DAGS = ROOT / "dags"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_TEMPLATE = DOCKER / "env.template"

SERVICES = {
    "postgres",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "mlflow",
    "dask-scheduler",
    "dask-worker",
}
AIRFLOW_SERVICES = sorted(name for name in SERVICES if name.startswith("airflow-"))
PUBLISHED_CONTAINER_PORTS = {"airflow-apiserver": {8080}, "mlflow": {5000}, "dask-scheduler": {8787}}
RUNS_DIR = "/data/int8flow-runs"
DATASET_PACKAGE = "dataset-fashion-mnist"
"""The Debian package of the form's default data (Fashion-MNIST), installed in the images at build time."""

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}; $$ escapes.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
BARE_VARIABLE = re.compile(r"(?<!\$)\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def strings(node: object) -> list[str]:
    """Every string value in the parsed compose file (where compose interpolates; not comments)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in strings(value)]
    return []


def with_defaults(text: str) -> str:
    """``text`` as compose expands it when no variable is set (only defaults are known here)."""
    return VARIABLE.sub(lambda m: m["arg"] if m["op"] in (":-", "-") else "", text)


def env_template() -> dict[str, str]:
    entries = {}
    for number, line in enumerate(ENV_TEMPLATE.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "=" in line, f"env.template line {number} is not KEY=VALUE: {line!r}"
        key, value = line.split("=", 1)
        entries[key.strip()] = value.strip()
    return entries


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs: continuation lines joined, comments dropped (no heredocs)."""
    result, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, arguments = pending.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{dockerfile.name}: a continuation line runs off the end"
    return result


def stages(dockerfile: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """``(name, instructions)`` of each build stage in order (unnamed ones by index); the last is the image."""
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(result))
            result.append((name, []))
        else:
            assert result, f"{dockerfile.name}: {keyword} before the first FROM"
            result[-1][1].append((keyword, arguments))
    return result


def copy_steps(steps: list[tuple[str, str]]) -> list[tuple[str | None, list[str], str]]:
    """``(stage or None for the build context, sources, destination)`` of each COPY in ``steps``."""
    result = []
    for keyword, arguments in steps:
        if keyword != "COPY":
            continue
        words = shlex.split(arguments)
        stage = next((word.removeprefix("--from=") for word in words if word.startswith("--from=")), None)
        paths = [word for word in words if not word.startswith("--")]
        result.append((stage, paths[:-1], paths[-1]))
    return result


def copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """``(sources, destination)`` of each COPY from the build context (not ``--from`` a stage)."""
    return [(sources, destination) for stage, sources, destination in copy_steps(instructions(dockerfile)) if not stage]


def copied_to(source: str, destination: str) -> str:
    """Where COPY puts ``source``: into ``destination`` when that ends in ``/``, else at it."""
    return destination + posixpath.basename(source.rstrip("/")) if destination.endswith("/") else destination


def apt_installs(steps: list[tuple[str, str]]) -> dict[str, str]:
    """Package -> pinned version ("" when unpinned) of every ``apt-get install`` in ``steps``' RUNs."""
    result = {}
    for keyword, arguments in steps:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|\|\||;", arguments):
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                for word in words[2:]:
                    if not word.startswith("-"):
                        name, _, version = word.partition("=")
                        result[name] = version
    return result


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of every ``pip install`` in the Dockerfile's RUN instructions."""
    result = []
    for keyword, arguments in instructions(dockerfile):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|\|\||;", arguments):
            words = shlex.split(command)
            for index in range(len(words) - 1):
                if words[index].endswith("pip") and words[index + 1] == "install":
                    result.append(words[index + 2 :])
    return result


def requirements_of(install_arguments: list[str]) -> list[str]:
    """The requirement specifiers of one ``pip install`` (options and their values dropped)."""
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url"}
    specifiers, skip = [], False
    for word in install_arguments:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif not word.startswith("-"):
            specifiers.append(word)
    return specifiers


def builds() -> dict[str, tuple[Path, Path]]:
    """``(Dockerfile, build context)`` per service that builds its image."""
    result = {}
    for name, service in services().items():
        build = service.get("build")
        if build is not None:
            context = (DOCKER / build.get("context", ".")).resolve()
            result[name] = ((context / build.get("dockerfile", "Dockerfile")).resolve(), context)
    return result


def built_dockerfiles() -> dict[str, Path]:
    return {name: dockerfile for name, (dockerfile, _) in builds().items()}


def dockerfiles() -> list[Path]:
    return sorted(set(built_dockerfiles().values()))


def build_context(dockerfile: Path) -> Path:
    contexts = {context for built, context in builds().values() if built == dockerfile}
    assert len(contexts) == 1, f"{dockerfile.name} is built with several contexts: {sorted(contexts)}"
    return contexts.pop()


def project_extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def installed_extras(dockerfile: Path) -> set[str]:
    extras = set()
    for arguments in pip_installs(dockerfile):
        for specifier in requirements_of(arguments):
            match = re.fullmatch(r"\.(?:\[(?P<extras>[^\]]*)\])?", specifier)
            if match and match["extras"]:
                extras.update(extra.strip() for extra in match["extras"].split(","))
    return extras


def test_compose_file_defines_the_stack() -> None:
    assert set(services()) == SERVICES
    assert set(compose()["volumes"]) >= {"int8flow-runs", "int8flow-data", "postgres-data", "mlflow-artifacts"}


def test_every_built_image_has_its_dockerfile() -> None:
    assert set(built_dockerfiles()) >= {"airflow-apiserver", "mlflow", "dask-worker"}
    for name, dockerfile in built_dockerfiles().items():
        assert dockerfile.is_file(), f"{name}: build.dockerfile {dockerfile} does not exist"


def _assert_pinned(reference: str, where: str) -> None:
    last_part = reference.split("@")[0].split("/")[-1]
    tag = last_part.partition(":")[2]
    assert tag and tag != "latest", f"{where}: image {reference!r} is not pinned to a version tag"


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in services().items():
        assert "image" in service, f"{name}: no image name (a built image needs a versioned name too)"
        _assert_pinned(with_defaults(service["image"]), f"compose service {name}")
    for dockerfile in dockerfiles():
        bases = [arguments.split()[0] for keyword, arguments in instructions(dockerfile) if keyword == "FROM"]
        assert bases, f"{dockerfile.name}: no FROM"
        for base in bases:
            _assert_pinned(base, dockerfile.name)


def test_every_required_variable_is_in_env_template() -> None:
    text = "\n".join(strings(compose()))
    template = env_template()
    referenced = {match["name"] for match in VARIABLE.finditer(text)} | {
        match["name"] for match in BARE_VARIABLE.finditer(text)
    }
    required = {match["name"] for match in VARIABLE.finditer(text) if match["op"] in (None, ":?", "?")} | {
        match["name"] for match in BARE_VARIABLE.finditer(text)
    }
    assert required, "compose.yaml takes no credential from docker/.env"
    assert required <= set(template), f"missing from env.template: {sorted(required - set(template))}"
    assert set(template) <= referenced, f"env.template keys compose never reads: {sorted(set(template) - referenced)}"


def test_credentials_must_be_set_and_fail_loudly_when_missing() -> None:
    text = "\n".join(strings(compose()))
    secret_names = {key for key in env_template() if re.search(r"PASSWORD|SECRET|KEY|TOKEN", key)}
    assert secret_names
    for match in VARIABLE.finditer(text):
        if match["name"] in secret_names:
            assert match["op"] == ":?", f"${{{match['name']}}} needs ':?' so a missing value stops compose"


def test_env_template_holds_placeholders_not_secrets() -> None:
    looks_random = re.compile(r"(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9+/=_-]{16,}")
    for key, value in env_template().items():
        if re.search(r"PASSWORD|SECRET|KEY|TOKEN", key):
            assert value == "change-me", f"env.template {key} must be the placeholder change-me, not {value!r}"
        else:
            assert not looks_random.fullmatch(value), f"env.template {key}={value!r} looks like a real secret"


def test_env_file_with_real_values_is_not_committed() -> None:
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "docker/.env"], cwd=ROOT, capture_output=True, check=False
    )
    assert tracked.returncode != 0, "docker/.env is tracked by git"


def test_only_the_web_uis_are_published_and_on_the_configured_address() -> None:
    published = {}
    for name, service in services().items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: write ports as 'ADDRESS:HOST:CONTAINER' strings"
            match = re.match(r"\$\{INT8FLOW_BIND_ADDRESS(?::-(?P<default>[^}]*))?\}:", port)
            assert match, f"{name}: port {port!r} is not bound to ${{INT8FLOW_BIND_ADDRESS}}"
            assert match["default"] in (None, "127.0.0.1"), f"{name}: {port!r} must default to 127.0.0.1"
            address, host_port, container_port = with_defaults(port).rsplit(":", 2)
            assert host_port.isdigit() and container_port.isdigit(), f"{name}: port {port!r}"
            published.setdefault(name, set()).add(int(container_port))
    assert published == PUBLISHED_CONTAINER_PORTS


def test_depends_on_targets_exist_and_can_report_their_condition() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on should name a condition per service"
        for target, spec in depends_on.items():
            assert target in all_services, f"{name} depends on unknown service {target}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in all_services[target], f"{name} waits for {target}'s healthcheck: it has none"
            elif condition == "service_completed_successfully":
                assert all_services[target].get("restart", "no") == "no", f"{target} is one-shot: restart 'no'"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_airflow_waits_for_its_database_and_migrations() -> None:
    for name in AIRFLOW_SERVICES:
        depends_on = services()[name]["depends_on"]
        assert depends_on["postgres"]["condition"] == "service_healthy"
        if name != "airflow-init":
            assert depends_on["airflow-init"]["condition"] == "service_completed_successfully"
    assert services()["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services()["dask-worker"]["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"


def test_dask_worker_reserves_gpus_and_can_be_scaled() -> None:
    worker = services()["dask-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices)
    for device in devices:
        count = with_defaults(str(device.get("count", "all")))
        assert count == "all" or count.isdigit(), f"GPU count {device.get('count')!r}: 'all' or a number"
    assert "container_name" not in worker and "ports" not in worker, "--scale needs no fixed name or host port"


def test_volumes_are_declared_or_are_files_in_the_repository() -> None:
    declared = set(compose()["volumes"])
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = with_defaults(volume).split(":")[0] if isinstance(volume, str) else with_defaults(volume["source"])
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind-mount source {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared under volumes:"


def test_runs_dir_is_the_same_shared_volume_in_airflow_and_workers() -> None:
    # Workers write the partial histograms, Airflow tasks read them: one volume, one path, writable.
    for name in [*AIRFLOW_SERVICES, "dask-worker"]:
        if name == "airflow-init":
            continue
        service = services()[name]
        assert f"int8flow-runs:{RUNS_DIR}" in service["volumes"], f"{name} does not mount int8flow-runs at {RUNS_DIR}"
        assert service["environment"]["INT8FLOW_RUNS_DIR"] == RUNS_DIR


def test_airflow_services_share_one_configuration() -> None:
    # A JWT secret or Fernet key that differs between components breaks tasks or connections at run time.
    shared = [
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW__CORE__DAGS_FOLDER",
    ]
    environments = [services()[name]["environment"] for name in AIRFLOW_SERVICES]
    for key in shared:
        assert len({environment[key] for environment in environments}) == 1, f"{key} differs between services"
    environment = environments[0]
    assert environment["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert environment["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert environment["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")
    assert environment["INT8FLOW_DASK_SCHEDULER"] == "tcp://dask-scheduler:8786"
    assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services()["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_pip_installs_use_the_constraints_file() -> None:
    for dockerfile in dockerfiles():
        installs = pip_installs(dockerfile)
        assert installs, f"{dockerfile.name} installs nothing with pip"
        for arguments in installs:
            command = "pip install " + " ".join(arguments)
            assert "--constraint constraints.txt" in command, f"{dockerfile.name}: `{command}` lacks the constraints"


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    for dockerfile in dockerfiles():
        context = build_context(dockerfile)
        # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile: an allow-list (`*` first)
        # keeps .venv, .git and docker/.env out of the build context.
        ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
        patterns = [line.strip() for line in ignore_file.read_text().splitlines() if line.strip()[:1] not in ("", "#")]
        assert patterns[0] == "*", f"{ignore_file.name} should start with '*' and re-include what is copied"
        allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
        for sources, _ in copies(dockerfile):
            for source in sources:
                assert (context / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist"
                assert source.rstrip("/") in allowed, f"{ignore_file.name} keeps {source} out of the build context"


def test_dags_folder_is_where_the_airflow_image_puts_dags() -> None:
    airflow_dockerfile = DOCKER / "airflow.Dockerfile"
    destinations = [destination for sources, destination in copies(airflow_dockerfile) if sources == ["dags/"]]
    assert len(destinations) == 1, "airflow.Dockerfile should COPY dags/ once"
    for name in AIRFLOW_SERVICES:
        assert built_dockerfiles()[name] == airflow_dockerfile.resolve()
        dags_folder = services()[name]["environment"]["AIRFLOW__CORE__DAGS_FOLDER"]
        assert dags_folder.rstrip("/") == destinations[0].rstrip("/")


@pytest.fixture(scope="module")
def deployed_form_defaults(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The trigger form's defaults as ``params.form_defaults`` computes them with the environment of
    compose's Airflow scheduler (the container whose tasks plan and build), from this checkout.

    Imported in a child process: importing Airflow reads ``AIRFLOW_HOME`` once per process, and the
    Airflow tests of the same session use their own.
    """
    environment = {key: str(value) for key, value in services()["airflow-scheduler"]["environment"].items()}
    script = (
        "import json, sys\n"
        "from int8flow_airflow.params import form_defaults\n"
        "defaults = form_defaults(json.loads(sys.argv[1]))\n"
        "print(json.dumps({name: value for name, (value, _) in defaults.items()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(environment)],
        env={**os.environ, "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow-home")), "PYTHONPATH": str(DAGS)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def path_in_image(path: str, dags_folder: str) -> str:
    """Where the default ``path`` of a checkout file points inside an image whose DAG folder is ``dags_folder``.

    ``params.py`` finds the demo model relative to its own location, so in the image the model's default is
    at the same place relative to the DAG folder as in the checkout.
    """
    return posixpath.normpath(posixpath.join(dags_folder, os.path.relpath(path, DAGS)))


def demo_readers() -> dict[str, Path]:
    """Services that read models and data (those told where they are by ``INT8FLOW_DATA_DIR``) -> Dockerfile."""
    return {
        name: built_dockerfiles()[name]
        for name, service in services().items()
        if "INT8FLOW_DATA_DIR" in service.get("environment", {})
    }


def demo_paths(defaults: dict[str, object]) -> tuple[str, str, str]:
    """``(model in the checkout, model in the images, data folder)`` of the form's defaults."""
    dags_folder = services()["airflow-scheduler"]["environment"]["AIRFLOW__CORE__DAGS_FOLDER"]
    model = str(defaults["model"])
    folders = {str(defaults[name]).partition("#")[0] for name in ("calib_data", "val_data")}
    assert len(folders) == 1, f"calibration and validation defaults name different data sets: {sorted(folders)}"
    return model, path_in_image(model, dags_folder), folders.pop()


def test_images_that_read_models_and_data_hold_the_forms_demo(deployed_form_defaults: dict[str, object]) -> None:
    # The form as it opens must be a run that works in the compose deployment: Airflow's `plan` checks
    # the model and data, the workers open the model and read their data shards, all by these paths.
    model, model_in_image, data_folder = demo_paths(deployed_form_defaults)
    readers = demo_readers()
    assert set(readers) >= {"airflow-scheduler", "dask-worker"}
    versions = set()
    for dockerfile in sorted(set(readers.values())):
        built = stages(dockerfile)
        image_steps = built[-1][1]
        steps_by_stage = dict(built)
        copied = copy_steps(image_steps)

        model_copies = [
            destination
            for stage, sources, destination in copied
            if not stage and sources == [Path(model).relative_to(ROOT).as_posix()]
        ]
        assert [copied_to(model, destination) for destination in model_copies] == [model_in_image], (
            f"{dockerfile.name} should COPY the demo model once to {model_in_image}, where the form's default points"
        )

        installs = apt_installs(image_steps)
        if DATASET_PACKAGE not in installs:
            stages_copied_from = [
                stage
                for stage, sources, destination in copied
                if stage and sources == [data_folder] and copied_to(data_folder, destination) == data_folder
            ]
            assert stages_copied_from, f"{dockerfile.name} neither installs {DATASET_PACKAGE} nor copies {data_folder}"
            installs = apt_installs(steps_by_stage[stages_copied_from[0]])
            assert DATASET_PACKAGE in installs, (
                f"{dockerfile.name}: stage {stages_copied_from[0]} lacks {DATASET_PACKAGE}"
            )
        versions.add(installs[DATASET_PACKAGE])
    assert len(versions) == 1 and "" not in versions, (
        f"pin one version of {DATASET_PACKAGE} in every image (found {sorted(versions)}): Airflow and the workers "
        "must read the same data"
    )


def test_no_volume_hides_the_demo_in_the_images(deployed_form_defaults: dict[str, object]) -> None:
    _, model_in_image, data_folder = demo_paths(deployed_form_defaults)
    for name in demo_readers():
        for volume in services()[name].get("volumes", []):
            target = with_defaults(volume).split(":")[1] if isinstance(volume, str) else volume["target"]
            for path in (model_in_image, data_folder):
                assert not Path(path).is_relative_to(target), f"{name}: volume {volume} hides {path} of the image"


def _debian_package_installed(package: str) -> bool:
    if shutil.which("dpkg") is None:
        return False
    return subprocess.run(["dpkg", "-s", package], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _debian_package_installed(DATASET_PACKAGE), reason=f"no {DATASET_PACKAGE} here (make data)")
def test_the_dataset_package_installs_the_forms_data_folder(deployed_form_defaults: dict[str, object]) -> None:
    _, _, data_folder = demo_paths(deployed_form_defaults)
    listed = subprocess.run(["dpkg", "-L", DATASET_PACKAGE], capture_output=True, text=True, check=True).stdout
    assert data_folder in listed.splitlines(), f"{DATASET_PACKAGE} does not install {data_folder}"


def test_extras_the_images_install_are_declared_in_pyproject() -> None:
    extras = project_extras()
    missing = {
        f"{dockerfile.name}: {extra}"
        for dockerfile in dockerfiles()
        for extra in installed_extras(dockerfile)
        if extra not in extras
    }
    assert not missing, "extras missing from pyproject.toml: " + ", ".join(sorted(missing))


def test_packages_the_images_install_are_pinned_in_constraints() -> None:
    pinned = set()
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            pinned.add(canonicalize_name(line.split("==")[0].strip()))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    unpinned = set()
    for dockerfile in dockerfiles():
        names = []
        for arguments in pip_installs(dockerfile):
            for specifier in requirements_of(arguments):
                if specifier.startswith("."):
                    names += project["dependencies"]
                    names += [r for extra in installed_extras(dockerfile) for r in project_extras().get(extra, [])]
                else:
                    names.append(specifier)
        unpinned |= {
            f"{dockerfile.name}: {Requirement(name).name}"
            for name in names
            if canonicalize_name(Requirement(name).name) not in pinned
        }
    assert not unpinned, "not pinned in constraints.txt (regenerate the lock): " + ", ".join(sorted(unpinned))


@pytest.mark.parametrize("script", ["airflow-init.sh", "postgres-init.sh"])
def test_init_scripts_are_executable_bash(script: str) -> None:
    path = DOCKER / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _docker_compose_available(), reason="no docker compose CLI here")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(ENV_TEMPLATE), "-f", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
