"""The command line with click's CliRunner, against a real Redis (no worker: records are written directly)."""

import csv
import io
import json
import os
import subprocess
import sys

import click
import pytest

from imgq.contract import Heartbeat, error_record, ok_record
from producer.cli import cli
from tests.processes import free_port, imgq_cli
from tests.test_walk_and_submit import queued_messages


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the CLI, sub-commands of groups included, as argument lists: walked, not listed."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        paths += command_paths(command, (*prefix, name)) if isinstance(command, click.Group) else [(*prefix, name)]
    return paths


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.jpg").write_bytes(b"not decoded by the producer")
    return folder


@pytest.mark.parametrize("command", command_paths(cli), ids=lambda path: " ".join(path) or "imgq")
def test_help(run, command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and f"Usage: cli {' '.join(command)}".rstrip() in result.output


def test_every_command_is_walked():
    assert {("submit",), ("schedule", "add"), ("beat",), ("worker",), ("report",)} <= set(command_paths(cli))


def test_cli_never_imports_tensorflow():
    heavy = "{'tensorflow', 'keras', 'celery', 'rich', 'pyarrow'}"
    code = ("import sys; from producer.cli import cli; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_submit_prints_only_the_job_id(run, photos, store, settings):
    result = run("submit", str(photos), "--batch-size", "2", "--top-k", "3", "--name", "holiday")
    job = result.stdout.strip()
    assert result.exit_code == 0 and len(job.split()) == 1
    status = store.status(job)
    assert (status.name, status.total, status.params["top_k"]) == ("holiday", 5, 3)
    assert len(queued_messages(store, settings)) == 3
    assert "Queued 5 images in 3 batches" in result.stderr


def test_submit_says_what_it_skipped_and_status_keeps_it(run, photos, store):
    (photos / "IMG_0001.MOV").write_bytes(b"a video")
    (photos / "notes.txt").write_text("a note")
    (photos / ".DS_Store").write_bytes(b"hidden: not counted")
    result = run("submit", str(photos), "--batch-size", "2")
    job = result.stdout.strip()
    assert result.exit_code == 0 and len(job.split()) == 1
    assert "Queued 5 images in 3 batches; skipped 2 files that are not images (1 .MOV, 1 .txt)." in result.stderr
    assert "IMG_0001.MOV" not in result.stderr.replace("(1 .MOV", "")  # named only with --verbose

    verbose = run("submit", str(photos), "--verbose")
    assert verbose.stdout.count("\n") == 1  # the job id alone: the listing goes to standard error
    assert f"skipped: {photos / 'IMG_0001.MOV'}\nskipped: {photos / 'notes.txt'}\n" in verbose.stderr

    shown = run("status", job).stdout
    assert "skipped: 2" in shown and "skipped_kinds: 1 .MOV, 1 .txt" in shown
    as_json = json.loads(run("status", job, "--json").stdout)
    assert (as_json["skipped"], as_json["skipped_kinds"]) == (2, "1 .MOV, 1 .txt")


def test_submit_of_a_folder_without_images_names_what_it_found(run, tmp_path, store):
    (tmp_path / "clip.mov").write_bytes(b"a video")
    result = run("submit", str(tmp_path))
    assert result.exit_code != 0 and result.stdout == ""
    assert "--recursive; skipped 1 file that is not an image (1 .mov)." in result.stderr
    assert "Traceback" not in result.output


def test_submit_from_a_list_on_stdin(run, photos, store):
    listing = "\n".join(str(p) for p in sorted(photos.iterdir())[:2]) + "\n"
    result = run("submit", "--from-file", "-", input=listing)
    assert result.exit_code == 0
    assert store.status(result.stdout.strip()).total == 2


@pytest.mark.parametrize(("args", "message"), [
    (["submit", "/no/such/folder"], "does not exist"),
    (["submit"], "Give at least one PATH"),
])
def test_submit_usage_errors(run, args, message, store):
    result = run(*args)
    assert result.exit_code == 2 and message in result.output
    assert store.list_jobs() == []


def test_submit_empty_selection_is_one_line_and_queues_nothing(run, tmp_path, store, settings):
    (tmp_path / "notes.txt").write_text("x")
    result = run("submit", str(tmp_path))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: No images selected: check the paths, --include and --recursive; skipped 1 file that is not an "
        "image (1 .txt)."]
    assert store.redis.keys(f"{settings.namespace}:*") == []


def test_unreachable_redis_is_one_line_with_the_password_masked(run, photos):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = run("submit", str(photos), env={"IMGQ_BROKER_URL": url})
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Cannot reach Redis at redis://:***@127.0.0.1:")
    assert "hunter2" not in result.output


def finish_job(run, photos, store) -> str:
    job = run("submit", str(photos), "--top-k", "2").stdout.strip()
    top = [{"wnid": "n01440764", "label": "tench", "score": 0.75}, {"wnid": "n01443537", "label": "goldfish",
                                                                   "score": 0.25}]
    records = [ok_record(job, i, f"/p/{i}.jpg", top, weights="random:0") for i in range(4)]
    records.append(error_record(job, 4, "/p/4.jpg", "corrupt", "image file is truncated", weights="random:0"))
    store.mark_started(job)
    store.record_results(job, records)
    return job


def test_status_of_a_job_and_of_recent_jobs(run, photos, store):
    job = finish_job(run, photos, store)
    data = json.loads(run("status", job, "--json").stdout)
    assert (data["state"], data["total"], data["done"], data["ok"], data["failed"]) == ("done", 5, 5, 4, 1)
    assert "state: done" in run("status", job).stdout
    table = run("status").stdout.splitlines()
    assert table[0].split()[:3] == ["JOB", "NAME", "STATE"] and table[1].startswith(job)


def test_results_jsonl_and_csv_round_trip(run, photos, store, tmp_path):
    job = finish_job(run, photos, store)
    lines = run("results", job).stdout.splitlines()
    assert [json.loads(line) for line in lines] == list(store.iter_results(job))
    out = tmp_path / "out.csv"
    assert run("results", job, "--format", "csv", "-o", str(out)).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 5
    assert (rows[0]["label_1"], rows[0]["score_1"], rows[0]["label_2"], rows[0]["score_2"]) == (
        "tench", "0.75", "goldfish", "0.25")
    assert "label_3" not in rows[0]
    assert (rows[4]["status"], rows[4]["error_code"], rows[4]["label_1"]) == ("error", "corrupt", "")
    assert rows[0]["weights"] == "random:0"


def test_wait_returns_at_once_for_a_finished_job(run, photos, store):
    job = finish_job(run, photos, store)
    result = run("wait", job, "--timeout", "10")
    assert result.exit_code == 0 and f"Job {job} done: 4 ok, 1 failed of 5." in result.stderr


def test_wait_times_out_with_one_line(run, photos):
    job = run("submit", str(photos)).stdout.strip()
    result = run("wait", job, "--timeout", "0.2")
    assert result.exit_code == 1 and "not finished in time: 0/5" in result.output


def test_cancel(run, photos, store):
    job = run("submit", str(photos)).stdout.strip()
    result = run("cancel", job)
    assert result.exit_code == 0 and store.status(job).state == "cancelled"


def test_requeue_sends_again_only_batches_with_missing_records(run, photos, store, settings):
    job = run("submit", str(photos), "--batch-size", "2").stdout.strip()  # batches [0, 1], [2, 3], [4]
    store.record_results(job, [ok_record(job, i, f"/p/{i}.jpg", [], weights="w") for i in (0, 1, 2)])
    store.redis.delete(f"{settings.namespace}:kombu:{settings.namespace}")  # as if a worker lost them
    result = run("requeue", job)
    assert result.exit_code == 0 and "Queued 2 batches" in result.stderr
    assert [m["batch"] for m in queued_messages(store, settings)] == [1, 2]


def test_status_workers_shows_heartbeats_and_queue_depth(run, photos, store):
    job = run("submit", str(photos), "--batch-size", "2").stdout.strip()
    assert run("status", "--workers").stdout.splitlines() == [
        "3 batches queued; 0 workers alive; 1 job in flight.",
        f"  job {job} queued: 0/5 done, 0 failed; waiting: no live worker serves model resnet50"]
    heartbeat = Heartbeat(hostname="w1", pid=7, host="h", pool="threads", warnings=("Redis may evict keys",))
    store.send_heartbeat("w1:7", heartbeat, ttl=10)
    data = json.loads(run("status", "--workers", "--json").stdout)
    assert data["queued_batches"] == 3 and [j["id"] for j in data["jobs_in_flight"]] == [job]
    assert data["workers"] == [heartbeat.to_dict()]
    text = run("status", "--workers").stdout.splitlines()
    assert text[1].startswith("  w1 on h, pid 7: model resnet50, pool threads")
    assert text[2] == "    WARNING: Redis may evict keys" and text[3] == f"  job {job} queued: 0/5 done, 0 failed"


def test_status_workers_shows_workers_up_but_not_ready_apart(run, store):
    """A worker beats from the moment it starts loading its model (issue 25.3): one warming up, or one that
    cannot serve, is listed with what it says, and not counted alive."""
    starting = Heartbeat(hostname="w2", pid=8, host="h", state="starting",
                         detail="warming up resnet50 on openvino 2026.4.1 (32 images)")
    failed = Heartbeat(hostname="w3", pid=9, host="h", state="failed", detail="cannot load model resnet50 (...)")
    store.send_heartbeat("w2:8", starting, ttl=10)
    store.send_heartbeat("w3:9", failed, ttl=10)
    assert run("status", "--workers").stdout.splitlines() == [
        "0 batches queued; 0 workers alive; 0 jobs in flight.",
        "  w2 on h, pid 8: model resnet50, starting, not ready: warming up resnet50 on openvino 2026.4.1 (32 images)",
        "  w3 on h, pid 9: model resnet50, failed, not ready: cannot load model resnet50 (...)"]
    data = json.loads(run("status", "--workers", "--json").stdout)
    assert data["workers"] == [] and data["not_ready"] == [starting.to_dict(), failed.to_dict()]


def test_waiting_without_a_live_worker_says_so(run, photos):
    job = run("submit", str(photos)).stdout.strip()
    result = run("wait", job, "--timeout", "0.1")
    assert "No worker is alive in namespace" in result.stderr


def test_results_of_an_unfinished_job_warn_on_stderr(run, photos):
    job = run("submit", str(photos)).stdout.strip()
    result = run("results", job)
    assert result.exit_code == 0 and result.stdout == ""
    assert f"Job {job} is queued: 0 of 5 records so far." in result.stderr


def test_delete(run, photos, store):
    job = run("submit", str(photos)).stdout.strip()
    assert run("delete", job).exit_code == 0 and store.list_jobs() == []


@pytest.mark.parametrize("command", ["status", "results", "cancel", "wait", "requeue", "delete"])
def test_unknown_job_is_one_line(run, command):
    result = run(command, "nosuchjob")
    assert result.exit_code == 1 and result.output.strip() == "Error: No job 'nosuchjob' in the results store."


def test_a_submit_whose_queueing_fails_prints_its_job_id_and_says_not_to_resubmit(settings, store, photos, server):
    """The job is committed before its batches are published: when publishing fails (here, a broker that
    takes connections but refuses LPUSH), the job exists and the reconciler will finish it, so the user must
    get its id, and one line saying not to submit again."""
    url = server("--user", "default", "on", "nopass", "~*", "&*", "+@all", "-lpush")
    result = imgq_cli(settings, "submit", str(photos), check=False,
                      env={"IMGQ_BROKER_URL": url, "IMGQ_RESULTS_URL": settings.effective_results_url})
    assert result.exit_code == 1 and "Traceback" not in result.output
    job = result.stdout.strip()
    assert store.status(job).total == 5  # it exists: the reconciler (or `imgq requeue`) will queue it
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: Job {job} was created, but queueing its batches failed") and "Do not" in line


def test_status_says_when_a_job_expires_and_results_warns_when_it_is_close(run, photos, store):
    job = finish_job(run, photos, store)
    status = json.loads(run("status", job, "--json").stdout)
    assert status["expires"][:4].isdigit() and status["params"]["retention"] == 7 * 86400
    assert "expires" not in run("results", job).stderr
    store.redis.expire(store.keys.job(job), 3600)  # an hour left of a week
    assert f"Job {job} expires at " in run("results", job).stderr
    kept = run("submit", str(photos), "--retention", "0").stdout.strip()
    assert json.loads(run("status", kept, "--json").stdout)["expires"] == "never (until `imgq delete`)"
    waiting = run("submit", str(photos), "--retention", "12h").stdout.strip()
    assert json.loads(run("status", waiting, "--json").stdout)["expires"] == "12h after it finishes"
    assert run("submit", str(photos), "--retention", "soon").exit_code == 2


@pytest.mark.parametrize("args", [
    ["results", "JOB", "-o", "{missing}/out.jsonl"],
    ["results", "JOB", "--embeddings", "{missing}/emb.npy"],
    ["report", "JOB", "-o", "{missing}/talk.html"],
    ["show", "JOB", "0", "--layer", "avg_pool", "-o", "{missing}/grid.png"],
    ["classify", "{photos}", "-o", "{missing}/labels.jsonl"],
])
def test_output_into_a_missing_folder_is_one_line_before_any_work(run, photos, store, tmp_path, args):
    job = finish_job(run, photos, store)
    missing = tmp_path / "no" / "such"
    args = [a.format(missing=missing, photos=photos).replace("JOB", job) for a in args]
    result = run(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    target = args[args.index("-o" if "-o" in args else "--embeddings") + 1]
    assert result.output.strip().splitlines() == [f"Error: Cannot write {target}: the folder {missing} does not exist."]
    assert not (tmp_path / "no").exists()


def test_a_file_that_cannot_be_made_is_one_line(run, photos, store):
    """A folder that passes the check but takes no files (here /proc): the write itself says so in one line."""
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    job = finish_job(run, photos, store)
    result = run("results", job, "-o", "/proc/imgq-out.jsonl")
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        "Error: Cannot write /proc/imgq-out.jsonl: No such file or directory."]


def test_a_list_file_is_read_as_the_walk_goes_never_held_whole():
    from producer.cli import selected_images

    listing = io.StringIO("/p/0.jpg\n/p/1.jpg\n")
    images = selected_images((), True, (), (), listing)
    assert listing.tell() == 0  # nothing read yet: a million-line list costs one line at a time
    assert list(images) == ["/p/0.jpg", "/p/1.jpg"]
