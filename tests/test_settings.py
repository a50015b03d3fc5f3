import os

import pytest

from imgq.settings import Settings, env_var, mask_url


def test_defaults():
    settings = Settings()
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.effective_results_url == settings.broker_url
    assert settings.allowed_roots == ()


def test_from_env_reads_prefixed_variables_and_overrides_win(tmp_path):
    environ = {"IMGQ_BATCH_SIZE": "16", "IMGQ_WEIGHTS": "random:3", "IMGQ_BROKER_URL": "redis://h:1/2",
               "IMGQ_ALLOWED_ROOTS": os.pathsep.join([str(tmp_path), str(tmp_path / "x" / "..")])}
    settings = Settings.from_env(environ, weights=None, batch_size=4)
    assert settings.batch_size == 4  # the override
    assert settings.weights == "random:3"  # None overrides are ignored
    assert settings.broker_url == "redis://h:1/2"
    assert settings.allowed_roots == (str(tmp_path), str(tmp_path))


@pytest.mark.parametrize(("name", "value"), [("IMGQ_BATCH_SIZE", "many"), ("IMGQ_BATCH_SIZE", "0"),
                                             ("IMGQ_BATCH_SIZE", "1025"), ("IMGQ_TOP_K", "1001"),
                                             ("IMGQ_NAMESPACE", "a*b"), ("IMGQ_NAMESPACE", "x:y"),
                                             ("IMGQ_POOL", "gevent"), ("IMGQ_PRECISION", "fp16"),
                                             ("IMGQ_JPEG_DRAFT", "maybe")])
def test_bad_values_name_the_variable_and_the_value(name, value):
    with pytest.raises(ValueError, match=name) as info:
        Settings.from_env({name: value})
    assert repr(value) in str(info.value)


def test_booleans_and_choices():
    settings = Settings.from_env({"IMGQ_JPEG_DRAFT": "off", "IMGQ_POOL": "solo", "IMGQ_PRECISION": "bf16"})
    assert (settings.jpeg_draft, settings.pool, settings.precision) == (False, "solo", "bf16")


def test_as_env_round_trips(tmp_path):
    settings = Settings(batch_size=7, allowed_roots=(str(tmp_path),), weights="random")
    assert Settings.from_env(settings.as_env()) == settings
    assert env_var("visibility_timeout") == "IMGQ_VISIBILITY_TIMEOUT"


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://user:secret@host/1", "rediss://user:***@host/1"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:p%40ss@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
])
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize("value", ["resnet50", "efficientnetv2s", "./my-model", "/models/defects"])
def test_the_model_setting_takes_a_builtin_name_or_a_folder(value):
    assert Settings.from_env({"IMGQ_MODEL": value}).model == value
    assert Settings().model == "resnet50"


@pytest.mark.parametrize("value", ["resnet", "ResNet50", "0", "-1", "nan", "x" * 500])
def test_an_unknown_model_name_is_one_line_with_the_closest(value):
    with pytest.raises(ValueError, match="IMGQ_MODEL: Unknown model") as info:
        Settings.from_env({"IMGQ_MODEL": value})
    assert "\n" not in str(info.value)


def test_the_runtime_can_be_auto():
    assert Settings.from_env({"IMGQ_RUNTIME": "auto"}).runtime == "auto"


@pytest.mark.parametrize("value", ["random:-1", "random:4294967296", "random:nan", "random:" + "9" * 5000,
                                   "random:x", "random:1.5", "random:+3", "random: 3", "random:3_0", "random:\u0663",
                                   "random:", "random:0x10", "Random", "weights.bin"])
def test_a_weights_setting_is_checked_where_it_is_read(value):
    """One reading of IMGQ_WEIGHTS (imgq/models/weights.py) for the producer and the worker: a seed that
    keras.utils.set_random_seed refuses deep inside TensorFlow (-1, 2**32) is refused here, in one line."""
    with pytest.raises(ValueError, match="IMGQ_WEIGHTS") as info:
        Settings.from_env({"IMGQ_WEIGHTS": value})
    message = str(info.value)
    assert "\n" not in message and "Expected " in message and len(message) < 300


@pytest.mark.parametrize(("value", "seed"), [("random", 0), ("random:0", 0), ("random:4294967295", 2**32 - 1),
                                             ("random:007", 7)])
def test_seeds_from_0_to_2_to_the_32_less_1(value, seed):
    from imgq.models.weights import random_seed

    assert Settings.from_env({"IMGQ_WEIGHTS": value}).weights == value and random_seed(value) == seed


