"""The deployment files, tested without a Docker engine.

- docker-compose.yml validates against the Compose specification's JSON schema (the copy check-jsonschema
  ships), as written and after the ${...} interpolation `docker compose` does with a .env made from
  .env.example.
- .env.example names every imgq setting and every variable the compose file reads.
- The Dockerfile's health check (`python -m worker.health`) tells a live worker from none.
- Every service's command runs here as a plain process with the service's own environment: the compose
  file's Redis command (password, append-only), a worker, beat, and the producer classifying a folder.
  Only what Docker itself would provide is translated: the service name ``redis`` becomes 127.0.0.1 on a free
  port, and each volume's mount point inside a container becomes a folder under the test's tmp_path.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import redis
from ruamel.yaml import YAML

from imgq.results.store import ResultStore
from imgq.settings import Settings, env_var
from tests import imagegen
from tests.processes import (
    Process,
    clean_env,
    free_port,
    free_ports,
    redis_server_binary,
    scrape_when,
    wait_for_redis,
    wait_for_workers,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
MAKE_SECRETS = ROOT / "deploy" / "make-secrets.sh"
IMGQ = str(Path(sys.executable).parent / "imgq")


# -- the compose file as `docker compose` reads it ------------------------------------------------------------


def compose_schema() -> dict:
    """The Compose specification's JSON schema, as vendored by check-jsonschema (`vendor.compose-spec`)."""
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    return schema


def validate(config: dict) -> None:
    """Raises jsonschema.ValidationError when ``config`` breaks the Compose specification."""
    validator = jsonschema.Draft202012Validator(compose_schema(),
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(config)


def load_compose() -> dict:
    """docker-compose.yml with its anchors and merge keys resolved, before interpolation."""
    return YAML(typ="safe").load(COMPOSE.read_text())


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped), as `docker compose` reads .env."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=VALUE: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


_VARIABLE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))")


