# imgq: one image for the worker (the default command) and the `imgq` CLI (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Celery refuses to be comfortable as root, and a worker reads whatever paths the queue names: run as a user.
# uid 1000 is the usual first user on a Linux host, so bind-mounted photos are readable as they are.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin imgq

WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgq ./imgq
COPY producer ./producer
COPY worker ./worker
RUN pip install '.[worker]' && rm -rf /src

USER imgq
WORKDIR /home/imgq
# Keras caches the ImageNet weights here; created now so that a named volume mounted on it belongs to imgq.
RUN mkdir -p /home/imgq/.keras/models

CMD ["imgq", "worker", "--loglevel", "INFO"]
