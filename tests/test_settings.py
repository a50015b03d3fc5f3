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


@pytest.mark.parametrize("value", ["0", "301", str(10**10), "9" * 40])
def test_the_heartbeat_period_is_bounded_with_one_line(value):
    """A period of 10**10 s overflowed the heartbeat thread's wait: the thread died after one beat, whose key
    then outlived the worker by centuries (issue 25.3). Refused where it is read, in one line."""
    with pytest.raises(ValueError) as info:
        Settings.from_env({"IMGQ_HEARTBEAT_SECONDS": value})
    assert str(info.value) == f"IMGQ_HEARTBEAT_SECONDS must be from 1 to 300. Received: {value!r}"
    assert Settings.from_env({"IMGQ_HEARTBEAT_SECONDS": "300"}).heartbeat_seconds == 300
