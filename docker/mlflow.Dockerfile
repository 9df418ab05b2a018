# syntax=docker/dockerfile:1
# MLflow tracking server with a PostgreSQL backend store. The official ghcr.io/mlflow/mlflow
# image has no PostgreSQL driver (mlflow/mlflow#9513) and its `-full` variant carries every
# extra; this image installs mlflow (3.17.2, pinned by constraints.txt: the same version as the
# clients in the Airflow and worker images) and psycopg2, with the constraints-pinned pip step.
# Build from the repository root:  docker build -f docker/mlflow.Dockerfile .
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/mlflow-venv \
    PATH=/opt/mlflow-venv/bin:$PATH

WORKDIR /src/int8flow
COPY constraints.txt ./
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install --constraint constraints.txt mlflow psycopg2-binary

# Artifacts are served by the server from a named volume mounted here (compose.yaml); the
# folder exists in the image, owned by the server's user, so a new volume inherits the owner.
RUN useradd --uid 50001 --gid 0 --create-home --home-dir /home/mlflow --shell /bin/bash mlflow \
 && mkdir -p /mlflow/artifacts \
 && chown -R 50001:0 /mlflow

USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
