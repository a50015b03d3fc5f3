import pytest

from imgq.celery_config import celery_config
from imgq.contract import ERROR_CODES, BatchMessage, MessageError, error_record, ok_record
from imgq.keys import Keys
from imgq.settings import Settings


def test_batch_message_round_trips_through_json_types():
    message = BatchMessage(job="j1", batch=3, images=((24, "/a b/c.jpg"), (25, "/x\udcff.png")), top_k=5)
    data = message.to_dict()
    assert data == {"v": 1, "job": "j1", "batch": 3, "images": [[24, "/a b/c.jpg"], [25, "/x\udcff.png"]],
                    "top_k": 5}
    assert BatchMessage.from_dict(data) == message


@pytest.mark.parametrize("data", [
    None, [], {"v": 2, "job": "j"}, {"v": 1, "job": "j", "batch": 0, "top_k": 5},
    {"v": 1, "job": "j", "batch": 0, "top_k": 5, "images": [[1]]},
    {"v": 1, "job": "j", "batch": "x", "top_k": 5, "images": []},
])
def test_malformed_messages_are_refused_with_what_was_received(data):
    with pytest.raises(MessageError, match="Received"):
        BatchMessage.from_dict(data)


def test_records_have_one_shape():
    ok = ok_record("j", 1, "/p.jpg", [{"wnid": "n1", "label": "a", "score": 0.5}], weights="w")
    error = error_record("j", 2, "/q.jpg", "corrupt", "truncated", weights="w")
    ok, error = ok.to_dict(), error.to_dict()
    assert ok.keys() == error.keys()
    assert (ok["status"], ok["error"]) == ("ok", None)
    assert error["error"] == {"code": "corrupt", "message": "truncated"} and error["top_k"] == []


def test_error_record_refuses_unknown_codes():
    with pytest.raises(ValueError, match="Expected an error code"):
        error_record("j", 1, "/p", "oops", "?")
    assert {"missing", "unreadable", "not_an_image", "corrupt", "too_large", "forbidden"} <= ERROR_CODES.keys()


def test_keys_live_under_the_namespace():
    keys = Keys("ns")
    assert {keys.jobs, keys.job("a"), keys.results("a"), keys.failed("a"), keys.batches("a"),
            keys.worker("w")} == {"ns:jobs", "ns:job:a", "ns:results:a", "ns:failed:a", "ns:batches:a",
                                  "ns:worker:w"}


def test_celery_config_is_json_only_acks_late_and_namespaced():
    config = celery_config(Settings(namespace="ns", visibility_timeout=77))
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_ignore_result"]
    assert config["broker_transport_options"] == {"visibility_timeout": 77, "global_keyprefix": "ns:kombu:"}
    assert config["task_default_queue"] == "ns"


@pytest.mark.parametrize(("url", "verified"), [
    ("rediss://:pw@redis.example:6380/0", True),
    ("rediss://:pw@redis.example:6380/0?ssl_cert_reqs=optional", None),  # the URL says what it wants
    ("redis://127.0.0.1:6379/0", None),
])
def test_tls_brokers_verify_certificates_by_default(url, verified):
    import ssl

    config = celery_config(Settings(broker_url=url))
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED} if verified else None
    assert config.get("broker_use_ssl") == expected


def test_labels_of_imagenet_and_user_models_round_trip():
    from imgq.contract import Label, ResultRecord, ok_record

    imagenet = Label("n01440764", "tench", 0.5)
    user = Label("", "bright", 0.9, 1)
    assert imagenet.to_dict() == {"wnid": "n01440764", "label": "tench", "score": 0.5}
    assert user.to_dict() == {"label": "bright", "index": 1, "score": 0.9}
    for label in (imagenet, user):
        record = ok_record("j", 0, "/a.png", [label.to_dict()], model="m")
        assert ResultRecord.from_dict(record.to_dict()).top_k == (label,)
    with pytest.raises(MessageError):
        ResultRecord.from_dict({**ok_record("j", 0, "/a", [user]).to_dict(), "top_k": [{"label": "x", "score": 1}]})
