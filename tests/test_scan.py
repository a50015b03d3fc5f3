"""Incremental scan state against a real Redis: what a walk submits, and what a finished job teaches it."""

import os
from pathlib import Path

import pytest

from imgq.contract import error_record, ok_record
from imgq.schedules.scan_state import CHUNK, ScanState, ScanTally

DOCUMENTED_BYTES = 80  # per known image, imgq/schedules/scan_state.py: 55 on Valkey 9.1, 76 on Redis 7.0


@pytest.fixture
def scan(settings):
    return ScanState.from_settings(settings, "photos")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.jpg").write_bytes(b"x" * (i + 1))
    return root


def files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.iterdir())


def select(scan: ScanState, paths, max_retries: int = 3) -> tuple[list[str], ScanTally]:
    found = ScanTally()
    return list(scan.select(paths, max_retries, found)), found


def finish(scan: ScanState, chosen: list[str], failing=(), max_retries: int = 3):
    """Settle as if a worker had written a record for each chosen file (errors for ``failing``)."""
    records = [error_record("j", i, p, "corrupt", "truncated") if p in failing else ok_record("j", i, p, [])
               for i, p in enumerate(chosen)]
    return scan.settle(records, max_retries)


def change(path: str, content: bytes = b"changed!") -> None:
    """A new version: other bytes and a later modification time."""
    Path(path).write_bytes(content)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_first_scan_submits_everything_and_then_nothing(scan, folder):
    chosen, found = select(scan, files(folder))
    assert chosen == files(folder) and (found.new, found.submitted) == (5, 5)
    assert scan.counts() == {"known": 0, "errors": 0, "pending": 5}
    settled = finish(scan, chosen)
    assert (settled.ok, settled.failed, settled.unrecorded) == (5, 0, 0)
    assert scan.counts() == {"known": 5, "errors": 0, "pending": 0}
    chosen, found = select(scan, files(folder))
    assert chosen == [] and found.unchanged == 5


def test_new_and_changed_files_are_submitted_and_only_they(scan, folder):
    finish(scan, select(scan, files(folder))[0])
    for i in range(3):
        (folder / f"new{i}.jpg").write_bytes(b"new")
    change(str(folder / "0.jpg"))
    chosen, found = select(scan, files(folder))
    assert sorted(chosen) == sorted([str(folder / "0.jpg")] + [str(folder / f"new{i}.jpg") for i in range(3)])
    assert (found.new, found.changed, found.unchanged) == (3, 1, 4)


def test_a_touch_alone_counts_as_a_change(scan, folder):
    finish(scan, select(scan, files(folder))[0])
    path = str(folder / "1.jpg")
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1))
    assert select(scan, files(folder))[0] == [path]


def test_errors_are_retried_max_retries_times_then_left_until_the_file_changes(scan, folder):
    bad = str(folder / "2.jpg")
    chosen, _ = select(scan, files(folder), max_retries=2)
    attempts = 1
    settled = finish(scan, chosen, failing={bad}, max_retries=2)
    assert (settled.ok, settled.failed, settled.given_up) == (4, 1, 0)
    while True:
        chosen, found = select(scan, files(folder), max_retries=2)
        if not chosen:
            break
        assert chosen == [bad] and found.retried == 1
        attempts += 1
        settled = finish(scan, chosen, failing={bad}, max_retries=2)
    assert attempts == 3  # the first try and 2 retries
    assert settled.given_up == 1 and found.given_up == 1
    assert scan.counts() == {"known": 4, "errors": 1, "pending": 0}
    change(bad)  # a new version of the file starts over
    chosen, found = select(scan, files(folder), max_retries=2)
    assert chosen == [bad] and found.changed == 1
    finish(scan, chosen)
    assert scan.counts() == {"known": 5, "errors": 0, "pending": 0}


def test_zero_retries_gives_up_after_the_first_error(scan, folder):
    finish(scan, select(scan, files(folder), max_retries=0)[0], failing={str(folder / "0.jpg")}, max_retries=0)
    assert select(scan, files(folder), max_retries=0)[0] == []


def test_a_file_known_ok_that_now_fails_is_no_longer_known(scan, folder):
    path = str(folder / "3.jpg")
    finish(scan, select(scan, files(folder))[0])
    change(path)
    finish(scan, select(scan, files(folder))[0], failing={path})
    assert scan.counts()["known"] == 4
    assert select(scan, files(folder))[0] == [path]  # retried


def test_files_without_a_record_are_submitted_again(scan, folder):
    chosen, _ = select(scan, files(folder))
    settled = finish(scan, chosen[:2])  # a cancelled job: three images never got a record
    assert (settled.ok, settled.unrecorded) == (2, 3)
    assert select(scan, files(folder))[0] == chosen[2:]


def test_a_file_changed_while_its_job_ran_is_seen_as_changed(scan, folder):
    chosen, _ = select(scan, files(folder))
    change(chosen[0])  # after submission, before the record
    finish(scan, chosen)
    assert select(scan, files(folder))[0] == [chosen[0]]


def test_vanished_files_are_skipped(scan, folder):
    chosen, found = select(scan, [*files(folder), str(folder / "gone.jpg")])
    assert len(chosen) == 5 and found.vanished == 1


def test_state_is_per_schedule(settings, folder):
    first, second = ScanState.from_settings(settings, "a"), ScanState.from_settings(settings, "b")
    finish(first, select(first, files(folder))[0])
    assert len(select(second, files(folder))[0]) == 5


def test_keepalive_runs_once_per_chunk(scan, tmp_path):
    calls = []
    paths = [str(tmp_path / f"missing{i}") for i in range(CHUNK + 1)]
    list(scan.select(paths, 3, ScanTally(), keepalive=lambda: calls.append(1)))
    assert len(calls) == 2


def test_forget_drops_every_part(scan, folder, store, settings):
    chosen, _ = select(scan, files(folder))
    finish(scan, chosen[:3], failing={chosen[0]})
    select(scan, files(folder))
    scan.forget()
    assert store.redis.keys(f"{settings.namespace}:scan:*") == []


def test_memory_per_known_image_is_what_the_docs_say(scan, tmp_path):
    """Measured with MEMORY USAGE on a state of 20,000 images (hashtable encoding, as in real use)."""
    root = tmp_path / "many"
    root.mkdir()
    paths = []
    for i in range(20_000):
        path = root / f"IMG_2024{i:06d}_camera_upload_folder_name.jpg"  # ~100-byte absolute paths
        path.touch()
        paths.append(str(path))
    finish(scan, select(scan, paths)[0])
    per_image = scan.memory_per_file()
    print(f"\nscan state: {per_image:.1f} bytes per known image (20,000 images)")
    assert per_image <= DOCUMENTED_BYTES
