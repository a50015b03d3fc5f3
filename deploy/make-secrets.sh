#!/bin/sh
# The two secret files of docker-compose.yml, with a new random Redis password (48 hex digits: URL-safe):
#   SECRETS_DIR/redis_password   the password, for Redis (requirepass)
#   SECRETS_DIR/broker_url       redis://:PASSWORD@redis:6379/0, for imgq (IMGQ_BROKER_URL_FILE)
#
#   sh deploy/make-secrets.sh [SECRETS_DIR]     (default ./secrets; existing files are kept, never replaced)
#
# The folder is 0700: only its owner gets in. The files are 0644, because Compose bind-mounts each one as it
# is and the containers read them as their own users (redis, imgq), who reach them only through the mount.
set -eu
dir=${1:-${SECRETS_DIR:-./secrets}}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"
if [ -e "$dir/redis_password" ] || [ -e "$dir/broker_url" ]; then
    echo "$0: $dir/redis_password or $dir/broker_url exists already; remove both to make new ones" >&2
    exit 1
fi
password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$password" >"$dir/redis_password"
printf 'redis://:%s@redis:6379/0\n' "$password" >"$dir/broker_url"
chmod 644 "$dir/redis_password" "$dir/broker_url"
echo "wrote $dir/redis_password and $dir/broker_url"
