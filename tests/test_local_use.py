"""`imgq classify` and `imgq wait` as a newcomer uses them (issues 19.1-19.3, 20.4, 20.6, 20.7): twice in a
row, from a folder that holds an `imgq` package, with Ctrl-C, on a folder without images, and reading the
embedded server's jobs afterwards. Real processes throughout: `imgq` runs as a subprocess, its workers are
real worker processes, signals are real signals."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imgq.contract import Heartbeat
from imgq.results.store import ResultStore, delete_namespace
from producer.local import workers as local
from producer.local.workers import EmbeddedRedis, LocalWorker, redis_answers
from tests import imagegen
from tests.conftest import make_settings
from tests.jobs import commit_job
from tests.processes import clean_env, free_port, imgq_cli

HOOKS = str(Path(__file__).resolve().parent / "hooks")
RUN_TIMEOUT = 300  # a worker's start-up on a busy 2-core machine, and a few images
RANDOM_0 = "random:0 (untrained: labels are meaningless)"  # what a worker with IMGQ_WEIGHTS=random says it has


def imgq_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "producer.cli", *args]


def classify_env(settings, **env: str) -> dict[str, str]:
    """The environment of a `imgq classify` run against ``settings``'s Redis and namespace."""
    return clean_env(IMGQ_BROKER_URL=settings.broker_url, IMGQ_NAMESPACE=settings.namespace, IMGQ_WEIGHTS="random",
                     IMGQ_STATE_DIR=settings.state_dir, IMGQ_BATCH_SIZE="4", PYTHONPATH=_repo_path(), **env)


def _repo_path() -> str:
    """The repository first on the import path of the subprocess, which may run from another folder."""
    repo = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)


