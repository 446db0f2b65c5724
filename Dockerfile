# shiva-bids BIDS App image (GPU by default; the same image runs on CPU when no GPU is visible).
#
#   docker build -t shiva-bids:$(cat version) .
#   docker run --rm --gpus all --read-only --tmpfs /tmp -u "$(id -u):$(id -g)" \
#       -v /data/ds:/data:ro -v /data/out:/out -v /models:/models:ro \
#       shiva-bids:$(cat version) /data /out participant --models-dir /models
#
# Build arguments:
#   BASE_IMAGE          Debian 12 (bookworm) image pinned by digest (Python 3.11 comes from apt).
#                       A local base works too (tests/container/build_and_run.sh imports one made
#                       with debootstrap when Docker Hub cannot be reached).
#   TF_PACKAGE          "tensorflow[and-cuda]==2.21.*" (GPU: CUDA/cuDNN wheels from PyPI, the host
#                       driver comes in with --gpus all / apptainer --nv); "tensorflow==2.21.*" for a
#                       smaller CPU-only image (no CUDA wheels).
#   PREFETCH_TEMPLATES  1: fetch the TemplateFlow files the app uses into TEMPLATEFLOW_HOME (needs
#                       network during the build); 0: skip (offline builds; the app then expects
#                       TEMPLATEFLOW_HOME to be bound at run time).
#   WHEELHOUSE          a folder of the build context with pre-built wheels: when it holds any,
#                       pip installs from it only (--no-index), for builds where pip cannot reach
#                       PyPI from inside the build (reference/BIDS_APPS.md §6.1).
#   CONTAINER_TAG       recorded in dataset_description.json GeneratedBy.Container.Tag.
# debian:bookworm-20251229 (Debian 12.12), amd64 manifest digest as published by debuerreotype.
ARG BASE_IMAGE=debian:bookworm-20251229@sha256:4216e8fe27fdd803d2822d08ed9de39825a41a47e34c32b71a23ac074f91eaf4

# ---- runtime: Python 3.11 and nothing else (shared by the build and final stages) -----------
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8
# apt packages are not version-pinned (DL3008): the base is pinned by digest and bookworm only
# receives security updates, whose exact versions vanish from the mirror when superseded.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates libgomp1 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*

# ---- build: a virtual environment with the package and its pinned ranges ----------------------
FROM runtime AS build
ARG TF_PACKAGE="tensorflow[and-cuda]==2.21.*"
ARG WHEELHOUSE=.whl
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . /src
# The wheelhouse (if any) lives only in this stage; the final image gets /opt/venv alone.
RUN python3 -m venv /opt/venv \
    && if [ -n "$(ls -A "/src/${WHEELHOUSE}" 2>/dev/null)" ]; then \
         export PIP_NO_INDEX=1 PIP_FIND_LINKS="/src/${WHEELHOUSE}"; fi \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
         "${TF_PACKAGE}" /src \
    && /opt/venv/bin/python -c "import shiva_bids, tensorflow, openvino, ants, bids, templateflow"

# ---- final image ---------------------------------------------------------------------------
FROM runtime
LABEL org.opencontainers.image.title="shiva-bids" \
      org.opencontainers.image.description="SHIVA small-vessel-disease markers as a BIDS App" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
COPY version run.py /opt/shiva-bids/
COPY docker/prefetch_templates.py /opt/shiva-bids/docker/
ARG PREFETCH_TEMPLATES=1
ARG CONTAINER_TAG=shiva-bids:dev
# Run as any uid on a read-only root: everything that wants to write goes to /tmp (a tmpfs with
# `docker run --read-only --tmpfs /tmp`; the host /tmp under Apptainer). No run-time downloads:
# TemplateFlow reads the files baked in below (reference/BIDS_APPS.md §4, requirements 1 and 2).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/tmp/.keras \
    DENO_DIR=/tmp/.cache/deno \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    SHIVA_BIDS_CONTAINER_TYPE=docker \
    SHIVA_BIDS_CONTAINER_TAG=${CONTAINER_TAG}
RUN python /opt/shiva-bids/docker/prefetch_templates.py --fetch "${PREFETCH_TEMPLATES}" \
    && chmod -R a+rX /opt/templateflow /opt/shiva-bids \
    && chmod a+rx /opt/shiva-bids/run.py \
    && shiva-bids --version
WORKDIR /tmp
ENTRYPOINT ["/opt/shiva-bids/run.py"]
