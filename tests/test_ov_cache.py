"""The OpenVINO conversion cache (worker/runtimes/ov_cache.py): an entry is checked against the digests written with it,
a damaged one is replaced, files reach the disk before the rename, stale partial folders are removed (issue
19, items 10 and 11). The small greyscale CNN converts in a second, so every test converts for real."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import numpy as np
import pytest

from tests import user_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(user_models.brightness_folder(tmp_path_factory.mktemp("model") / "brightness"))


def load(folder, cache):
    from worker.runtimes.loading import load_classifier

    return load_classifier("imagenet", 2, runtime="openvino", model=folder, cache_dir=str(cache))


def grey(level: int) -> list[np.ndarray]:
    return [np.full((28, 28, 1), level, np.uint8)]


def entries(cache) -> list[str]:
    return sorted(name for name in os.listdir(cache) if "." not in name)


def test_an_entry_carries_the_digests_of_its_files(folder, tmp_path):
    from worker.runtimes.ov_cache import file_sha256

    load(folder, tmp_path)
    (entry,) = entries(tmp_path)
    about = json.loads((tmp_path / entry / "about.json").read_text())
    assert about["model"].startswith("brightness@sha256:") and about["input"] == [28, 28, 1]
    assert about["sha256"] == {name: file_sha256(str(tmp_path / entry / name)) for name in ("model.xml", "model.bin")}


def test_a_zero_filled_model_bin_is_never_loaded_and_is_replaced(folder, tmp_path):
    first = load(folder, tmp_path)
    expected = first.predict(first.model_input(grey(200)))
    (entry,) = entries(tmp_path)
    weights = tmp_path / entry / "model.bin"
    weights.write_bytes(bytes(weights.stat().st_size))  # the right size, all zeros: loads, answers nonsense
    second = load(folder, tmp_path)
    assert second.converted == [()]  # not trusted: converted again
    np.testing.assert_allclose(second.predict(second.model_input(grey(200))), expected, atol=1e-6)
    assert entries(tmp_path) == [entry] and weights.read_bytes() != bytes(weights.stat().st_size)
    third = load(folder, tmp_path)
    assert third.converted == []  # the replaced entry is whole: read, not converted
    assert not [name for name in os.listdir(tmp_path) if "." in name]  # nothing left aside


@pytest.mark.parametrize("damage", ["no about.json", "truncated xml", "about.json not json"])
def test_other_damage_is_replaced_too(folder, tmp_path, damage):
    load(folder, tmp_path)
    (entry,) = entries(tmp_path)
    if damage == "no about.json":
        (tmp_path / entry / "about.json").unlink()
    elif damage == "truncated xml":
        xml = tmp_path / entry / "model.xml"
        xml.write_bytes(xml.read_bytes()[:100])
    else:
        (tmp_path / entry / "about.json").write_text("{")
    assert load(folder, tmp_path).converted == [()]
    assert load(folder, tmp_path).converted == []


def test_an_entry_copied_under_another_models_key_is_not_run_for_it(folder, tmp_path, caplog):
    """Model A's conversion copied into model B's key folder (by hand, or a backup restored to the wrong place)
    has whole files whose digests match: its about.json tells it is A's. B is converted again (its labels are
    B's, not A's), the log says why once, and the entry is B's own from then on (issue 25, item 13)."""
    from worker.runtimes.openvino_runtime import load_openvino

    inverted = str(user_models.write_folder(tmp_path / "inverted", user_models.inverted_brightness_model(),
                                            user_models.BRIGHTNESS_LABELS))
    cache = tmp_path / "cache"
    first = load(folder, cache)
    (entry,) = entries(cache)
    other = load_openvino("imagenet", 2, "fp32", str(cache), spec=inverted)
    shutil.copytree(cache / entry, other.cache_entry().folder)
    with caplog.at_level(logging.WARNING, logger="worker.runtimes.ov_cache"):
        other.warm_up()
    assert other.converted == [()]
    said = [r.getMessage() for r in caplog.records if "not this conversion" in r.getMessage()]
    assert len(said) == 1 and first.model_id in said[0] and other.model_id in said[0], said
    labels = [user_models.BRIGHTNESS_LABELS[int(p.argmax())] for p in other.predict(other.model_input(grey(200)))]
    assert labels == ["dark"]  # the inverted model's answer for a bright picture (A's would be "bright")
    assert load(inverted, cache).converted == []  # replaced by its own conversion: read from now on
    assert entries(cache) == sorted([entry, os.path.basename(other.cache_entry().folder)])