def interpolate(value, env: dict[str, str]):
    """``value`` (any YAML structure) with ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
    ${VAR?error}, $VAR and $$ substituted in its strings, as the Compose specification defines them."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, str):
        return _VARIABLE.sub(lambda match: _substitute(match, env), value)
    return value


def _substitute(match: re.Match, env: dict[str, str]) -> str:
    if match["dollar"]:
        return "$"
    name, op, arg = match["name"] or match["bare"], match["op"], match["arg"]
    current = env.get(name)
    missing = not current if op and op.startswith(":") else current is None
    if op and op.endswith("?") and missing:
        raise ValueError(f"required variable {name} is missing: {arg}")
    if op and op.endswith("-") and missing:
        return arg
    return current or ""


def variables_read(text: str) -> set[str]:
    """Names of the variables that ``text`` interpolates."""
    return {m["name"] or m["bare"] for m in _VARIABLE.finditer(text) if not m["dollar"]}


# -- static checks -------------------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification():
    validate(load_compose())
    env = read_dotenv(ENV_EXAMPLE)
    config = interpolate(load_compose(), env)
    validate(config)
    assert set(config["services"]) == {"redis", "worker", "beat", "producer", "seaweedfs"}
    for name in ("worker", "beat", "producer"):  # the URL, password and all, is the broker_url secret
        assert config["services"][name]["environment"]["IMGQ_BROKER_URL_FILE"] == "/run/secrets/broker_url"
        assert config["services"][name]["secrets"] == ["broker_url", "aws_credentials"]
        assert "IMGQ_BROKER_URL" not in config["services"][name]["environment"]
        # boto3's shared credentials file is the aws_credentials secret (the S3 keys)
        assert config["services"][name]["environment"]["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/aws_credentials"


def test_compose_file_reads_as_podman_compose_1_0_reads_it():
    """podman-compose 1.0 (Debian bookworm's, which tests/test_compose.py runs) leaves ${VAR:-} and ${VAR-},
    an empty default, as they are, and ignores `healthcheck: disable`: write ${VAR} and test: ["NONE"]."""
    text = COMPOSE.read_text()
    assert not re.findall(r"\$\{\w+:?-\}", text)
    assert not [name for name, service in load_compose()["services"].items() if "disable" in service.get(
        "healthcheck", {})]


def test_the_schema_rejects_a_broken_compose_file():
    config = load_compose()
    broken = copy.deepcopy(config)
    broken["services"]["worker"]["enviroment"] = broken["services"]["worker"].pop("environment")  # a typo
    with pytest.raises(jsonschema.ValidationError, match="enviroment"):
        validate(broken)
    broken = copy.deepcopy(config)
    broken["services"]["worker"]["stop_grace_period"] = ["2m"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_compose_services_are_what_the_deployment_needs():
    services = interpolate(load_compose(), read_dotenv(ENV_EXAMPLE))["services"]
    redis_command = services["redis"]["command"]
    assert redis_command[:2] == ["sh", "-c"]
    assert "redis-server - --appendonly yes <<EOF\nrequirepass $(cat /run/secrets/redis_password)\n" in redis_command[2]
    assert services["redis"]["secrets"] == ["redis_password"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # so that --scale worker=N works
    assert worker["environment"]["IMGQ_ALLOWED_ROOTS"] == "/data"
    assert services["producer"]["entrypoint"] == ["imgq"] and "tools" in services["producer"]["profiles"]
    assert services["beat"]["command"][:2] == ["imgq", "beat"]
    mounts = {name: {v.split(":")[1] for v in s["volumes"]} for name, s in services.items()}
    assert {"/data", "/dumps"} <= mounts["worker"] and {"/data", "/dumps", "/reports"} <= mounts["producer"]
    assert "/data" in mounts["beat"]
    for name in ("beat", "producer"):  # the image's check looks for a worker: they have none
        # test: [NONE] rather than disable: true, which podman-compose 1.0 ignores (both are the spec's)
        assert services[name]["healthcheck"] == {"test": ["NONE"]}


def test_the_s3_profile_adds_a_seaweedfs_store_that_wants_its_keys(tmp_path):
    """The s3 profile's SeaweedFS: started only with `--profile s3`, its image the Dockerfile's seaweedfs target,
    its data in a named volume, no port on the host, its keys from the aws_credentials secret (none in the file,
    the image or the container's environment). Its command, run here with a stand-in `weed` that prints its
    arguments and the keys it was given: it refuses to start, in one line, without both keys under [default]
    (the store would let anyone in), and binds only the S3 gateway beyond loopback, telemetry off.
    tests/test_compose.py runs the real one."""
    services = interpolate(load_compose(), read_dotenv(ENV_EXAMPLE))["services"]
    store = services["seaweedfs"]
    assert store["profiles"] == ["s3"] and "ports" not in store and store["expose"] == ["8333"]
    assert store["build"]["target"] == "seaweedfs"
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS seaweedfs$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert store["volumes"] == ["seaweedfs-data:/data"] and "seaweedfs-data" in load_compose()["volumes"]
    assert "environment" not in store and store["secrets"] == ["aws_credentials"]
    assert not [s for s in services.values() if "depends_on" in s and "seaweedfs" in s["depends_on"]]
    stand_in = tmp_path / "bin" / "weed"
    stand_in.parent.mkdir()
    stand_in.write_text('#!/bin/sh\necho "$AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY $*"\n')
    stand_in.chmod(0o755)
    secret = tmp_path / "aws_credentials"

    def start(text: str | None) -> subprocess.CompletedProcess:
        secret.unlink(missing_ok=True)
        if text is not None:
            secret.write_text(text)
        env = {k: v for k, v in clean_env(PATH=f"{stand_in.parent}:/usr/bin:/bin").items() if not k.startswith("AWS_")}
        script = store["command"][2].replace("/run/secrets/aws_credentials", str(secret))
        return subprocess.run([*store["command"][:2], script], env=env, capture_output=True, text=True, timeout=30)

    subprocess.run(["sh", str(MAKE_SECRETS), "--no-aws-keys", str(tmp_path / "role")], check=True, capture_output=True)
    for text in (None, "", (tmp_path / "role" / "aws_credentials").read_text(),  # no file, empty, a role's
                 "[default]\naws_access_key_id = k\n", "[default]\naws_secret_access_key = s\n",  # one key
                 "[default]\naws_access_key_id =\naws_secret_access_key = s\n",  # one empty
                 "[other]\naws_access_key_id = k\naws_secret_access_key = s\n[default]\n",  # another profile's
                 "# [default]\n# aws_access_key_id = k\n# aws_secret_access_key = s\n"):  # commented out
        refused = start(text)
        assert refused.returncode == 2 and refused.stdout == "", text
        assert refused.stderr.strip().splitlines() == [
            "seaweedfs: no aws_access_key_id and aws_secret_access_key under [default] in the aws_credentials secret "
            "(SECRETS_DIR/aws_credentials; sh deploy/make-secrets.sh writes a pair): without them the store would "
            "let anyone in"], text
    key, secret_key, *argv = start("[default]\r\naws_access_key_id=k \r\naws_secret_access_key =  s\r\n[x]\n"
                                   "aws_access_key_id = other\n").stdout.split()
    assert (key, secret_key) == ("k", "s")
    assert argv[:2] == ["server", "-dir=/data"]
    assert {"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", "-s3.ip.bind=0.0.0.0", "-s3.port=8333",
            "-master.telemetry=false"} <= set(argv)
    # make-secrets.sh's pair: what the store is given is what boto3 reads from the same file in imgq's services.
    subprocess.run(["sh", str(MAKE_SECRETS), str(tmp_path / "made")], check=True, capture_output=True)
    made = (tmp_path / "made" / "aws_credentials").read_text()
    given = start(made).stdout.split()[:2]
    assert given == boto3_keys(tmp_path / "made" / "aws_credentials")
    assert given[1] not in json.dumps(services)


def boto3_keys(path: Path) -> list[str] | None:
    """[access key, secret key] as boto3 finds them with AWS_SHARED_CREDENTIALS_FILE=path and nothing else (no
    environment keys, no config file, no instance metadata); None when it finds none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(path), AWS_CONFIG_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
               HOME=str(path.parent))
    script = ("import json, boto3; c = boto3.session.Session().get_credentials(); "
              "print(json.dumps(c and [c.access_key, c.secret_key]))")
    found = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)