class Running:
    """A background `imgq` process whose stderr is read line by line as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path):
        self.lines: list[str] = []
        # A session of its own, as a shell gives a job: a signal sent to its group reaches nothing else.
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.popen.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout: float = RUN_TIMEOUT) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            assert self.popen.poll() is None, f"exited {self.popen.returncode} before {pattern!r}:\n{self.text}"
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} after {timeout} s:\n{self.text}")

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            raise AssertionError(f"still running after {timeout} s:\n{self.text}") from None
        self.reader.join(10)
        return code

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def run_imgq(*args: str, env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    running = Running(imgq_argv(*args), env, cwd)
    return running.finish(timeout), running.text


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.fixture
def own_settings(redis_url, tmp_path):
    settings = make_settings(redis_url, tmp_path, batch_size=4)
    yield settings
    delete_namespace(redis_url, settings.namespace)


# -- 19.1: a stopping worker takes its heartbeat with it; classify notices when no worker takes its job ----

@pytest.mark.slow
@pytest.mark.parametrize("sig, when", [(signal.SIGTERM, "ready"), (signal.SIGINT, "ready"), (signal.SIGQUIT, "ready"),
                                       (signal.SIGTERM, "first beat")],
                         ids=["term", "int", "quit", "term-at-first-beat"])
def test_a_stopping_worker_removes_its_heartbeat(redis_url, tmp_path, sig, when):
    # Beats every 30 s: the key would outlive the worker by 90 s. It must be gone when the process is.
    settings = make_settings(redis_url, tmp_path, heartbeat_seconds=30)
    store = ResultStore.from_settings(settings)
    worker = LocalWorker(settings)
    worker.start()
    try:
        worker.wait_ready(store)
        assert [w.pid for w in store.workers()] == [worker.started.pid]
        # Celery's own signal handlers are in place once it says it is ready; at the first beat (the model just
        # loaded, as when `imgq classify` is interrupted early) they may not be yet.
        deadline = time.monotonic() + 120
        while when == "ready" and " ready." not in worker.log_path.read_text():
            assert time.monotonic() < deadline and worker.started.poll() is None, worker.log_path.read_text()
            time.sleep(0.2)
        worker.started.send_signal(sig)  # warm (TERM, INT) or cold (QUIT) shutdown
        worker.started.wait(60)
        assert store.workers() == [], worker.log_path.read_text()[-3000:]
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)


@pytest.mark.slow
def test_two_classify_runs_back_to_back_both_complete(own_settings, tmp_path):
    images = [imagegen.save(tmp_path / "photos" / f"{i}.png", size=(48, 48), seed=i) for i in range(6)]
    env = classify_env(own_settings)
    errs = []
    for run in (1, 2):
        code, err = run_imgq("classify", str(tmp_path / "photos"), "-o", str(tmp_path / f"run{run}.jsonl"),
                             env=env, cwd=tmp_path)
        assert code == 0, err
        assert "Started a worker" in err  # the first run's worker is gone: the second starts its own
        assert len((tmp_path / f"run{run}.jsonl").read_text().splitlines()) == len(images)
        errs.append(err)
    for err in errs:  # 20.7: the summary names the broker and the namespace; a worker log per namespace
        assert f"Broker: {own_settings.broker_url}, namespace {own_settings.namespace}." in err
        assert f"log: {own_settings.state_dir}/worker-{own_settings.namespace}.log" in err


@pytest.mark.slow
def test_classify_starts_a_worker_when_the_live_one_goes(own_settings, tmp_path):
    """A heartbeat with no worker behind it (one SIGKILLed, or stopping): classify takes it as live, then
    sees it expire and starts a worker itself instead of waiting at 0/N for good."""
    settings = dataclasses.replace(own_settings, heartbeat_seconds=2)
    store = ResultStore.from_settings(settings)
    ghost = Heartbeat(hostname="ghost@nowhere", pid=2**22 + 1, host="nowhere", weights=RANDOM_0,
                      precision="fp32", job_precision="fp32", runtime="openvino", pool="threads", batch_size=4,
                      started_at=time.time(),
                      sent_at=time.time(), images_done=0)
    # Live until classify has taken it, then three beats left: a ghost that lived 6 s from here could expire
    # before a classify slow to start (its imports on a busy machine) looked, which then started a worker at once.
    store.send_heartbeat("ghost@nowhere:1", ghost, ttl=600)
    imagegen.save(tmp_path / "photos" / "a.png", size=(48, 48), seed=1)
    running = Running(imgq_argv("classify", str(tmp_path / "photos"), "-o", str(tmp_path / "out.jsonl")),
                      classify_env(settings, IMGQ_HEARTBEAT_SECONDS="2"), tmp_path)
    running.wait_for_line(r"^Using the live worker, with weights .*: ghost@nowhere\.$")
    store.send_heartbeat("ghost@nowhere:1", ghost, ttl=6)
    code, err = running.finish(), running.text
    assert code == 0, err
    assert (f"No worker of model resnet50 is alive in namespace {settings.namespace!r} any more: started one (pid"
            in err)
    assert "1 classified, 0 failed of 1" in err


# -- 19.2: the working folder never shadows imgq; a worker whose batches keep failing is reported --------

@pytest.mark.slow
def test_classify_from_a_folder_holding_imgq_worker_and_producer(tmp_path):
    here = tmp_path / "home"
    for package in ("imgq", "worker", "producer"):
        (here / package).mkdir(parents=True)
        (here / package / "__init__.py").write_text(f"raise SystemExit('the user\\'s {package} was imported')\n")
    (here / "worker.py").write_text("raise SystemExit(\"the user's worker.py was imported\")\n")
    images = [imagegen.save(here / "photos" / f"{i}.png", size=(48, 48), seed=i) for i in range(3)]
    # IMGQ_AUTO_QUIET_LOAD=0: auto's measurement is provisional (issue 25.7), and never measured again at the
    # second start, which a quiet moment of this machine would otherwise do for a close call.
    env = clean_env(IMGQ_WEIGHTS="random", IMGQ_STATE_DIR=str(tmp_path / "state"), IMGQ_AUTO_QUIET_LOAD="0")
    imgq = str(Path(sys.executable).parent / "imgq")  # the installed command, as a user runs it
    result = subprocess.run([imgq, "classify", "photos", "--embedded-redis", "-o", "out.jsonl"], env=env, cwd=here,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert len((here / "out.jsonl").read_text().splitlines()) == len(images)
    assert "was imported" not in result.stderr + (tmp_path / "state" / "worker-imgq.log").read_text()

    # 20.6: the embedded server is stopped, its data kept; the job is read again with the command printed.
    job = json.loads((here / "out.jsonl").read_text().splitlines()[0])["job"]
    command = re.search(rf"Open the job again with `(imgq (?:--embedded-redis )?)results {job}`", result.stderr)
    assert command, result.stderr
    again = subprocess.run([imgq, "--embedded-redis", "results", job], env=env, cwd=here, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["path"] for line in again.stdout.splitlines()] == \
        [json.loads(line)["path"] for line in (here / "out.jsonl").read_text().splitlines()]

    # The group's flag before classify is classify's own: a second run on the same embedded server's data.
    second = subprocess.run([imgq, "--embedded-redis", "classify", "photos", "-o", "second.jsonl"], env=env,
                            cwd=here, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert second.returncode == 0, second.stderr
    assert len((here / "second.jsonl").read_text().splitlines()) == len(images)
    # The default runtime, auto: measured by the first worker, read from its record by the second.
    ready = [line for line in (tmp_path / "state" / "worker-imgq.log").read_text().splitlines() if " ready in " in line]
    assert len(ready) == 2 and all("(auto: measured " in line for line in ready), ready
    assert len({re.search(r"auto: measured (\S+)", line)[1] for line in ready}) == 1  # measured once


@pytest.mark.slow
def test_classify_reports_failing_batches_and_ctrl_c_cancels_its_job(own_settings, tmp_path):
    """Every batch of the worker fails (a test hook): classify says so, with the worker's reason, each time
    a batch fails again. Then Ctrl-C (SIGINT to its process group, as a terminal sends it): it cancels its
    job, stops its worker and exits 130, without a traceback."""
    for i in range(6):
        imagegen.save(tmp_path / "photos" / f"{i}.png", size=(48, 48), seed=i)
    env = classify_env(own_settings, IMGQ_RECONCILE_SECONDS="2", IMGQ_HEARTBEAT_SECONDS="1",
                       TEST_HOOK_FAIL_BATCHES="1")
    env["PYTHONPATH"] = os.pathsep.join((HOOKS, env["PYTHONPATH"]))
    running = Running(imgq_argv("classify", str(tmp_path / "photos")), env, tmp_path)
    pid = int(running.wait_for_line(r"Started a worker \(pid (\d+)")[1])
    job = running.wait_for_line(r"Job (\w+): 6 images in 2 batches")[1]
    # "Again": a second report, with a count of 2 or more. Classify reports what it sees each time it looks,
    # so on a busy machine a batch may have failed 4 times by the second look (CI once saw 1, then 4).
    running.wait_for_line(r"warning: batch \d of job \w+ failed (?:[2-9]|[1-9]\d+) times: "
                          r"RuntimeError\('failing by tests/hooks'\)")
    os.killpg(running.popen.pid, signal.SIGINT)
    assert running.finish(120) == 130, running.text
    assert f"Interrupted: cancelled job {job} (0 of 6 images have records" in running.text
    assert "Traceback" not in running.text and "Exception ignored" not in running.text
    assert ResultStore.from_settings(own_settings).status(job).state == "cancelled"
    assert_gone(pid)


# -- 25.3: a worker up but not ready is reported, never waited for behind a 0% bar ------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fault, reason", [
    # A seed Keras refuses (random:-1) no longer reaches a worker: classify refuses it itself (issue 25.2,
    # tests/test_producer_checks.py). A load that raises is what is left of a worker that cannot start.
    ({"TEST_HOOK_FAIL_LOAD": "1"},
     "cannot load model resnet50 with weights random on runtime openvino (RuntimeError: failing by tests/hooks)"),
], ids=["load-raises"])
def test_classify_with_a_worker_that_cannot_start_exits_with_its_reason(tmp_path, fault, reason):
    """The worker classify starts cannot load its model: classify exits within seconds (it waited 600 s behind
    a 0% bar) with one line quoting the worker's reason, and leaves no job queued for nobody."""
    imagegen.save(tmp_path / "photos" / "a.png", size=(48, 48), seed=1)
    state = tmp_path / "state"
    env = {**clean_env(IMGQ_WEIGHTS="random", IMGQ_RUNTIME="openvino", IMGQ_STATE_DIR=str(state),
                       PYTHONPATH=os.pathsep.join((HOOKS, _repo_path()))), **fault}
    code, err = run_imgq("classify", "photos", "--embedded-redis", env=env, cwd=tmp_path, timeout=120)
    assert code == 1, err
    stopped = re.fullmatch(rf"Error: The worker cannot serve: {re.escape(reason)} \(log: \S+\)\. Cancelled job (\w+)\.",
                           err.splitlines()[-1])
    assert stopped, err
    assert "Traceback" not in err
    server = EmbeddedRedis(str(state))  # its data, read again: the job is cancelled, not queued
    try:
        store = ResultStore.from_settings(make_settings(server.start(), tmp_path, namespace="imgq"))
        assert store.status(stopped[1]).state == "cancelled"
    finally:
        server.stop()


