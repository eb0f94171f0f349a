"""Model hot-swap: load a released bundle in the background and switch to it between two batches.

The pipeline pins the serving engine for exactly one batch::

    with holder.acquire() as engine:              # one model for the whole batch
        images = resize_batch(frames, *engine.input_hw)
        out = engine.infer(images)                # out.version names the model that decided

A load (:meth:`EngineHolder.load_async`) runs in one background thread: fetch (S3 or a local path),
verify checksums, open the engine, warm it up, run a probe batch and check its outputs (shapes from
the manifest, finite, probabilities summing to one). Only then is the reference swapped, under a lock,
so the next :meth:`~EngineHolder.acquire` gets the new model while batches already running finish on
the old one; the old engine is closed when its last batch releases it. A failed load changes nothing:
the old model keeps serving, ``avminer_model_swaps_total{result="failed"}`` goes up and one log line
says why.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from avminer.config import S3Settings, Settings
from avminer.engines.base import Engine, EngineOutput, check_outputs, resize_batch
from avminer.engines.bundle import Bundle, load_bundle
from avminer.errors import BundleError, EngineError
from avminer.events.records import ModelRelease
from avminer.metrics import MODEL_INFO, MODEL_SWAPS
from avminer.storage.bundles import MANIFEST, download_bundle, sha256_file

log = logging.getLogger(__name__)

Opener = Callable[[Bundle], Engine]
Source = str | Path | Bundle | ModelRelease


@dataclass(frozen=True)
class SwapResult:
    """How one load ended.

    Attributes:
        ok: the requested model is serving now (swapped, or it already was).
        version: the requested model's version, when known.
        swapped: a swap happened (False when that version was already serving, or on failure).
        error: why the load failed (None when ok).
    """

    ok: bool
    version: str | None
    swapped: bool = False
    error: str | None = None


class _Slot:
    """One engine with the number of batches using it; closed when retired and idle."""

    __slots__ = ("engine", "users", "retired")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.users = 0
        self.retired = False


class EngineHolder:
    """Holds the serving engine and swaps in new releases between batches.

    Args:
        engine: the engine to start with (or None until the first :meth:`load`).
        opener: bundle -> engine (default: :func:`avminer.engines.open_engine` with ``backend``,
            ``threads``, ``device``).
        backend: engine backend for loaded bundles.
        threads: CPU threads for loaded engines.
        device: device for loaded engines.
        fetcher: ``ModelRelease`` -> verified local bundle (default: :func:`fetch_release` with
            ``cache_dir`` and ``s3``); needed only to load releases.
        probe_batch: frames in the warm-up/probe batch.
        on_swap: called as ``on_swap(new_engine, old_engine_or_None)`` after each swap (e.g. to reload
            the shift reference); exceptions are logged, never undo the swap.
    """

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        opener: Opener | None = None,
        backend: str = "auto",
        threads: int = 0,
        device: str = "cpu",
        fetcher: Callable[[ModelRelease], Bundle] | None = None,
        probe_batch: int = 2,
        on_swap: Callable[[Engine, Engine | None], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._slot: _Slot | None = None
        self._opener = opener or _default_opener(backend, threads, device)
        self._fetcher = fetcher
        self._probe_batch = probe_batch
        self._on_swap = on_swap
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avminer-model-load")
        if engine is not None:
            self._install(engine)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> EngineHolder:
        """A holder whose engines and release downloads follow ``settings.engine`` and ``settings.sinks.s3``."""
        eng = settings.engine
        s3 = settings.sinks.s3

        def fetch(release: ModelRelease) -> Bundle:
            return fetch_release(release, eng.cache_dir, s3)

        kwargs.setdefault("fetcher", fetch)
        kwargs.setdefault("opener", _default_opener(eng.backend, eng.threads, eng.device, precision=eng.precision,
                                                    compile=eng.compile, max_batch=settings.batcher.max_batch,
                                                    mc_dropout_samples=eng.mc_dropout_samples or None))
        return cls(backend=eng.backend, threads=eng.threads, device=eng.device, **kwargs)

    # -- serving -------------------------------------------------------------------------------------------
    @property
    def current(self) -> Engine:
        """The engine serving now (read it once per batch, or better use :meth:`acquire`)."""
        slot = self._slot
        if slot is None:
            raise EngineError("no model loaded yet: load a bundle first")
        return slot.engine

    @property
    def version(self) -> str | None:
        """Version of the serving model, or None before the first load."""
        slot = self._slot
        return slot.engine.version if slot else None

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Engine]:
        """Pin the serving engine for one batch: a swap during the batch does not close it under you."""
        with self._lock:
            slot = self._slot
            if slot is None:
                raise EngineError("no model loaded yet: load a bundle first")
            slot.users += 1
        try:
            yield slot.engine
        finally:
            with self._lock:
                slot.users -= 1
                close = slot.retired and slot.users == 0
            if close:
                slot.engine.close()

    def infer(self, images: list[np.ndarray] | np.ndarray) -> EngineOutput:
        """Resize (if needed) and run one batch on one model; the output names that model's version."""
        with self.acquire() as engine:
            h, w = engine.input_hw
            if isinstance(images, np.ndarray) and images.shape[1:] == (h, w, 3):
                batch = images
            else:
                batch = resize_batch(list(images), h, w)
            return engine.infer(batch)

    # -- loading -------------------------------------------------------------------------------------------
    def load_async(self, source: Source) -> Future[SwapResult]:
        """Load ``source`` (bundle dir, :class:`Bundle` or :class:`ModelRelease`) in the background.

        Loads run one at a time in arrival order. The returned future never raises: it resolves to a
        :class:`SwapResult` (``ok=False`` with the reason when the load failed and the old model stays).
        """
        return self._executor.submit(self._load, source)

    def load(self, source: Source) -> SwapResult:
        """:meth:`load_async` and wait for the result."""
        return self.load_async(source).result()

    def _load(self, source: Source) -> SwapResult:
        version = source.version if isinstance(source, ModelRelease | Bundle) else None
        engine: Engine | None = None
        try:
            bundle = self._resolve(source)
            version = bundle.version
            current = self._slot
            if current is not None and _same_model(current.engine.bundle, bundle):
                log.info("model %s is already serving; nothing to swap", version)
                return SwapResult(ok=True, version=version)
            engine = self._opener(bundle)
            self._probe(engine)
        except Exception as exc:  # any failure must leave the old model serving
            if engine is not None:
                with contextlib.suppress(Exception):
                    engine.close()
            MODEL_SWAPS.labels(result="failed").inc()
            log.error(
                "model swap to %s failed, keeping %s: %s: %s",
                version or source, self.version, type(exc).__name__, exc,
            )
            return SwapResult(ok=False, version=version, error=f"{type(exc).__name__}: {exc}")
        old = self._install(engine)
        MODEL_SWAPS.labels(result="ok").inc()
        log.info("model swap: %s -> %s (%s)", old.version if old else None, engine.version, engine.backend)
        return SwapResult(ok=True, version=engine.version, swapped=True)

    def _resolve(self, source: Source) -> Bundle:
        if isinstance(source, ModelRelease):
            if self._fetcher is None:
                raise EngineError("this holder cannot fetch releases: build it with EngineHolder.from_settings")
            bundle = self._fetcher(source)
            if bundle.version != source.version:
                raise BundleError(f"release {source.version} points at a bundle of version {bundle.version}")
            return bundle
        path = source.path if isinstance(source, Bundle) else Path(source)
        return load_bundle(path)  # (re-)verify checksums: the bytes on disk are what will run

    def _probe(self, engine: Engine) -> None:
        engine.warmup(batch=self._probe_batch, rounds=1)
        h, w = engine.input_hw
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(self._probe_batch, h, w, 3), dtype=np.uint8)
        out = engine.infer(images)
        check_outputs(engine.bundle, out, self._probe_batch)

    def _install(self, engine: Engine) -> Engine | None:
        new = _Slot(engine)
        with self._lock:
            old = self._slot
            self._slot = new
            close_old = old is not None and old.users == 0
            if old is not None:
                old.retired = True
        MODEL_INFO.info({"version": engine.version, "backend": engine.backend, "members": str(engine.bundle.members)})
        if self._on_swap is not None:
            try:
                self._on_swap(engine, old.engine if old else None)
            except Exception:
                log.exception("on_swap callback failed after swapping to %s", engine.version)
        if close_old and old is not None:
            old.engine.close()
        return old.engine if old else None

    def close(self) -> None:
        """Stop loading and close the serving engine (after batches in flight finish)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            slot, self._slot = self._slot, None
            if slot is None:
                return
            slot.retired = True
            close = slot.users == 0
        if close:
            slot.engine.close()


def _same_model(a: Bundle, b: Bundle) -> bool:
    """Same version and same ONNX bytes (plans may have been added since)."""
    return a.version == b.version and a.manifest["files"].get("model.onnx") == b.manifest["files"].get("model.onnx")


def _default_opener(backend: str, threads: int, device: str, **options: Any) -> Opener:
    def open_(bundle: Bundle) -> Engine:
        from avminer.engines import open_engine

        return open_engine(bundle, backend=backend, threads=threads, device=device, **options)

    return open_


# -- fetching released bundles ---------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def fetch_release(release: ModelRelease, cache_dir: str | Path, s3: S3Settings | None = None, client: Any = None) -> Bundle:
    """Download (or reuse) the bundle a :class:`ModelRelease` announces, verified against its manifest sha256."""
    bundle = fetch_bundle(
        release.bundle_uri, cache_dir, s3=s3, client=client,
        manifest_sha256=release.manifest_sha256, name=release.version,
    )
    if bundle.version != release.version:
        raise BundleError(f"release {release.version} points at a bundle of version {bundle.version}")
    return bundle


def fetch_bundle(
    uri: str,
    cache_dir: str | Path,
    *,
    s3: S3Settings | None = None,
    client: Any = None,
    manifest_sha256: str | None = None,
    name: str | None = None,
) -> Bundle:
    """Fetch a bundle into ``cache_dir/<name>`` and verify it.

    ``s3://bucket/prefix/`` is listed, its ``manifest.json`` fetched and checked against
    ``manifest_sha256`` (from the release), then exactly the files the manifest names are downloaded and
    every checksum verified. ``file:///dir`` and plain paths are copied the same way. A cached copy that
    still verifies (and matches ``manifest_sha256``) is reused. The download lands in a temporary
    directory and is renamed into place, so a failed or interrupted fetch never leaves a half bundle.

    Args:
        uri: ``s3://bucket/prefix/``, ``file:///path`` or a directory path.
        cache_dir: local cache root (``engine.cache_dir``; ``~`` is expanded).
        s3: settings for the S3 client (endpoint, credentials); ignored when ``client`` is given.
        client: a boto3 S3 client.
        manifest_sha256: expected sha256 of ``manifest.json`` (hex); None skips that check.
        name: cache folder name (default: the last part of the URI).

    Raises:
        BundleError: missing files, a manifest or file checksum mismatch, or an unusable URI.
        EngineError: S3 could not be read (wraps the botocore error).
    """
    parsed = urlparse(uri)
    root = Path(cache_dir).expanduser()
    folder = _SAFE.sub("_", name or Path(parsed.path.rstrip("/")).name or "bundle").strip("._") or "bundle"
    dest = root / folder
    cached = _cached(dest, manifest_sha256)
    if cached is not None:
        return cached
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=root))
    try:
        download_bundle(uri, tmp, s3=s3, client=client, manifest_sha256=manifest_sha256)
        load_bundle(tmp)  # every checksum, before it is visible under its name
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bundle = load_bundle(dest)
    log.info("fetched model bundle %s from %s into %s", bundle.version, uri, dest)
    return bundle


def _cached(dest: Path, manifest_sha256: str | None) -> Bundle | None:
    if not (dest / MANIFEST).is_file():
        return None
    if manifest_sha256 and sha256_file(dest / MANIFEST) != manifest_sha256:
        return None
    try:
        return load_bundle(dest)
    except BundleError as exc:
        log.warning("cached bundle %s is unusable (%s); fetching it again", dest, exc)
        return None