def test_no_password_on_any_command_line_nor_in_any_environment():
    """`ps` shows command lines and `docker inspect` commands, health checks and environments: the password is
    in none of them, nor anywhere in the compose file or what .env sets: Redis reads it from the secret
    redis_password, imgq its URL from the secret broker_url (IMGQ_BROKER_URL_FILE), both files under
    /run/secrets. tests/test_compose.py checks the running containers."""
    env = {**read_dotenv(ENV_EXAMPLE), "SECRETS_DIR": "/somewhere"}
    assert not [name for name in env if "PASSWORD" in name]
    config = interpolate(load_compose(), env)
    assert config["secrets"] == {"redis_password": {"file": "/somewhere/redis_password"},
                                 "broker_url": {"file": "/somewhere/broker_url"},
                                 "aws_credentials": {"file": "/somewhere/aws_credentials"}}
    assert "requirepass $(cat /run/secrets/redis_password)" in config["services"]["redis"]["command"][2]
    assert "redis:6379" not in json.dumps(config)  # the URL is in no environment: only in the secret


AWS_KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def test_no_s3_key_in_any_environment_and_each_secret_mounted_where_it_is_read():
    """The S3 keys are in no service's environment (which `docker inspect` shows), whatever .env sets: imgq's
    services read them from the aws_credentials secret (AWS_SHARED_CREDENTIALS_FILE), the s3 profile's store
    from the same file. Every /run/secrets/NAME a service names (its command, environment or health check) is a
    secret it mounts, and every secret it mounts is one of the file's."""
    env = read_dotenv(ENV_EXAMPLE)
    assert not [name for name in env if name in AWS_KEY_VARIABLES]
    config = interpolate(load_compose(), {**env, **{name: f"SENTINEL-{name}" for name in AWS_KEY_VARIABLES}})
    assert "SENTINEL" not in json.dumps(config)  # set in .env, passed on to no service
    for name, service in config["services"].items():
        assert not [key for key in service.get("environment", {}) if key in AWS_KEY_VARIABLES], name
        read = set(re.findall(r"/run/secrets/(\w+)", json.dumps({k: service.get(k) for k in (
            "command", "entrypoint", "environment", "healthcheck")})))
        assert read == set(service.get("secrets", [])), name
        assert read <= set(config["secrets"]), name
    readers = {name for name, service in config["services"].items() if "aws_credentials" in service.get("secrets", [])}
    assert readers == {"worker", "beat", "producer", "seaweedfs"}