@pytest.mark.slow
def test_classify_reports_a_worker_that_cannot_serve_and_shows_its_own_warming_up(own_settings, tmp_path):
    """Another worker of the model failed (its heartbeat says why, for three beats): classify says so, starts
    its own, and shows what that one does while it starts (25.4: the warm-up is not a hang)."""
    broken = LocalWorker(dataclasses.replace(own_settings, heartbeat_seconds=60), env={
        "TEST_HOOK_FAIL_LOAD": "1", "PYTHONPATH": os.pathsep.join((HOOKS, _repo_path()))})
    broken.start()
    try:
        assert broken.started.wait(120) == 2
    finally:
        broken.stop()
    imagegen.save(tmp_path / "photos" / "a.png", size=(48, 48), seed=1)
    code, err = run_imgq("classify", str(tmp_path / "photos"), "-o", str(tmp_path / "out.jsonl"),
                         env=classify_env(own_settings, IMGQ_RUNTIME="openvino"), cwd=tmp_path)
    assert code == 0, err
    reason = "cannot load model resnet50 with weights random on runtime openvino (RuntimeError: failing by tests/hooks)"
    assert re.search(rf"^warning: worker {broken.name}@\S+ \(pid {broken.started.pid} on \S+\) cannot serve: "
                     rf"{re.escape(reason)}$", err, re.MULTILINE), err
    assert re.search(r"Worker: warming up resnet50 on openvino \S+ \(4 images\)", err), err
    assert "1 classified, 0 failed of 1" in err


