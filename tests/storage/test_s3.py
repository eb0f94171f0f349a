"""S3 frame store against a real SeaweedFS: idempotent puts, and an outage mid-stream."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from avminer.catalog.catalog import Catalog
from avminer.config import S3Settings, Secret
from avminer.errors import SinkError, SinkUnavailableError
from avminer.sinks.base import MinedSampleWriter, retry_until_available
from avminer.sinks.local import LocalDecisionSink, LocalRequestSink, read_requests
from avminer.storage.s3 import S3FrameStore, make_client
from tests.services import S3Server
from tests.sinks import factories as f


def _store(server: S3Server, bucket: str, **kw: object) -> S3FrameStore:
    settings = S3Settings(endpoint_url=server.endpoint_url, bucket=bucket, prefix="frames/",
                          access_key_id="any", secret_access_key=Secret("any"))
    kw.setdefault("max_retries", 2)
    return S3FrameStore(make_client(settings, connect_timeout_s=1, read_timeout_s=5), bucket, "frames/",
                        backoff_base_s=0.05, backoff_cap_s=0.2, **kw)  # type: ignore[arg-type]


def _keys(server: S3Server, bucket: str) -> list[str]:
    client = server.client()  # type: ignore[no-untyped-call]
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_put_is_content_addressed_and_idempotent(s3: S3Server) -> None:
    bucket = s3.bucket()
    store = _store(s3, bucket)
    uri = store.put("s1", f.jpeg(1), "image/jpeg")
    assert uri.startswith(f"s3://{bucket}/frames/frame/") and uri.endswith(".jpg")
    # Same bytes again, from a fresh store (no in-process memory): HEAD finds it, no second PUT.
    again = _store(s3, bucket)
    assert again.put("s2", f.jpeg(1), "image/jpeg") == uri
    assert again.uploads == 0
    assert again.get(uri) == f.jpeg(1)
    assert len(_keys(s3, bucket)) == 1


def test_missing_bucket_is_a_permanent_error(s3: S3Server) -> None:
    with pytest.raises(SinkError) as info:
        _store(s3, "no-such-bucket-avminer").put("s1", b"x", "image/jpeg")
    assert not isinstance(info.value, SinkUnavailableError)


def test_bucket_created_on_demand(s3: S3Server, unique: str) -> None:
    store = _store(s3, f"auto-{unique}", create_bucket=True)
    store.put("s1", b"abc", "image/png")
    assert len(_keys(s3, f"auto-{unique}")) == 1


OUTAGE_S = 30.0


@pytest.mark.slow
def test_outage_mid_stream_pauses_loses_nothing_stores_nothing_twice(
    s3_private: S3Server, tmp_path: Path, sqlite_catalog: Catalog
) -> None:
    bucket = s3_private.bucket()
    out = tmp_path / "out"
    writer = MinedSampleWriter(_store(s3_private, bucket), LocalRequestSink(out), LocalDecisionSink(out),
                               sqlite_catalog)
    batches = [[f.sample(b * 3 + i) for i in range(3)] for b in range(4)]
    writer.write_batch(batches[0])

    s3_private.stop()
    with pytest.raises(SinkUnavailableError):
        writer.write_batch(batches[1])
    # Nothing of the failed batch reached the request queue: it is retried, not half-sent.
    assert len(read_requests(out)) == 3

    # The miner's sink stage retries the failed batch until S3 is back (it pauses, it never drops):
    # keep S3 away for the 30 s while that loop runs.
    pauses: list[int] = []
    retrying = threading.Thread(
        target=retry_until_available, args=(lambda: writer.write_batch(batches[1]),),
        kwargs={"base_s": 0.05, "cap_s": 2.0, "on_pause": lambda exc, attempt: pauses.append(attempt)},
    )
    retrying.start()
    time.sleep(OUTAGE_S)  # the outage itself, not a timing assertion
    assert retrying.is_alive() and len(pauses) >= 3
    assert len(read_requests(out)) == 3  # still nothing of batch 1 while S3 is down
    s3_private.restart()
    retrying.join(timeout=120)
    assert not retrying.is_alive()
    # The stream goes on; a replay of an already-written batch (as after a crash) is harmless.
    for batch in batches[2:] + [batches[0]]:
        writer.write_batch(batch)
    writer.close()

    reqs = read_requests(out)
    assert sorted(r.sample_id for r in reqs) == sorted(s.sample_id for b in batches for s in b)
    keys = _keys(s3_private, bucket)
    frames = [k for k in keys if k.startswith("frames/frame/")]
    assert len(frames) == 12 == len(set(frames))  # every frame once
    assert {r.frame_uri for r in reqs} == {f"s3://{bucket}/{k}" for k in frames}
    assert sqlite_catalog.stats()["by_state"]["requested"] == 12