def test_env_example_documents_every_setting_and_compose_variable():
    text = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*(\w+)[=:]", text, flags=re.MULTILINE))
    settings = {env_var(f.name) for f in dataclasses.fields(Settings)}
    assert settings - documented == set()
    assert variables_read(COMPOSE.read_text()) - documented == set()


def test_every_setting_set_in_dotenv_reaches_every_service():
    """A setting in .env reaches the services: the compose file passes each one on, except those it fixes."""
    env = read_dotenv(ENV_EXAMPLE)
    fixed = {"IMGQ_BROKER_URL", "IMGQ_BROKER_URL_FILE", "IMGQ_STATE_DIR", "IMGQ_DUMP_ROOT", "IMGQ_SINK_DIR"}
    assignable = {name for name in env if name.startswith("IMGQ_")}
    assert assignable == {env_var(f.name) for f in dataclasses.fields(Settings)} - fixed
    worker_only = ("IMGQ_METRICS_", "IMGQ_ALLOWED_ROOTS")  # what only a worker reads
    for name in assignable:
        config = interpolate(load_compose(), {**env, name: "SENTINEL"})
        services = ("worker",) if name.startswith(worker_only) else ("worker", "beat", "producer")
        for service in services:
            assert config["services"][service]["environment"][name] == "SENTINEL", (service, name)


def test_dockerfile_slim_non_root_health_checked_weights_build_arg():
    text = DOCKERFILE.read_text()
    # The base is a build argument (a stand-in where the public registry cannot be reached:
    # deploy/build-bases.sh), python:3.11-slim by default.
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim$", text, flags=re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, flags=re.MULTILINE)
    # The CA bundle for pip is a build secret, mounted for the RUN that needs it: never a layer.
    assert "--mount=type=secret,id=pip_cert" in text and not re.search(r"^(COPY|ADD) .*cert", text, flags=re.M)
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*CMD \[\"python\", \"-m\", \"worker.health\"\]", text, flags=re.MULTILINE)
    assert re.search(r"^ARG BAKE_WEIGHTS", text, flags=re.MULTILINE)
    assert "pip install '.[worker,learn]'" in text  # tensorflow-cpu, see pyproject.toml; scikit-learn for imgq learn
    assert "tensorflow-cpu" in (ROOT / "pyproject.toml").read_text()


def test_dockerfile_openvino_target_installs_the_worker_extra_without_tensorflow():
    """The openvino target lists the worker extra's packages itself, TensorFlow left out: they must agree."""
    import tomllib

    text = DOCKERFILE.read_text()
    stage = text[text.index("FROM base AS openvino"):]
    listed = set(re.findall(r"'([a-z-]+[<>=][^']+)'", stage[:stage.index("COPY imgq")]))
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["worker"]
    assert listed == {r for r in extra if not r.startswith(("tensorflow", "imgq["))}
    for other in (r for r in extra if r.startswith("imgq[")):  # another extra of imgq's own: installed as .[x]
        assert f"'.{other[len('imgq'):]}'" in stage[:stage.index("COPY imgq")]
    assert "FROM full AS converted" in text and text.rstrip().endswith("FROM full")  # the default: the full image


def make_secrets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(MAKE_SECRETS), *args], capture_output=True, text=True, timeout=30)


