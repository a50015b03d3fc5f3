"""Where imgq writes what others read: one contract (imgq/storage/destination.py's Destination) and one test class
run against every destination, as tests/test_byte_sources.py does for reading: a local folder, and an s3:// prefix
on a real S3 server (``TestS3Prefix``, skipped without the weed binary). A new destination adds a subclass of
``DestinationContract`` that says where its root is and how to look at it from outside imgq."""

from __future__ import annotations

import os
import stat
import uuid

import numpy as np
import pytest

from imgq.storage.destination import PROBE_NAME, Destination, StoreError
from imgq.storage.files import RefusedFile, WriteError
from imgq.storage.local_destination import LocalFolder
from imgq.storage.locate import destination_for

DATA = b"imgq writes this" * 64


class DestinationContract:
    """The promises of Destination, for any implementation. Subclasses provide ``destination``, ``root`` (a
    location nothing else writes under) and ``stored(location) -> bytes | None`` (what is there, seen from
    outside imgq)."""

    destination: Destination
    root: str

    def stored(self, location: str) -> bytes | None:
        raise NotImplementedError

    def at(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def write(self, location: str, data: bytes = DATA) -> None:
        with self.destination.writing(location) as file:
            file.write(data)

    def test_it_owns_its_locations(self):
        assert self.destination.owns(self.at("job", "0.npz"))
        assert type(destination_for(self.at("job", "0.npz"))) is type(self.destination)

    def test_a_file_written_is_read_back_whole_under_its_path_s_key(self):
        location = self.at("job1", "batch-000001.parquet")
        self.write(location)
        assert self.stored(location) == DATA  # the layout of keys is the layout of paths
        assert self.destination.exists(location)
        with self.destination.open(location, len(DATA)) as file:
            assert file.read() == DATA

    def test_nothing_is_seen_under_the_name_before_the_block_ends(self):
        location = self.at("job1", "3.npz")
        with self.destination.writing(location) as file:
            file.write(DATA)
            assert self.stored(location) is None and not self.destination.exists(location)
            assert "3.npz" not in self.destination.names(self.at("job1"))
        assert self.stored(location) == DATA

    def test_a_failed_write_leaves_the_older_file_as_it_was(self):
        location = self.at("job1", "embeddings-000000.npz")
        self.write(location, b"older")
        with pytest.raises(ZeroDivisionError), self.destination.writing(location) as file:
            file.write(DATA)
            raise ZeroDivisionError  # a writer that fails mid-write
        assert self.stored(location) == b"older"
        assert self.destination.names(self.at("job1")) == ["embeddings-000000.npz"]  # no temporary file left

    def test_a_write_replaces_what_was_there(self):
        location = self.at("job1", "batch-000000.parquet")
        self.write(location, b"first delivery")
        with self.destination.writing(location, durable=True) as file:
            file.write(b"second delivery")
        assert self.stored(location) == b"second delivery"

    def test_size_is_what_was_written(self):
        with self.destination.writing(self.at("job1", "0.npz")) as file:
            np.savez(file, avg_pool=np.ones(2048, dtype=np.float16))
            size = self.destination.size(file)
        assert size == len(self.stored(self.at("job1", "0.npz")) or b"") > 4096

    def test_names_are_the_files_directly_in_a_folder_sorted(self):
        for name in ("b.npz", "a.npz", "deeper/c.npz"):
            self.write(self.at("job2", name))
        self.write(self.at("job2x", "d.npz"))  # shares the prefix "job2" but is not in the folder
        names = self.destination.names(self.at("job2"))
        assert [name for name in names if name != "deeper"] == ["a.npz", "b.npz"]  # a local sub-folder is a name
        assert self.destination.names(self.at("no-such-job")) == []

    def test_the_listing_gives_each_file_the_version_it_reads_with_and_a_rewrite_another(self):
        location = self.at("job5", "embeddings-000000.npz")
        self.write(location)
        listed = dict(self.destination.listing(self.at("job5")))
        assert list(listed) == self.destination.names(self.at("job5")) == ["embeddings-000000.npz"]
        with self.destination.open(location, len(DATA)) as file:
            assert self.destination.version(file) == listed["embeddings-000000.npz"] != ""
        self.write(location, DATA[::-1])  # the same size, other bytes
        again = dict(self.destination.listing(self.at("job5")))["embeddings-000000.npz"]
        assert again != listed["embeddings-000000.npz"]
        with self.destination.open(location, len(DATA)) as file:
            assert self.destination.version(file) == again
        assert self.destination.listing(self.at("no-such-job")) == []

    def test_a_missing_file_is_file_not_found(self):
        assert not self.destination.exists(self.at("job3", "none.npz"))
        with pytest.raises(FileNotFoundError), self.destination.open(self.at("job3", "none.npz"), 100):
            pass

    def test_a_file_over_the_cap_is_refused(self):
        location = self.at("job3", "big.npz")
        self.write(location)
        with pytest.raises(RefusedFile, match=str(len(DATA) - 1)), self.destination.open(location, len(DATA) - 1):
            pass

    def test_remove_takes_the_file_away_and_a_missing_one_is_no_error(self):
        location = self.at("job4", "batch-000000.parquet")
        self.write(location)
        self.destination.remove(location)
        self.destination.remove(location)
        self.destination.remove_folder(self.at("job4"))
        assert self.stored(location) is None and self.destination.names(self.at("job4")) == []

    def test_a_writable_root_passes_the_check_and_keeps_nothing_of_it(self):
        root = self.at("fresh", "root")
        self.destination.check_writable(root)
        assert self.destination.names(root) == [] and self.stored(os.path.join(root, PROBE_NAME)) is None


class TestLocalFolder(DestinationContract):
    destination = LocalFolder()

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path):
        self.root = str(tmp_path / "out")

    def stored(self, location: str) -> bytes | None:
        try:
            with open(location, "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def test_a_link_is_not_followed(self, tmp_path):
        (tmp_path / "elsewhere").write_bytes(DATA)
        os.makedirs(self.at("job"))
        os.symlink(tmp_path / "elsewhere", self.at("job", "0.npz"))
        with pytest.raises(RefusedFile, match="symbolic link"), self.destination.open(self.at("job", "0.npz"), 10**6):
            pass

    def test_a_file_where_the_folder_should_be_is_one_line(self, tmp_path):
        blocked = tmp_path / "a-file"
        blocked.write_bytes(b"x")
        for check in (lambda: self.destination.check_writable(str(blocked / "dumps")),
                      lambda: self.write(str(blocked / "job" / "0.npz"))):
            with pytest.raises(WriteError) as caught:
                check()
            assert str(caught.value).startswith(f"Cannot write {blocked}/") and "\n" not in str(caught.value)

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
    def test_a_read_only_root_fails_the_check_in_one_line(self, tmp_path):
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            with pytest.raises(WriteError, match=f"\\ACannot write {folder}/{PROBE_NAME}: Permission denied"):
                self.destination.check_writable(str(folder))
        finally:
            folder.chmod(stat.S_IRWXU)


@pytest.fixture(scope="session")
def destination_bucket(s3_server):
    name = "imgq-destinations"
    s3_server.bucket(name)
    return name


class TestS3Prefix(DestinationContract):
    """The contract against a real S3 server (SeaweedFS's weed mini, tests/s3server.py)."""

    @pytest.fixture(autouse=True)
    def _bucket(self, s3, destination_bucket):
        from imgq.storage.s3_destination import S3Prefix

        self.server, self.bucket = s3, destination_bucket
        self.prefix = f"t-{uuid.uuid4().hex[:10]}"
        self.root = f"s3://{self.bucket}/{self.prefix}"
        self.destination = S3Prefix()
        self.client = s3.client()

    def stored(self, location: str) -> bytes | None:
        assert location.startswith(f"s3://{self.bucket}/")
        try:
            return self.client.get_object(Bucket=self.bucket, Key=location[len(f"s3://{self.bucket}/"):])["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def test_a_root_that_is_a_whole_bucket_keeps_the_layout(self):
        location = os.path.join(f"s3://{self.bucket}", self.prefix)  # the job folder at the bucket's top
        self.write(os.path.join(location, "batch-000002.parquet"))
        assert self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/batch-000002.parquet")["Body"].read() \
            == DATA
        assert self.destination.names(location) == ["batch-000002.parquet"]

    def test_a_file_bigger_than_the_spool_is_one_object(self, monkeypatch):
        from imgq.storage import s3_destination

        monkeypatch.setattr(s3_destination, "SPOOL_BYTES", 1024)  # spilled to a temporary file, then one PUT
        location = self.at("job5", "0.npz")
        self.write(location, DATA * 10)
        assert self.stored(location) == DATA * 10

    def test_no_such_bucket_is_one_line_at_the_check(self):
        # The check asks for the bucket before its PUT: SeaweedFS makes a bucket a PUT names, where S3 refuses it.
        root = f"s3://no-such-{uuid.uuid4().hex[:8]}/dumps"
        with pytest.raises(WriteError, match=f"\\ACannot write {root}/{PROBE_NAME}: no such bucket\\.\\Z"):
            self.destination.check_writable(root)
        assert self.destination.names(f"{root}/job") == []  # a reader finds nothing there
        assert not self.destination.exists(f"{root}/job/0.npz")

    def test_refused_credentials_are_one_line_without_the_secret(self, monkeypatch):
        from imgq.storage import s3 as s3_source

        self.write(self.at("job6", "0.npz"))
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-wrong-secret")
        s3_source.forget_clients()
        errors = []
        for attempt in (lambda: self.destination.check_writable(self.root),
                        lambda: self.destination.open(self.at("job6", "0.npz"), 10**6).__enter__(),
                        lambda: self.destination.names(self.at("job6"))):
            with pytest.raises(OSError) as caught:
                attempt()
            errors.append(caught.value)
        assert isinstance(errors[0], WriteError) and all(isinstance(e, StoreError) for e in errors[1:])
        for error in errors:
            message = str(error)
            assert "refused access" in message and "AWS_ACCESS_KEY_ID" in message, message
            assert "a-wrong-secret" not in message and "\n" not in message
        assert not self.destination.exists(self.at("job6", "0.npz"))  # it cannot be told
        s3_source.forget_clients()

    def test_a_store_away_is_one_line(self, monkeypatch):
        from imgq.storage import s3 as s3_source
        from tests.processes import free_port

        monkeypatch.setenv("IMGQ_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens there
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        s3_source.forget_clients()
        with pytest.raises(WriteError, match="did not answer") as caught:
            self.destination.check_writable(self.root)
        assert "\n" not in str(caught.value)
        with pytest.raises(StoreError, match="did not answer"):
            self.destination.names(self.at("job7"))
        s3_source.forget_clients()


def test_a_write_refused_mid_job_is_what_a_failing_local_write_is(s3, destination_bucket, tmp_path, monkeypatch):
    """A dump root and a sink on S3 whose writes are refused once the worker is running (credentials changed,
    the store gone): a batch's embedding file makes its ok records dump_failed, an activation dump and a sink file
    raise OSError, which the batch turns into a dump_failed record and a failed task for the reconciler, as for a
    full disk. Nothing is written anywhere else (the working folder gets no 's3:' folder)."""
    from imgq.contract import BatchMessage, error_record, ok_record
    from imgq.results import sink
    from imgq.settings import Settings
    from imgq.storage import s3 as s3_source
    from tests import imagegen
    from worker.batches.batch import Decoded
    from worker.batches.dumps import write_dump
    from worker.batches.embeddings import keep_embeddings

    monkeypatch.chdir(tmp_path)
    root = f"s3://{destination_bucket}/mid-{uuid.uuid4().hex[:8]}"
    photo = imagegen.save(tmp_path / "a.png", size=(64, 48))
    good = [Decoded(i, str(photo), imagegen.scene(224, 224, i), None, 1.0) for i in (4, 5)]
    records = [ok_record("job1", 4, str(photo), []), error_record("job1", 5, str(photo), "corrupt", "x")]
    message = BatchMessage(job="job1", batch=2, images=((4, str(photo)), (5, str(photo))), top_k=5, embeddings=True)
    settings = Settings(dump_root=root, sink_dir=root, state_dir=str(tmp_path))
    features = np.random.default_rng(0).normal(size=(2, 2048)).astype(np.float32)
    assert keep_embeddings(records, good, features, settings, ("resnet50", "random:0"), message) == records
    assert destination_for(root).names(f"{root}/job1") == ["embeddings-000002.npz"]  # the store takes it
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-wrong-secret")
    s3_source.forget_clients()
    out = keep_embeddings(records, good, features, settings, ("resnet50", "random:0"), message)
    assert out[0].error.code == "dump_failed" and out[1] == records[1]
    assert out[0].error.message.startswith("embedding file not written: the object store refused access")
    with pytest.raises(OSError, match=f"\\ACannot write {root}/job1/4.npz: the object store refused access"):
        write_dump(root, "job1", 4, {"avg_pool": np.ones(8, dtype=np.float32)}, "float16")
    with pytest.raises(OSError, match=f"\\ACannot write {root}/job1/batch-000002.parquet: "):
        sink.write_batch(root, "job1", 2, records[:1], k=5)
    assert os.listdir(tmp_path) == ["a.png"]
    s3_source.forget_clients()
