# syntax=docker/dockerfile:1
# Airflow 3.3.2 (api-server, scheduler with LocalExecutor, dag-processor, triggerer) with int8flow
# installed by the same constraints-pinned pip step CI runs. Build from the repository root:
#   docker compose -f docker/compose.yaml build        (or: docker build -f docker/airflow.Dockerfile .)
#
# Base: python:3.11-slim, not apache/airflow:3.3.2-python3.11. The official image ships Airflow
# plus some 30 provider packages installed against Airflow's own constraints file; our lock
# (constraints.txt, a `pip freeze` of the environment CI tests) pins many of the same packages
# (SQLAlchemy, pydantic, fastapi, protobuf, ...) at other versions, so installing it there would
# up/downgrade packages under providers we cannot test and cannot show still work. A bare
# Python 3.11 (the Python the lock was made with) takes constraints.txt exactly as CI does and
# contains nothing CI did not test.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/int8flow-venv \
    PATH=/opt/int8flow-venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow

# The same UID (50000, group 0, as in the official Airflow image) runs the Dask workers
# (worker.Dockerfile): both write to the shared run-outputs volume.
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --no-create-home --shell /bin/bash airflow \
 && mkdir -p /opt/airflow/logs /opt/airflow/auth /data/int8flow-runs /data/int8flow-data \
 && chown -R 50000:0 /opt/airflow /data \
 && chmod -R g+rwX /opt/airflow /data

# The demo the trigger form opens with (dags/int8flow_airflow/params.py, form_defaults): Debian's
# Fashion-MNIST (MIT) where the package puts it, /usr/share/datasets/fashion-mnist, which the `plan`
# task checks. Version pinned: the data set the accuracy figures were measured on.
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/*

# The install step of the Makefile and CI: constraints.txt pins every version. Extra `postgres`
# brings the metadata database drivers (psycopg2 for sync, asyncpg for Airflow's async engine).
WORKDIR /src/int8flow
COPY pyproject.toml constraints.txt README.md ./
COPY int8flow/ int8flow/
COPY kernels/ kernels/
COPY schemas/ schemas/
COPY tasks/ tasks/
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install --constraint constraints.txt '.[postgres]' \
 && rm -rf build ./*.egg-info

# DAG files live outside site-packages, where AIRFLOW__CORE__DAGS_FOLDER points (compose.yaml);
# they import the installed int8flow package. Owned by root: read-only at run time.
COPY dags/ /opt/airflow/dags/
# The form's default model: params.py finds it beside the DAG folder, at ../examples/models, as in
# a checkout. worker.Dockerfile puts it at the same path, since the workers open the path `plan` records.
COPY examples/models/fashion_mnist_resnet.onnx /opt/airflow/examples/models/fashion_mnist_resnet.onnx
COPY --chmod=0755 docker/airflow-init.sh /usr/local/bin/int8flow-airflow-init

USER airflow
WORKDIR /opt/airflow
CMD ["airflow", "version"]
