# syntax=docker/dockerfile:1
# Dask-CUDA GPU worker (and, in compose.yaml, the Dask scheduler: same image, so scheduler and
# workers run identical dask/distributed/Python builds). int8flow is installed with the `gpu`
# extra (cupy-cuda13x, cuda-toolkit[cublas,cudart,curand,nvrtc], dask-cuda[cu13]) by the same
# constraints-pinned pip step CI runs.
# Build from the repository root:  docker build -f docker/worker.Dockerfile .

# Debian's Fashion-MNIST (MIT), the data set of the trigger form's defaults: installed from Debian
# bookworm, the Airflow image's base, at the same pinned version, so Airflow and the workers read the
# same files; the Ubuntu-based worker image copies them from this stage.
FROM python:3.11.14-slim-bookworm AS fashion-mnist
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1

# Base: the CUDA 13.0 `base` image, the smallest one: the driver hook-up for the NVIDIA Container
# Toolkit (NVIDIA_* variables, the CUDA-version check) and libcudart, no CUDA libraries or headers.
# Everything CUDA that CuPy loads comes from pip wheels instead, found through cuda-pathfinder:
# cuBLAS, cuRAND, NVRTC and the CUDA headers NVRTC compiles CuPy's kernels against (the `runtime`
# image has the libraries but not the headers NVRTC needs). The wheels are CUDA 13.0
# (cuda-toolkit==13.0.3, pinned in constraints.txt, the CUDA torch's wheels need too), matching the
# base's 13.0. The host needs the NVIDIA Container Toolkit and a driver for CUDA 13.0 (>= 580; the image's NVIDIA_REQUIRE_CUDA check
# refuses older ones except the data-center branches it lists). Ubuntu 22.04 has no current Python
# 3.11 of its own: deadsnakes' python3.11 is used, the Python minor version the lock
# (constraints.txt) was made with.
FROM nvidia/cuda:13.0.1-base-ubuntu22.04

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y --auto-remove software-properties-common \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/int8flow-venv \
    PATH=/opt/int8flow-venv/bin:$PATH \
    DASK_TEMPORARY_DIRECTORY=/home/int8flow/dask-scratch

# UID 50000, group 0: the same user as the Airflow image, since workers write the partial
# histograms that Airflow tasks read from the shared /data/int8flow-runs volume.
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/int8flow --shell /bin/bash int8flow \
 && mkdir -p /data/int8flow-runs /data/int8flow-data \
 && chown -R 50000:0 /data \
 && chmod -R g+rwX /data

# The workers read the data shards of the form's default calibration and validation data from
# /usr/share/datasets/fashion-mnist, as Airflow's `plan` found them; the licence comes along.
COPY --from=fashion-mnist /usr/share/datasets/fashion-mnist /usr/share/datasets/fashion-mnist
COPY --from=fashion-mnist /usr/share/doc/dataset-fashion-mnist/copyright /usr/share/doc/dataset-fashion-mnist/copyright

# The install step of the Makefile and CI: constraints.txt pins every version. Extra `gpu`:
# CuPy, the CUDA library and header wheels, and dask-cuda; extra `dashboard`: bokeh, which the
# Dask scheduler's dashboard needs.
WORKDIR /src/int8flow
COPY pyproject.toml constraints.txt README.md ./
COPY int8flow/ int8flow/
COPY kernels/ kernels/
COPY schemas/ schemas/
COPY tasks/ tasks/
RUN python3.11 -m venv "$VIRTUAL_ENV" \
 && pip install --constraint constraints.txt '.[gpu,dashboard]' \
 && rm -rf build ./*.egg-info

# The form's default model, at the path the Airflow image has it (/opt/airflow/dags/../examples/models,
# where params.py finds it): `plan` records the model's path, and every worker opens that path.
COPY examples/models/fashion_mnist_resnet.onnx /opt/airflow/examples/models/fashion_mnist_resnet.onnx

USER int8flow
WORKDIR /home/int8flow
# One Dask worker process per visible GPU (dask-cuda); override the address as the first argument.
ENTRYPOINT ["dask", "cuda", "worker"]
CMD ["tcp://dask-scheduler:8786"]
