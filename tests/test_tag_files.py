"""`imgq tag` and the files it meets: links, pipes, devices, huge or read-only sidecars, hard links, owners, a
user's own keywords, images changed since their job (issue 19, items 6 and 11). Records are written through the
store (no worker); each test fails on the code before the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producer.tags import sidecars
from producer.tags.sidecars import HIERARCHICAL, SUBJECT, TAGS_LIST
from producer.tags.tagging import SIDECAR_MAX_BYTES
from tests.imagegen import save
from tests.processes import clean_env
from tests.test_tag import DARKTABLE, store_job, top

IMGQ = str(Path(sys.executable).parent / "imgq")
IMGQ_TENCH = {SUBJECT: ["tench"], HIERARCHICAL: ["imgq|tench"], TAGS_LIST: ["imgq/tench"]}


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        save(folder / f"{i}.jpg", seed=i)
    return folder


def test_a_dangling_sidecar_link_is_refused_and_its_target_never_created(run, store, photos, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (photos / "0.jpg.xmp").symlink_to(elsewhere / "planted.xmp")
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9))), (str(photos / "1.jpg"), top(("cock", 0.9)))])
    result = run("tag", job)
    assert result.exit_code == 1 and "0.jpg.xmp" in result.output and "symbolic link" in result.output
    assert "Traceback" not in result.output
    assert not (elsewhere / "planted.xmp").exists() and (photos / "0.jpg.xmp").is_symlink()
    assert sidecars.parse((photos / "1.jpg.xmp").read_bytes()).keywords(SUBJECT) == ["cock"]  # the others go on


def test_remove_never_deletes_a_links_target_in_another_folder(run, store, photos, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "someone-elses.xmp"
    target.write_bytes(sidecars.new_sidecar(IMGQ_TENCH))  # a sidecar that a removal would empty (and delete)
    (photos / "0.jpg.xmp").symlink_to(target)
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    result = run("tag", job, "--remove")
    assert result.exit_code == 1 and "symbolic link" in result.output
    assert target.read_bytes() == sidecars.new_sidecar(IMGQ_TENCH) and (photos / "0.jpg.xmp").is_symlink()


def test_a_link_to_a_device_is_refused_not_read(run, store, photos):
    (photos / "0.jpg.xmp").symlink_to("/dev/zero")
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    result = run("tag", job)
    assert result.exit_code == 1 and "symbolic link" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("dry_run", [False, True], ids=["write", "dry-run"])
def test_a_fifo_sidecar_does_not_hang_tag(settings, store, photos, dry_run):
    os.mkfifo(photos / "0.jpg.xmp")
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    try:  # a separate process, so that the code before the fix fails the test instead of hanging it
        result = subprocess.run([IMGQ, "tag", job, *(["--dry-run"] if dry_run else [])], capture_output=True,
                                text=True, timeout=60, env=clean_env(**settings.as_env()))
    except subprocess.TimeoutExpired:
        pytest.fail("imgq tag hung on a FIFO named like a sidecar")
    assert result.returncode == 1 and "not a regular file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_huge_sidecar_is_refused_with_a_line_not_read(run, store, photos):
    huge = photos / "0.jpg.xmp"
    with open(huge, "wb") as file:
        file.truncate(1 << 30)  # 1 GiB, sparse: costs no disk
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    result = run("tag", job)
    assert result.exit_code == 1 and f"more than the {SIDECAR_MAX_BYTES} bytes" in result.output
    assert huge.stat().st_size == 1 << 30


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another owner needs root")
def test_a_rewritten_sidecar_keeps_its_owner_and_mode(run, store, photos):
    sidecar = photos / "0.jpg.xmp"
    sidecar.write_bytes(DARKTABLE)
    os.chown(sidecar, 4321, 4322)
    sidecar.chmod(0o640)
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    assert run("tag", job).exit_code == 0
    info = sidecar.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (4321, 4322, 0o640)
    assert sidecars.parse(sidecar.read_bytes()).keywords(TAGS_LIST) == ["imgq/tench"]


def test_a_read_only_sidecar_is_reported_and_not_rewritten(run, store, photos):
    sidecar = photos / "0.jpg.xmp"
    sidecar.write_bytes(DARKTABLE)
    sidecar.chmod(0o444)
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    for args in ((), ("--dry-run",)):
        result = run("tag", job, *args)
        assert result.exit_code == 0 and "0.jpg.xmp is read-only" in result.output and "1 skipped" in result.output
    assert sidecar.read_bytes() == DARKTABLE and sidecar.stat().st_mode & 0o777 == 0o444


def test_a_hard_linked_sidecar_is_said_to_be_split(run, store, photos, tmp_path):
    sidecar = photos / "0.jpg.xmp"
    sidecar.write_bytes(DARKTABLE)
    other = tmp_path / "backup.xmp"
    os.link(sidecar, other)
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))])
    result = run("tag", job)
    assert result.exit_code == 0 and "note:" in result.output and "hard link" in result.output
    assert other.read_bytes() == DARKTABLE  # what the note says: the other name keeps the old keywords
    assert sidecars.parse(sidecar.read_bytes()).keywords(TAGS_LIST) == ["imgq/tench"]


def test_retagging_keeps_a_users_own_keyword_equal_to_a_label(run, store, photos):
    sidecar = photos / "0.jpg.xmp"
    sidecar.write_bytes(DARKTABLE.replace(b"<rdf:li>holiday</rdf:li>", b"<rdf:li>holiday</rdf:li>\n"
                                                                       b"     <rdf:li>tench</rdf:li>"))
    first = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9)))], job="first")
    second = store_job(store, [(str(photos / "0.jpg"), top(("goldfish", 0.9)))], job="second")
    assert run("tag", first).exit_code == 0
    assert sidecars.parse(sidecar.read_bytes()).keywords(SUBJECT) == ["holiday", "tench"]
    assert run("tag", second).exit_code == 0
    packet = sidecars.parse(sidecar.read_bytes())
    assert packet.keywords(SUBJECT) == ["holiday", "tench", "goldfish"]  # the user's tench stays
    assert packet.keywords(HIERARCHICAL) == ["places|holiday", "imgq|goldfish"]
    assert run("tag", second, "--remove").exit_code == 0
    assert sidecars.parse(sidecar.read_bytes()).keywords(SUBJECT) == ["holiday", "tench"]  # only imgq's went


def test_an_image_changed_since_its_job_is_skipped_with_a_line(run, store, photos):
    job = store_job(store, [(str(photos / "0.jpg"), top(("tench", 0.9))), (str(photos / "1.jpg"), top(("cock", 0.9)))])
    time.sleep(0.05)  # the file system's clock ticks coarser than time.time(): be clearly after the submission
    old = (photos / "0.jpg").stat()
    save(photos / "0.jpg", seed=99)  # another picture at the recorded path...
    os.utime(photos / "0.jpg", ns=(old.st_atime_ns, old.st_mtime_ns))  # ...with the old time, as `cp -p` gives
    result = run("tag", job)
    assert result.exit_code == 0, result.output
    assert "0.jpg changed at" in result.output and f"after job {job} was submitted" in result.output
    assert "1 skipped" in result.output and not (photos / "0.jpg.xmp").exists()
    assert sidecars.parse((photos / "1.jpg.xmp").read_bytes()).keywords(SUBJECT) == ["cock"]
    (photos / "0.jpg").unlink()
    gone = run("tag", job)
    assert gone.exit_code == 1 and "no image at" in gone.output and not (photos / "0.jpg.xmp").exists()