def test_make_secrets_writes_a_random_password_and_keeps_what_exists(tmp_path):
    """deploy/make-secrets.sh: a new URL-safe password each time, in both files; a new random S3 key pair in
    aws_credentials, which boto3 reads; the folder closed to others, the files readable through their mounts;
    existing secrets never replaced."""
    made = [tmp_path / "a", tmp_path / "b"]
    for folder in made:
        assert make_secrets(str(folder)).returncode == 0
    passwords = [(folder / "redis_password").read_text().strip() for folder in made]
    assert passwords[0] != passwords[1] and all(re.fullmatch("[0-9a-f]{48}", p) for p in passwords)
    assert (made[0] / "broker_url").read_text() == f"redis://:{passwords[0]}@redis:6379/0\n"
    assert Settings(broker_url=(made[0] / "broker_url").read_text().strip()).broker_url.endswith("@redis:6379/0")
    keys = [boto3_keys(folder / "aws_credentials") for folder in made]
    assert keys[0][0] != keys[1][0] and keys[0][1] != keys[1][1]
    assert all(re.fullmatch("[0-9a-f]{20}", k) and re.fullmatch("[0-9a-f]{48}", s) for k, s in keys)
    assert (made[0].stat().st_mode & 0o777) == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in made[0].iterdir()} == {
        "redis_password": 0o644, "broker_url": 0o644, "aws_credentials": 0o644}  # no temporary file left
    before = {p.name: p.read_text() for p in made[0].iterdir()}
    again = make_secrets(str(made[0]))
    assert again.returncode == 0 and "kept" in again.stdout and "wrote" not in again.stdout
    assert {p.name: p.read_text() for p in made[0].iterdir()} == before


def test_make_secrets_adds_aws_credentials_to_a_folder_made_before_it(tmp_path):
    """A folder made before aws_credentials existed (redis_password and broker_url only) gets it added, the
    password kept; one of the password's two files without the other is refused, and nothing written."""
    folder = tmp_path / "secrets"
    assert make_secrets(str(folder)).returncode == 0
    (folder / "aws_credentials").unlink()
    before = {p.name: p.read_text() for p in folder.iterdir()}
    added = make_secrets(str(folder))
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines()[0] == f"wrote {folder}/aws_credentials"
    assert {p.name: p.read_text() for p in folder.iterdir() if p.name != "aws_credentials"} == before
    assert boto3_keys(folder / "aws_credentials")
    (folder / "broker_url").unlink()
    (folder / "aws_credentials").unlink()
    refused = make_secrets(str(folder))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().endswith(f"only one of {folder}/redis_password and {folder}/broker_url exists; "
                                           "remove it to make both anew")
    assert sorted(p.name for p in folder.iterdir()) == ["redis_password"]


def test_make_secrets_no_aws_keys_leaves_boto3_to_a_role(tmp_path):
    """--no-aws-keys: an aws_credentials with no keys, so that the file Compose needs exists and boto3 goes on
    down its chain (to a role on AWS; to nothing here). Anything else starting with - is refused."""
    assert make_secrets("--no-aws-keys", str(tmp_path / "s")).returncode == 0
    assert boto3_keys(tmp_path / "s" / "aws_credentials") is None
    assert (tmp_path / "s" / "broker_url").exists()
    wrong = make_secrets("--no-keys", str(tmp_path / "t"))
    assert wrong.returncode == 2 and "unknown option --no-keys" in wrong.stderr and not (tmp_path / "t").exists()


