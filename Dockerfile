# imgq: one image for the worker (the default command), beat and the `imgq` CLI (see docker-compose.yml).
#
#   docker build -t imgq .                                  # weights downloaded on first start, then cached
#   docker build -t imgq --build-arg BAKE_WEIGHTS=imagenet . # weights inside the image: no download at start
#   docker build -t imgq --build-arg BASE_IMAGE=localhost/imgq-base-python:3.11 \
#       --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt .
#                     # no public registry: a stand-in base (deploy/build-bases.sh); pip trusts a private CA
#
# podman build takes the same arguments. docs/deployment.md has the figures (size, build time).

# The base: Python 3.11 with pip, `useradd` and a POSIX shell. Where the public registry cannot be reached,
# deploy/build-bases.sh builds a stand-in from Debian's packages.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Celery refuses to be comfortable as root, and a worker reads whatever paths the queue names: run as a user.
# uid 1000 is the usual first user on a Linux host, so bind-mounted photos are readable as they are.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin imgq

# Two pip steps, so that a change to imgq's code reinstalls imgq alone (seconds), not TensorFlow (minutes):
# 1. the dependencies of pyproject.toml, installed with empty packages standing in for the code;
# 2. the code, without dependencies.
# The worker extra pulls tensorflow-cpu on x86_64 (no CUDA libraries: a far smaller image), openvino and
# prometheus-client (--metrics-port).
# pip_cert (a build secret, never a layer): a CA bundle for pip, where the package index is reached through
# a TLS-inspecting proxy (`--secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt`); without it pip
# uses its own certificates. The pip cache is a cache mount: kept by the builder between builds, never in
# the image (what gets installed does not depend on it).
WORKDIR /src
COPY pyproject.toml README.md ./
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi && \
    mkdir imgq producer worker && touch imgq/__init__.py producer/__init__.py worker/__init__.py && \
    pip install '.[worker]' && pip uninstall --yes imgq && rm -rf /src/*
COPY imgq ./imgq
COPY producer ./producer
COPY worker ./worker
COPY pyproject.toml README.md ./
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi && \
    pip install --no-deps . && rm -rf /src

# Mount points of docker-compose.yml's volumes, created here so that named volumes mounted on them start out
# owned by imgq: the Keras cache (the ImageNet weights), activation dumps, Parquet sinks, reports.
RUN mkdir -p /home/imgq/.keras/models /dumps /sink /reports && chown -R imgq:imgq /home/imgq/.keras /dumps /sink /reports

USER imgq
WORKDIR /home/imgq

# BAKE_WEIGHTS=imagenet downloads the ImageNet weights (~100 MB) into the image at build time, for machines
# that cannot download at start. Empty (the default): Keras downloads them on a worker's first start into
# ~/.keras, which docker-compose.yml keeps in the keras-cache volume. A named volume that is still empty
# when first mounted is filled from the image, so baked weights land in that volume too.
ARG BAKE_WEIGHTS=""
RUN if [ "$BAKE_WEIGHTS" = "imagenet" ]; then \
        python -c "from worker.model import build_resnet50; build_resnet50('imagenet')"; \
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
