"""S3 frame store: content-addressed keys, HEAD before PUT, retries with backoff, pause on outage.

Keys are ``<prefix><kind>/<sha[:2]>/<sha>.<ext>`` (:func:`avminer.storage.base.content_key`). A put first
asks HEAD: if the object is there (an earlier attempt, or the same bytes from another frame), nothing
is uploaded. Transient failures (connection refused, timeouts, 5xx, throttling) are retried with
exponential backoff and full jitter; after ``max_retries`` the store raises
:class:`~avminer.errors.SinkUnavailableError` so the miner pauses and retries the batch later.
Permanent failures (no such bucket, access denied) raise :class:`~avminer.errors.SinkError` at once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

from avminer.config import S3Settings
from avminer.errors import SinkError, SinkUnavailableError
from avminer.metrics import S3_ERRORS
from avminer.storage.base import FRAME, backoff_delays, content_key

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_GET_BYTES = 256 * 1024 * 1024
"""Largest object :meth:`S3FrameStore.get` reads (frames and masks are far smaller)."""


class _Refused(Exception):
    """An object over the read limit (not transient: never retried)."""

# Error codes S3 servers use for "try again later".
_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                    "RequestTimeout", "RequestTimeTooSkewed", "Throttling", "ThrottlingException"}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.lstrip("/"):
        raise SinkError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def make_client(settings: S3Settings, connect_timeout_s: float = 2.0, read_timeout_s: float = 20.0) -> Any:
    """A boto3 S3 client for ``settings``, with boto's own retries off (we retry ourselves)."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {
        "endpoint_url": settings.endpoint_url,
        "region_name": settings.region,
        "config": Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            s3={"addressing_style": "path"},
        ),
    }
    if settings.access_key_id:
        kwargs["aws_access_key_id"] = settings.access_key_id
    if settings.secret_access_key is not None:
        kwargs["aws_secret_access_key"] = settings.secret_access_key.get()
    return boto3.client("s3", **kwargs)


def _classify(exc: Exception) -> tuple[bool, str]:
    """(transient?, short code) for a boto/botocore exception."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return (code in _TRANSIENT_CODES or status >= 500 or status == 429), code or str(status)
    if isinstance(exc, BotoCoreError):
        # Connection refused/reset, timeouts, closed connections: the server is (temporarily) away.
        return True, type(exc).__name__
    return False, type(exc).__name__


class S3FrameStore:
    """Content-addressed frames, uncertainty maps and masks in one bucket.

    Args:
        client: a boto3 S3 client (see :func:`make_client`).
        bucket: target bucket (must exist unless ``create_bucket``).
        prefix: key prefix, e.g. ``frames/``.
        max_retries: retries per operation before :class:`SinkUnavailableError`.
        backoff_base_s: first backoff bound (doubles per retry, full jitter).
        backoff_cap_s: longest single wait.
        create_bucket: create the bucket on first use if it is missing.
        sleep: injectable sleep (tests).
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "frames/",
        *,
        max_retries: int = 5,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
        create_bucket: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.max_retries = max_retries
        self._delay = backoff_delays(backoff_base_s, backoff_cap_s)
        self._sleep = sleep
        self._create_bucket = create_bucket
        self._bucket_checked = not create_bucket
        # Keys known to exist: skips the HEAD when the same bytes come again in this process.
        self._known: OrderedDict[str, None] = OrderedDict()
        self._known_max = 100_000
        self.uploads = 0  # PUTs actually sent (for tests and logs)

    @classmethod
    def from_settings(cls, settings: S3Settings, *, create_bucket: bool = True) -> S3FrameStore:
        """Store configured by ``sinks.s3``."""
        if not settings.endpoint_url:
            raise SinkError("sinks.s3.endpoint_url is not set; set it or use the local output directory")
        return cls(make_client(settings), settings.bucket, settings.prefix,
                   max_retries=settings.max_retries, create_bucket=create_bucket)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                transient, code = _classify(exc)
                S3_ERRORS.labels(operation=operation).inc()
                if not transient:
                    raise SinkError(f"S3 {operation} on bucket {self.bucket!r} failed: {code}: {exc}") from exc
                if attempt >= self.max_retries:
                    raise SinkUnavailableError(
                        f"S3 {operation} failed after {attempt + 1} attempts ({code}); "
                        f"is {self.client.meta.endpoint_url} up? The miner pauses and retries"
                    ) from exc
                wait = self._delay(attempt)
                log.debug("S3 %s failed (%s); retry %d in %.2fs", operation, code, attempt + 1, wait)
                self._sleep(wait)
                attempt += 1

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        from botocore.exceptions import ClientError

        def check() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                    raise
                self.client.create_bucket(Bucket=self.bucket)

        self._call("create_bucket", check)
        self._bucket_checked = True

    def exists(self, key: str) -> bool:
        """HEAD the key (retried); True if the object is there."""
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND_CODES:
                    return False
                raise
            return True

        return self._call("head", head)

    def put(self, sample_id: str, data: bytes, content_type: str, kind: str = FRAME) -> str:
        key = content_key(self.prefix, kind, data, content_type)
        if key in self._known:
            return self.uri(key)
        self._ensure_bucket()
        if not self.exists(key):
            self._call("put", lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                Metadata={"avminer-sample-id": sample_id, "avminer-kind": kind},
            ))
            self.uploads += 1
        self._known[key] = None
        if len(self._known) > self._known_max:
            self._known.popitem(last=False)
        return self.uri(key)

    def get(self, uri: str) -> bytes:
        """Read any ``s3://bucket/key`` this client can reach (retried)."""
        bucket, key = parse_s3_uri(uri)

        def read() -> bytes:
            obj = self.client.get_object(Bucket=bucket, Key=key)
            # Bounded before the body is read: a URI from a message must not pull gigabytes into memory.
            if int(obj.get("ContentLength") or 0) > MAX_GET_BYTES:
                obj["Body"].close()
                raise _Refused(f"{uri} has {obj['ContentLength']} bytes > {MAX_GET_BYTES}")
            data: bytes = obj["Body"].read(MAX_GET_BYTES + 1)
            if len(data) > MAX_GET_BYTES:
                raise _Refused(f"{uri} is larger than {MAX_GET_BYTES} bytes")
            return data

        return self._call("get", read)

    def presign(self, uri: str, expires_s: int = 7 * 86400) -> str:
        """A presigned HTTP(S) GET URL for an ``s3://`` URI (for labeling tools)."""
        bucket, key = parse_s3_uri(uri)
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url

    def flush(self) -> None:
        """Nothing buffered: every put is stored when it returns."""

    def close(self) -> None:
        self._known.clear()