def test_health_check_needs_a_live_worker_on_this_host(settings, store):
    from worker.health import check

    healthy, reason = check(settings, "host-a")
    assert not healthy and "no live worker on host host-a" in reason
    store.redis.set(store.keys.worker("w@a:1"), json.dumps({"hostname": "w@a", "host": "host-b"}), ex=10)
    assert not check(settings, "host-a")[0]
    store.redis.set(store.keys.worker("w@a:2"), json.dumps({"hostname": "w@a", "host": "host-a"}), ex=10)
    assert check(settings, "host-a") == (True, "alive: w@a")
    unreachable = dataclasses.replace(settings, broker_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    healthy, reason = check(unreachable, "host-a")
    assert not healthy and "cannot read heartbeats" in reason and "hunter2" not in reason


# -- the services as plain processes -------------------------------------------------------------------------


@dataclasses.dataclass
class PlainDeployment:
    """The interpolated compose config, and how its container paths and host names map to this machine."""

    config: dict
    root: Path
    redis_port: int
    dotenv: dict[str, str] = dataclasses.field(default_factory=dict)  # what Compose reads secrets from

    def secrets(self) -> dict[str, Path]:
        """/run/secrets/NAME in a container -> a file here holding what Compose would put there (the host
        name redis translated, as everywhere)."""
        mapping = {}
        for name, secret in self.config.get("secrets", {}).items():
            path = self.root / "run-secrets" / name
            if not path.exists():  # written once: a process may be reading it
                path.parent.mkdir(parents=True, exist_ok=True)
                value = self.dotenv[secret["environment"]] if "environment" in secret \
                    else (self.root / secret["file"]).read_text()
                path.write_text(value.replace("@redis:6379", f"@127.0.0.1:{self.redis_port}"))
            mapping[f"/run/secrets/{name}"] = path
        return mapping

    def mounts(self, service: str) -> dict[str, Path]:
        """Mount point in the container -> folder here, for each volume of ``service``."""
        mapping = {}
        for volume in self.config["services"][service].get("volumes", []):
            source, target = volume.split(":")[:2]
            named = not source.startswith((".", "/"))
            host = self.root / "volumes" / source if named else (self.root / source).resolve()
            host.mkdir(parents=True, exist_ok=True)
            mapping[target] = host
        return mapping

    def translate(self, service: str, value: str) -> str:
        """A value of the service's command or environment, as it reads outside a container."""
        value = value.replace("@redis:6379", f"@127.0.0.1:{self.redis_port}")
        for target, host in self.secrets().items():  # also inside a shell script
            value = value.replace(target, str(host))
        for target, host in sorted(self.mounts(service).items(), key=lambda item: -len(item[0])):
            if value == target or value.startswith(target + "/"):
                return str(host) + value[len(target):]
        return value

    def env(self, service: str) -> dict[str, str]:
        environment = self.config["services"][service].get("environment", {})
        # A home of its own, as a container has: the worker's state (the OpenVINO cache, auto's record) goes to
        # the test's folder, never the account's ~/.local/state/imgq.
        home = self.root / "home" / service
        home.mkdir(parents=True, exist_ok=True)
        return clean_env(HOME=str(home), XDG_STATE_HOME="",
                         **{key: self.translate(service, str(value)) for key, value in environment.items()})

    def argv(self, service: str, *run_args: str) -> list[str]:
        """The service's entrypoint and command (or ``run_args``, as `docker compose run` passes them)."""
        spec = self.config["services"][service]
        argv = [*spec.get("entrypoint", []), *(run_args or spec.get("command", []))]
        argv = [self.translate(service, arg) for arg in argv]
        return [IMGQ if argv[0] == "imgq" else argv[0], *argv[1:]]

    def start(self, service: str) -> Process:
        return Process(self.argv(service), self.env(service), self.root / "logs" / f"{service}.log").start()

    def run(self, service: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """`docker compose run --rm SERVICE ARGS...`"""
        return subprocess.run(self.argv(service, *args), env=self.env(service), capture_output=True, text=True,
                              timeout=timeout)


def start_redis_service(deployment: PlainDeployment) -> Process:
    """The compose file's Redis command, on 127.0.0.1 and a free port, its /data in a folder here.

    What the redis image provides is provided here: `redis-server` (on 127.0.0.1 and the port, with the
    arguments the command gives it) and `docker-entrypoint.sh` (which only runs its arguments here: the
    image's also drops root for the redis user)."""
    argv = deployment.argv("redis")
    assert argv[:2] == ["sh", "-c"]
    service = deployment.config["services"]["redis"]
    env = clean_env(**service.get("environment", {}), PATH=f"{image_commands(deployment)}:{os.environ['PATH']}")
    return Process(argv, env, deployment.root / "logs" / "redis.log", cwd=deployment.mounts("redis")["/data"]).start()


def image_commands(deployment: PlainDeployment) -> Path:
    folder = deployment.root / "redis-image-bin"
    folder.mkdir(exist_ok=True)
    commands = {"docker-entrypoint.sh": 'exec "$@"',
                "redis-server": f'exec {redis_server_binary()} "$@" --port {deployment.redis_port} --bind 127.0.0.1'}
    for name, line in commands.items():
        (folder / name).write_text(f"#!/bin/sh\n{line}\n")
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    good = imagegen.write_formats(folder / "photos" / "a")
    good += [imagegen.save(folder / "photos" / f"{i}.png", size=(64, 48), seed=i) for i in range(5)]
    broken = {p: code for p, code in imagegen.write_broken(folder / "photos" / "broken").items() if p.exists()}
    return folder, good, broken


@pytest.mark.slow
def test_compose_services_run_as_plain_processes_and_classify_a_folder(tmp_path, photos):
    photos_dir, good, broken = photos
    subprocess.run(["sh", str(MAKE_SECRETS), str(tmp_path / "secrets")], check=True, capture_output=True)
    password = (tmp_path / "secrets" / "redis_password").read_text().strip()
    s3_secret = boto3_keys(tmp_path / "secrets" / "aws_credentials")[1]
    outside = imagegen.save(tmp_path / "outside.png", seed=9)  # not under /data: the worker must refuse it
    metrics_port, redis_port = free_ports(2)
    env = {**read_dotenv(ENV_EXAMPLE), "SECRETS_DIR": str(tmp_path / "secrets"), "PHOTOS_DIR": str(photos_dir),
           "REPORTS_DIR": str(tmp_path / "reports"), "IMGQ_WEIGHTS": "random", "IMGQ_BATCH_SIZE": "4",
           "IMGQ_METRICS_PORT": str(metrics_port), "IMGQ_LOG_FORMAT": "json", "IMGQ_HEARTBEAT_SECONDS": "1"}
    config = interpolate(load_compose(), env)
    validate(config)
    deployment = PlainDeployment(config, tmp_path, redis_port, env)
    processes = []
    try:
        redis_process = start_redis_service(deployment)
        processes.append(redis_process)
        url = Settings.from_env(deployment.env("worker")).broker_url  # from the broker_url secret
        for service in ("worker", "beat", "producer"):  # boto3's keys: the aws_credentials secret
            assert boto3_keys(Path(deployment.env(service)["AWS_SHARED_CREDENTIALS_FILE"]))[1] == s3_secret
        wait_for_redis(url, redis_process)
        check_redis_service(deployment, url, redis_process.pid)

        worker = deployment.start("worker")
        processes.append(worker)
        health = [sys.executable, "-m", "worker.health"]  # the Dockerfile's HEALTHCHECK
        assert subprocess.run(health, env=deployment.env("worker"), capture_output=True).returncode == 1
        settings = Settings.from_env(deployment.env("worker"))
        store = ResultStore.from_settings(settings)
        wait_for_workers(store, [worker])
        checked = subprocess.run(health, env=deployment.env("worker"), capture_output=True, text=True)
        assert checked.returncode == 0 and checked.stdout.startswith("healthy: alive: celery@"), checked.stdout


        submitted = deployment.run("producer", "submit", "/data/photos", str(outside), "--wait")
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip()
        exported = deployment.run("producer", "results", job, "-o", "/reports/records.jsonl")
        assert exported.returncode == 0, exported.stderr
        records = [json.loads(line) for line in (tmp_path / "reports" / "records.jsonl").read_text().splitlines()]
        check_records(records, good, broken, outside)

        fleet = json.loads(deployment.run("producer", "status", "--workers", "--json").stdout)
        assert [(w["pool"], w["concurrency"]) for w in fleet["workers"]] == [("threads", 4)]
        assert fleet["jobs_in_flight"] == [] and fleet["queued_batches"] == 0
        # The job is done once its last records are stored; the task counts them just after: waited for.
        samples = scrape_when(int(env["IMGQ_METRICS_PORT"]),
                              lambda samples: samples["imgq_images_processed_total"] >= len(records))
        assert samples["imgq_images_processed_total"] == len(records)

        scheduled = deployment.run("producer", "schedule", "add", "photos", "/data/photos", "--every", "1h")
        assert scheduled.returncode == 0, scheduled.stderr
        beat = deployment.start("beat")
        processes.append(beat)
        check_beat_fired(deployment, beat)
    finally:
        for process in reversed(processes):
            process.stop()
    for secret in (password, s3_secret):
        check_logs(worker.output(), secret)
        assert secret not in beat.output()
        assert secret not in submitted.stdout + submitted.stderr


def check_beat_fired(deployment: PlainDeployment, beat: Process, timeout: float = 120.0) -> None:
    """Beat fired the schedule's first tick at once, a worker ran it, and the job it submitted completed."""
    deadline = time.monotonic() + timeout
    while True:
        assert beat.alive(), beat.output()[-3000:]
        shown = json.loads(deployment.run("producer", "schedule", "show", "photos", "--json").stdout)
        runs = [r for r in shown["runs"] if r["outcome"] == "submitted"]
        if runs and runs[0]["job_status"]["state"] == "done":
            break
        assert time.monotonic() < deadline, f"no tick ran: {shown['runs']} {beat.output()[-2000:]}"
        time.sleep(0.5)
    assert "Sending due task photos (imgq.scheduled_scan)" in beat.output()


def check_redis_service(deployment: PlainDeployment, url: str, pid: int) -> None:
    """The compose file's Redis wants its password and keeps an append-only file; its health check passes."""
    anonymous = redis.Redis(host="127.0.0.1", port=deployment.redis_port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    assert redis.Redis.from_url(url).config_get("appendonly") == {"appendonly": "yes"}
    password = redis.connection.parse_url(url)["password"]
    # The shell execs down to redis-server, in the process started: what `ps` and /proc show of it.
    assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(redis_server_binary())
    for part in ("cmdline", "environ"):
        assert password.encode() not in Path(f"/proc/{pid}/{part}").read_bytes(), part
    kind, script = deployment.config["services"]["redis"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    if shutil.which("redis-cli"):  # logging in with REDISCLI_AUTH, from the secret
        script = deployment.translate("redis", script).replace("redis-cli", f"redis-cli -p {deployment.redis_port}")
        assert subprocess.run(["sh", "-c", script], env=deployment.env("redis"), timeout=10).returncode == 0
        wrong = script.replace("$(cat ", "x$(cat ")
        assert subprocess.run(["sh", "-c", wrong], env=deployment.env("redis"), timeout=10).returncode != 0


def check_records(records: list[dict], good: list[Path], broken: dict[Path, str], outside: Path) -> None:
    assert [r["image"] for r in records] == list(range(len(good) + len(broken) + 1))
    by_path = {r["path"]: r for r in records}
    assert all(by_path[str(p)]["status"] == "ok" for p in good)
    assert {p: by_path[str(p)]["error"]["code"] for p in broken} == broken
    assert by_path[str(outside)]["error"]["code"] == "forbidden"  # IMGQ_ALLOWED_ROOTS=/data took effect


def check_logs(output: str, secret: str) -> None:
    """--log-format json: Celery's log events are JSON lines (the task's id on task events); no secret (the
    Redis password, the S3 secret key)."""
    assert secret not in output
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert {"time", "level", "logger", "message"} <= set(events[0])
    assert any(e["message"].endswith(" ready.") for e in events)
    assert any(e.get("task_name") == "imgq.classify_batch" and e.get("task_id") for e in events)
    # Lines that are not JSON: the worker's own "imgq worker: ..." start-up lines, and what Python and
    # TensorFlow print before logging is set up. No Celery banner.
    assert " -------------- " not in output and "[tasks]" not in output
