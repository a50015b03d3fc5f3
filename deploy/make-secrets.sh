#!/bin/sh
# The three secret files of docker-compose.yml (docs/deployment-secrets.md):
#   SECRETS_DIR/redis_password   a new random Redis password (48 hex digits: URL-safe), for Redis (requirepass)
#   SECRETS_DIR/broker_url       redis://:PASSWORD@redis:6379/0, for imgq (IMGQ_BROKER_URL_FILE)
#   SECRETS_DIR/aws_credentials  boto3's shared credentials file, for imgq (AWS_SHARED_CREDENTIALS_FILE) and the s3
#                                profile's SeaweedFS: a new random key pair under [default]
#
#   sh deploy/make-secrets.sh [--no-aws-keys] [SECRETS_DIR]     (default ./secrets)
#
# Writes the files that are missing and keeps those that exist, never replacing one: run it again on a folder
# made before aws_credentials existed, and it adds that file alone. redis_password and broker_url hold the same
# password, so they are made together: one without the other is refused (remove it to make both anew).
# --no-aws-keys writes an aws_credentials holding no keys, for imgq on AWS with a task, pod or instance role:
# boto3 finds none in it and goes on down its chain to the role (the s3 profile's store refuses to start with
# it). Keys of a store of your own instead: replace the two values in the file.
#
# The folder is 0700: only its owner gets in. The files are 0644, because Compose bind-mounts each one as it
# is and the containers read them as their own users (redis, imgq, seaweedfs), who reach them only through the
# mount. Each file is written under a temporary name and renamed: a container starting meanwhile never reads
# half of one.
set -eu
aws_keys=random
if [ "${1:-}" = --no-aws-keys ]; then
    aws_keys=none
    shift
fi
case "${1:-}" in
    -*) echo "$0: unknown option $1 (usage: $0 [--no-aws-keys] [SECRETS_DIR])" >&2; exit 2 ;;
esac
dir=${1:-${SECRETS_DIR:-./secrets}}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

# random BYTES: that many random bytes, in hex digits
random() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# put NAME TEXT: TEXT and a newline into $dir/NAME, 0644, through a temporary name
put() {
    printf '%s\n' "$2" >"$dir/.$1.tmp"
    chmod 644 "$dir/.$1.tmp"
    mv "$dir/.$1.tmp" "$dir/$1"
    wrote="$wrote $dir/$1"
}

aws_credentials() {
    if [ "$aws_keys" = none ]; then
        cat <<EOF
# No keys (deploy/make-secrets.sh --no-aws-keys): boto3 finds none here and goes on down its chain, to a
# task, pod or instance role. Keys of your own go under [default]:
#   [default]
#   aws_access_key_id = ...
#   aws_secret_access_key = ...
EOF
    else
        cat <<EOF
# The S3 keys of imgq's services (boto3 reads this file through AWS_SHARED_CREDENTIALS_FILE) and of the s3
# profile's SeaweedFS, its one identity: a random pair from deploy/make-secrets.sh. For a store of your own,
# replace both values with its keys; for a task, pod or instance role, remove both lines.
[default]
aws_access_key_id = $(random 10)
aws_secret_access_key = $(random 24)
EOF
    fi
}

wrote="" kept=""
if [ -e "$dir/redis_password" ] && [ -e "$dir/broker_url" ]; then
    kept="$kept $dir/redis_password $dir/broker_url"
elif [ -e "$dir/redis_password" ] || [ -e "$dir/broker_url" ]; then
    echo "$0: only one of $dir/redis_password and $dir/broker_url exists; remove it to make both anew" >&2
    exit 1
else
    password=$(random 24)
    put redis_password "$password"
    put broker_url "redis://:$password@redis:6379/0"
fi
if [ -e "$dir/aws_credentials" ]; then
    kept="$kept $dir/aws_credentials"
else
    put aws_credentials "$(aws_credentials)"
fi
if [ -n "$wrote" ]; then echo "wrote$wrote"; fi
if [ -n "$kept" ]; then echo "kept$kept, which exist already (remove a file to make a new one)"; fi