@pytest.mark.parametrize("value", ["imagenet", "/w/mine.weights.h5", "old.h5", "whole.keras"])
def test_weights_of_every_kind_are_taken(value):
    assert Settings.from_env({"IMGQ_WEIGHTS": value}).weights == value


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("0.5", 0.5), ("64", 64.0), ("1e1", 10.0)])
def test_the_quiet_load_of_auto_is_a_load_per_core_from_0_to_64(value, expected):
    assert Settings.from_env({"IMGQ_AUTO_QUIET_LOAD": value}).auto_quiet_load == expected
    assert Settings().auto_quiet_load == 0.5


@pytest.mark.parametrize("value", ["-0.1", "-1", "nan", "inf", "-inf", "64.01", "1e308", "1e999", "quiet"])
def test_the_quiet_load_of_auto_is_refused_at_its_edges_in_one_line(value):
    with pytest.raises(ValueError, match="IMGQ_AUTO_QUIET_LOAD must be") as info:
        Settings.from_env({"IMGQ_AUTO_QUIET_LOAD": value})
    assert repr(value) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["1", "4", "64"])
def test_concurrency_is_from_1_to_64(value):
    assert Settings.from_env({"IMGQ_CONCURRENCY": value}).concurrency == int(value)


@pytest.mark.parametrize("value", ["0", "-1", "65", "1000", "9" * 30, "nan", "inf", "1.5", "four"])
def test_concurrency_is_refused_at_its_edges_in_one_line(value):
    # A worker reserves as many batches as it has threads (prefetch multiplier 1), all waiting on one model:
    # imgq/settings.py MAX_CONCURRENCY says why 64 (issue 25.8).
    with pytest.raises(ValueError, match="IMGQ_CONCURRENCY must be") as info:
        Settings.from_env({"IMGQ_CONCURRENCY": value})
    assert repr(value) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "seconds"), [("1", 1), ("30s", 30), ("5m", 300), ("1d", 86400)])
def test_the_floor_of_schedule_intervals_is_a_duration_from_1s_to_1d(value, seconds):
    assert Settings.from_env({"IMGQ_SCHEDULE_MIN_EVERY": value}).schedule_min_every == seconds
    assert Settings().schedule_min_every == 60


@pytest.mark.parametrize("value", ["0", "0s", "-1", "nan", "inf", "1.5", "2d", "9" * 30, "soon"])
def test_the_floor_of_schedule_intervals_is_refused_at_its_edges_in_one_line(value):
    with pytest.raises(ValueError, match="IMGQ_SCHEDULE_MIN_EVERY") as info:
        Settings.from_env({"IMGQ_SCHEDULE_MIN_EVERY": value})
    assert repr(value) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["0", "301", str(10**10), "9" * 40])
def test_the_heartbeat_period_is_bounded_with_one_line(value):
    """A period of 10**10 s overflowed the heartbeat thread's wait: the thread died after one beat, whose key
    then outlived the worker by centuries (issue 25.3). Refused where it is read, in one line."""
    with pytest.raises(ValueError) as info:
        Settings.from_env({"IMGQ_HEARTBEAT_SECONDS": value})
    assert str(info.value) == f"IMGQ_HEARTBEAT_SECONDS must be from 1 to 300. Received: {value!r}"
    assert Settings.from_env({"IMGQ_HEARTBEAT_SECONDS": "300"}).heartbeat_seconds == 300


@pytest.mark.parametrize("variable", ["IMGQ_DUMP_ROOT", "IMGQ_SINK_DIR"])
@pytest.mark.parametrize(("value", "kept"), [("s3://imgq-out/dumps", "s3://imgq-out/dumps"),
                                             ("s3://imgq-out/a/b/", "s3://imgq-out/a/b"),
                                             ("s3://imgq-out", "s3://imgq-out"), ("s3://imgq-out/", "s3://imgq-out"),
                                             ("/var/lib/imgq/dumps", "/var/lib/imgq/dumps")])
def test_dumps_and_the_sink_go_to_a_folder_or_an_s3_prefix(variable, value, kept):
    settings = Settings.from_env({variable: value})
    assert (settings.effective_dump_root if variable == "IMGQ_DUMP_ROOT" else settings.effective_sink_dir) == kept


@pytest.mark.parametrize("variable", ["IMGQ_DUMP_ROOT", "IMGQ_SINK_DIR"])
@pytest.mark.parametrize("value", ["s3://", "s3:///dumps", "s3://ab/x", "s3://Imgq-Out/x", "s3://imgq_out/x",
                                   "s3://" + "b" * 64, "s3://imgq-out//x", "s3://imgq-out/a/../b",
                                   "s3://imgq-out/./b"])
def test_an_s3_destination_s3_would_refuse_is_one_line(variable, value):
    with pytest.raises(ValueError, match=f"\\A{variable} must") as info:
        Settings.from_env({variable: value})
    assert repr(value) in str(info.value) and "\n" not in str(info.value)