def test_files_are_synced_before_the_rename(folder, tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", str(b))), real_rename(a, b))[1])
    load(folder, tmp_path)
    (entry,) = entries(tmp_path)
    rename = events.index(("rename", str(tmp_path / entry)))
    synced = {os.path.basename(path) for kind, path in events[:rename] if kind == "fsync"}
    assert {"model.xml", "model.bin", "about.json"} <= synced


def test_stale_partial_folders_are_removed(folder, tmp_path):
    old, fresh = tmp_path / "x.partial-1-2", tmp_path / "y.partial-3-4"
    for partial in (old, fresh):
        partial.mkdir()
        (partial / "model.bin").write_bytes(b"\0" * 1000)
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    load(folder, tmp_path)  # a conversion being saved looks for leftovers
    assert not old.exists() and fresh.exists()  # a fresh one may be another worker's, converting now


def test_auto_measures_once_per_model_and_cpu_and_records_it(folder, tmp_path, monkeypatch):
    from worker.runtimes import auto as runtime_choice
    from worker.runtimes.loading import load_classifier

    # A machine whose load stays above quiet: its choice is provisional, and measured again only when quiet
    # (issue 25.7, tests/test_auto_choice.py), which it never is here, whatever this machine's own load.
    busy = runtime_choice.Machine(load=lambda: 6.3, cores=2)
    first = load_classifier("imagenet", 4, runtime="auto", model=folder, cache_dir=str(tmp_path), machine=busy)
    (entry,) = entries(tmp_path)
    (record_file,) = [name for name in os.listdir(tmp_path / entry) if name.startswith("runtime-")]
    record = json.loads((tmp_path / entry / record_file).read_text())
    assert record["choice"] in ("openvino", "tensorflow") and first.runtime.startswith(record["choice"])
    assert set(record["images_per_second"]) == {"openvino", "tensorflow"} and record["model"] == first.model_id
    assert record["cpu"] == runtime_choice.cpu_fingerprint()[0]
    assert record["load_average"] >= 0 and record["batch_size"] == 4  # min(batch size, SAMPLE)

    def no_measuring(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(runtime_choice, "race", no_measuring)
    again = load_classifier("imagenet", 4, runtime="auto", model=folder, cache_dir=str(tmp_path), machine=busy)
    assert again.runtime.split()[0] == first.runtime.split()[0]
    (tmp_path / entry / record_file).unlink()  # deleting the record measures again
    with pytest.raises(AssertionError, match="measured again"):
        load_classifier("imagenet", 4, runtime="auto", model=folder, cache_dir=str(tmp_path), machine=busy)


def test_auto_is_the_default_runtime():
    from imgq.settings import Settings

    assert Settings().runtime == "auto" and Settings.from_env({}).runtime == "auto"


def test_the_race_alternates_the_runtimes_and_keeps_each_ones_best_pass(monkeypatch):
    """A burst of other work slows the pass it falls on: alternating spreads it over both runtimes, and the
    best pass of each is compared."""
    from types import SimpleNamespace

    from worker.runtimes import auto
    from worker.runtimes.auto import race

    calls, clock = [], [0.0]
    # Each pass takes exactly its seconds on a clock of the test's own: slept for real, a's pass of 0.05 s took
    # more than b's 0.1 s whenever a busy machine woke the test 50 ms late, and a lost.
    monkeypatch.setattr(auto, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    class Timed:
        def __init__(self, name, seconds):
            self.name, self.seconds = name, list(seconds)

        def model_input(self, pixels):
            return pixels

        def predict(self, batch):
            calls.append(self.name)
            clock[0] += self.seconds.pop(0)

    pixels = [np.zeros((2, 2, 3), np.uint8)] * 4
    speeds = race({"a": Timed("a", [0, 0.2, 0.05, 0.2]), "b": Timed("b", [0, 0.1, 0.1, 0.1])}, pixels, passes=3)
    assert calls == ["a", "b"] * 4  # one untimed pass each, then three rounds, in turn
    assert speeds["a"] > speeds["b"]  # a's best pass (0.05 s) beats b's (0.1 s), whatever a's slow passes


def test_auto_without_tensorflow_is_openvino_without_measuring(folder, tmp_path, monkeypatch):
    """The Dockerfile's openvino image: nothing to compare with, nothing recorded, TensorFlow never needed."""
    from worker.runtimes import auto as runtime_choice
    from worker.runtimes.loading import load_classifier

    load(folder, tmp_path)  # the conversion, as the image's build makes it
    monkeypatch.setattr(runtime_choice, "tensorflow_installed", lambda: False)
    monkeypatch.setattr(runtime_choice, "race", lambda *args: pytest.fail("measured"))
    chosen = load_classifier("imagenet", 2, runtime="auto", model=folder, cache_dir=str(tmp_path))
    assert chosen.runtime.startswith("openvino ")
    (entry,) = entries(tmp_path)
    assert not [name for name in os.listdir(tmp_path / entry) if name.startswith("runtime-")]


def test_auto_falls_back_to_tensorflow_only_where_tensorflow_is(folder, tmp_path, monkeypatch):
    from worker.runtimes import auto as runtime_choice
    from worker.runtimes import openvino_runtime
    from worker.runtimes.loading import load_classifier

    def broken(*args, **kwargs):
        raise openvino_runtime.OpenVINOError("OpenVINO could not compile the model for CPU (test)")

    monkeypatch.setattr(openvino_runtime, "load_openvino", broken)
    chosen = load_classifier("imagenet", 2, runtime="auto", model=folder, cache_dir=str(tmp_path))
    assert chosen.runtime.startswith("tensorflow ")
    monkeypatch.setattr(runtime_choice, "tensorflow_installed", lambda: False)
    with pytest.raises(openvino_runtime.OpenVINOError, match="could not compile"):
        load_classifier("imagenet", 2, runtime="auto", model=folder, cache_dir=str(tmp_path))


def test_a_recorded_choice_that_is_a_link_is_not_followed(folder, tmp_path, monkeypatch):
    """The record is a file imgq opens: a link (here to a record saying tensorflow) is not read, so the
    runtimes are measured again, and the link is replaced by a record of its own."""
    from worker.runtimes import auto as runtime_choice
    from worker.runtimes.loading import load_classifier

    load_classifier("imagenet", 2, runtime="auto", model=folder, cache_dir=str(tmp_path))
    (entry,) = entries(tmp_path)
    (record,) = [tmp_path / entry / name for name in os.listdir(tmp_path / entry) if name.startswith("runtime-")]
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"choice": "tensorflow"}))
    record.unlink()
    record.symlink_to(elsewhere)
    measured = []
    real_race = runtime_choice.race
    monkeypatch.setattr(runtime_choice, "race", lambda *args: measured.append(1) or real_race(*args))
    load_classifier("imagenet", 2, runtime="auto", model=folder, cache_dir=str(tmp_path))
    assert measured == [1]
    assert not record.is_symlink() and json.loads(elsewhere.read_text()) == {"choice": "tensorflow"}