# -- 19.3: Ctrl-C in `imgq wait` ---------------------------------------------------------------------------

def test_ctrl_c_in_wait_exits_130_without_noise(own_settings, tmp_path):
    store = ResultStore.from_settings(own_settings)
    commit_job(store, "waited", ["/nowhere/a.png"])  # no worker: it waits until interrupted
    env = classify_env(own_settings)
    for _ in range(3):
        running = Running(imgq_argv("wait", "waited"), env, tmp_path)
        running.wait_for_line("No worker is alive")
        time.sleep(1.0)  # polling, as a user would find it
        os.killpg(running.popen.pid, signal.SIGINT)
        assert running.finish(30) == 130, running.text
        assert running.lines[-1] == ("Interrupted; job waited goes on: `imgq wait waited` to watch it again, "
                                     "`imgq cancel waited` to stop it.")
        assert "Traceback" not in running.text and "Exception ignored" not in running.text


# -- 20.4: walk first -------------------------------------------------------------------------------------

def test_classify_of_a_folder_without_images_starts_nothing(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not an image")
    env = clean_env(IMGQ_WEIGHTS="random", IMGQ_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=_repo_path())
    code, err = run_imgq("classify", str(tmp_path / "notes"), "--embedded-redis", env=env, cwd=tmp_path, timeout=60)
    assert code == 1
    assert err.splitlines() == ["Error: No images selected: check the paths, --include and --recursive."]
    assert not (tmp_path / "state").exists()  # no server, no worker, no log


# -- 20.6: the embedded server's jobs, read again ------------------------------------------------------------

def test_reading_commands_find_the_embedded_servers_data(tmp_path, monkeypatch):
    """With no broker configured and nothing answering at the default address, `results`, `status` and
    `report` start the embedded server on the data classify left (and stop it again)."""
    state = tmp_path / "state"
    server = EmbeddedRedis(str(state))
    url = server.start()
    settings = make_settings(url, tmp_path, namespace="imgq")
    store = ResultStore.from_settings(settings)
    commit_job(store, "kept", [str(imagegen.save(tmp_path / "a.png", size=(48, 48), seed=1))])
    server.stop()
    assert not redis_answers(url)

    monkeypatch.setattr(local, "DEFAULT_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing answers there
    env = {"IMGQ_STATE_DIR": str(state), "IMGQ_BROKER_URL": "", "IMGQ_RESULTS_URL": ""}
    for variable in ("IMGQ_BROKER_URL", "IMGQ_RESULTS_URL", "IMGQ_NAMESPACE"):
        monkeypatch.delenv(variable, raising=False)
    status = imgq_cli(settings, "status", "kept", env={**settings.as_env(), **env})
    assert "reading the embedded Redis's data in" in status.output and "state: queued" in status.output
    assert not (state / "redis" / "server.json").exists()  # stopped again

    # A broker configured: the embedded data is read only when asked.
    refused = imgq_cli(settings, "status", "kept", check=False,
                       env={**settings.as_env(), **env, "IMGQ_BROKER_URL": local.DEFAULT_URL})
    assert refused.exit_code == 1 and "Cannot reach Redis" in refused.output
    asked = imgq_cli(settings, "--embedded-redis", "status", "kept",
                     env={**settings.as_env(), **env, "IMGQ_BROKER_URL": local.DEFAULT_URL})
    assert "state: queued" in asked.output


def test_one_embedded_server_per_data_folder(tmp_path):
    first = EmbeddedRedis(str(tmp_path))
    url = first.start()
    try:
        second = EmbeddedRedis(str(tmp_path))
        assert second.start() == url and not second.owned  # found, not started on the same files
        second.stop()
        assert redis_answers(url)  # its owner's, still running
    finally:
        first.stop()
    assert not redis_answers(url)
