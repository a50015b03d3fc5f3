#!/bin/sh
# Stand-ins for the two public base images of the deployment, built from Debian packages on a machine that
# cannot reach a public image registry (tests/test_compose.py uses them; docs/deployment.md says how):
#
#   python  (default name localhost/imgq-base-python:3.11): Debian bookworm's Python 3.11 with pip, standing in
#           for python:3.11-slim: `python` and `pip` on the PATH, `pip install` into /usr/local (no PEP 668
#           refusal, as in the official image), useradd, CA certificates.
#   redis   (default name localhost/imgq-base-redis:7): Debian's redis-server and redis-cli, standing in for
#           redis:7-alpine: `sh`, the entrypoint docker-entrypoint.sh (which runs redis-server as the redis
#           user when started as root, as the official one does), working directory /data.
#
#   sh deploy/build-bases.sh [--engine podman|docker] [--python NAME] [--redis NAME] [--force]
#
# Then: podman build --build-arg BASE_IMAGE=localhost/imgq-base-python:3.11 ...; REDIS_IMAGE=localhost/imgq-base-redis:7
# for the compose file. Needs root (debootstrap) and about 90 s per image; an image that exists is kept
# unless --force. The roots come from Debian's mirror (DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -eu

ENGINE=podman
PYTHON_IMAGE=localhost/imgq-base-python:3.11
REDIS_IMAGE=localhost/imgq-base-redis:7
FORCE=0
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm  # its python3 is 3.11, the version of the Dockerfile's default base

while [ $# -gt 0 ]; do
    case $1 in
        --engine) ENGINE=$2; shift 2 ;;
        --python) PYTHON_IMAGE=$2; shift 2 ;;
        --redis) REDIS_IMAGE=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        *) echo "usage: $0 [--engine podman|docker] [--python NAME] [--redis NAME] [--force]" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "$0: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "$0: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
command -v "$ENGINE" >/dev/null || { echo "$0: $ENGINE is missing" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/imgq-bases.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

exists() {
    if [ "$ENGINE" = podman ]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

# debootstrap ROOT PACKAGES: a minimal Debian root, without apt's caches and lists (nothing to install later:
# the images install with pip, or not at all).
bootstrap() {
    debootstrap --variant=minbase --include="$2" "$SUITE" "$1" "$MIRROR" >"$1.log" 2>&1 || {
        tail -20 "$1.log" >&2; echo "$0: debootstrap failed (log above)" >&2; exit 1; }
    rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/var/log/* "$1"/tmp/*
}

# image ROOT NAME INSTRUCTIONS...: the root as an image (FROM scratch, the root added whole), with the
# Dockerfile instructions given (ENV, CMD, ...). A build rather than `import`: the same for podman and docker.
image() {
    root=$1 name=$2; shift 2
    context=$root.context
    mkdir -p "$context"
    tar -C "$root" --numeric-owner -cf "$context/root.tar" .
    { echo "FROM scratch"; echo "ADD root.tar /"; for line in "$@"; do echo "$line"; done; } >"$context/Containerfile"
    "$ENGINE" build --quiet -f "$context/Containerfile" -t "$name" "$context" >/dev/null
    rm -rf "$context"
    echo "built $name"
}

build_python() {
    root=$WORK/python
    bootstrap "$root" python3,python3-pip,python-is-python3,ca-certificates
    # The official image's pip installs into /usr/local without complaint; Debian's refuses (PEP 668) unless
    # this marker is gone. Debian's pip then installs into /usr/local/lib/python3.11/dist-packages.
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    ln -sf pip3 "$root"/usr/bin/pip 2>/dev/null || true
    image "$root" "$PYTHON_IMAGE" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'ENV LANG=C.UTF-8' \
        'CMD ["python3"]'
}

build_redis() {
    root=$WORK/redis
    bootstrap "$root" redis-server,redis-tools
    # As the official image's entrypoint: redis-server started as root runs as the redis user, owning /data.
    mkdir -p "$root"/data
    chroot "$root" chown redis:redis /data
    cat >"$root"/usr/local/bin/docker-entrypoint.sh <<'SCRIPT'
#!/bin/sh
# Stand-in for the redis image's entrypoint (deploy/build-bases.sh): options alone run redis-server; redis-server
# started as root drops to the redis user (setpriv, from util-linux) after giving it /data.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
SCRIPT
    chmod 755 "$root"/usr/local/bin/docker-entrypoint.sh
    image "$root" "$REDIS_IMAGE" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'WORKDIR /data' \
        'ENTRYPOINT ["docker-entrypoint.sh"]' 'CMD ["redis-server"]' 'EXPOSE 6379'
}

pids=""
if [ "$FORCE" = 1 ] || ! exists "$PYTHON_IMAGE"; then build_python & pids="$pids $!"; else echo "kept $PYTHON_IMAGE"; fi
if [ "$FORCE" = 1 ] || ! exists "$REDIS_IMAGE"; then build_redis & pids="$pids $!"; else echo "kept $REDIS_IMAGE"; fi
status=0
for pid in $pids; do wait "$pid" || status=1; done
exit $status
