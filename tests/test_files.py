"""imgq.storage.files: atomic writes, with the modes the process's umask gives, from many threads at once."""

import os
import stat
import subprocess
import sys

import pytest

from imgq.storage import files

# Eight threads each write 50 files and ask 20,000 times for the mode of a new file, switching threads as
# often as CPython can, while a ninth reads the umask from /proc: every file must get 0o640 (0o666 less
# the umask 027 the process was started with) and the umask must never change. With the umask set and put
# back around each call (the old usual_mode), every run here ended at 022 with files of 0o644.
THREADS_SCRIPT = """
import os, sys, threading
sys.setswitchinterval(1e-6)
os.umask(0o027)
from imgq.storage.files import atomic_path, usual_mode, _read_umask

folder = sys.argv[1]
seen, given, done = set(), set(), threading.Event()

def watch():
    while not done.is_set():
        seen.add(_read_umask())

def write(n):
    for i in range(20000):
        given.add(usual_mode(0o666))
        if i % 400 == 0:
            with atomic_path(os.path.join(folder, f"{n}-{i}.txt")) as tmp, open(tmp, "w") as f:
                f.write("x")

watcher = threading.Thread(target=watch)
watcher.start()
writers = [threading.Thread(target=write, args=(n,)) for n in range(8)]
for t in writers: t.start()
for t in writers: t.join()
done.set(); watcher.join()
modes = {oct(os.stat(os.path.join(folder, name)).st_mode & 0o777) for name in os.listdir(folder)}
print(sorted(oct(u) for u in seen), sorted(oct(m) for m in given), sorted(modes), oct(os.umask(0)),
      len(os.listdir(folder)))
"""


def test_threads_writing_at_once_leave_the_umask_alone(tmp_path):
    out = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["['0o27']", "['0o640']", "['0o640']", "0o27", "400"]


def test_a_write_never_sets_the_umask(tmp_path, monkeypatch):
    def refuse(mask):
        raise AssertionError("os.umask called while writing")

    monkeypatch.setattr(os, "umask", refuse)
    with files.atomic_path(str(tmp_path / "a.txt")) as tmp, open(tmp, "w") as f:
        f.write("a")
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o666 & ~files.UMASK


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")
def test_the_umask_is_read_without_setting_it():
    current = os.umask(0o022)
    os.umask(current)
    assert files._read_umask() == current


def test_a_write_into_a_missing_folder_is_a_write_error_naming_it(tmp_path):
    with pytest.raises(files.WriteError) as info, files.atomic_path(str(tmp_path / "gone" / "a.txt")):
        pass
    gone = tmp_path / "gone"
    assert str(info.value) == f"Cannot write {gone / 'a.txt'}: the folder {gone} does not exist."
    assert isinstance(info.value, OSError) and info.value.errno == 2


def test_a_write_under_a_file_is_a_write_error_saying_so(tmp_path):
    (tmp_path / "plain").write_text("a file, not a folder")
    target = tmp_path / "plain" / "a.txt"
    with pytest.raises(files.WriteError) as info, files.atomic_path(str(target)):
        pass
    assert str(info.value) == f"Cannot write {target}: a part of its path is a file, not a folder."


def test_a_rename_onto_a_folder_is_a_write_error_and_leaves_no_temporary(tmp_path):
    (tmp_path / "taken").mkdir()
    with (pytest.raises(files.WriteError, match="Cannot write .*taken: Is a directory"),
          files.atomic_path(str(tmp_path / "taken")) as tmp, open(tmp, "w") as f):
        f.write("x")
    assert os.listdir(tmp_path) == ["taken"]


# -- the readers that take a file object: activation dumps and sink batch files --------------------------------

def _never_blocks(call):
    """``call()``'s exception, from a thread that must finish: an open that waited on a FIFO would not."""
    import threading

    caught = []

    def run():
        try:
            call()
        except Exception as exc:  # noqa: BLE001 (the test looks at it)
            caught.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the open blocked"
    return caught[0] if caught else None


def test_a_dump_that_is_a_link_or_a_fifo_is_refused_at_once(tmp_path):
    import numpy as np

    from producer.exports.dumps import DumpError, load_layer

    real = tmp_path / "real.npz"
    np.savez(real, conv1_relu=np.ones((2, 2, 3), np.float32))
    assert load_layer(str(real), "conv1_relu").shape == (2, 2, 3)
    (tmp_path / "link.npz").symlink_to(real)
    os.mkfifo(tmp_path / "fifo.npz")
    for name, reason in (("link.npz", "symbolic link"), ("fifo.npz", "not a regular file")):
        error = _never_blocks(lambda name=name: load_layer(str(tmp_path / name), "conv1_relu"))
        assert isinstance(error, DumpError) and reason in str(error), error
    assert "is gone" in str(_never_blocks(lambda: load_layer(str(tmp_path / "none.npz"), "conv1_relu")))


def test_a_sink_batch_file_that_is_a_fifo_or_a_link_is_damaged_not_waited_for(tmp_path):
    from imgq.results import sink

    folder = tmp_path / "sink" / "abc123"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "batch-000000.parquet")
    error = _never_blocks(lambda: list(sink.read_job(str(tmp_path / "sink"), "abc123")))
    assert isinstance(error, sink.DamagedSink) and "not a regular file" in str(error)
    os.unlink(folder / "batch-000000.parquet")
    (tmp_path / "elsewhere.parquet").write_bytes(b"PAR1")
    (folder / "batch-000000.parquet").symlink_to(tmp_path / "elsewhere.parquet")
    error = _never_blocks(lambda: list(sink.read_job(str(tmp_path / "sink"), "abc123")))
    assert isinstance(error, sink.DamagedSink) and "symbolic link" in str(error)
