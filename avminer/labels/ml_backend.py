"""avminer as a Label Studio ML backend: pre-annotations and uncertainty from the current release.

Label Studio talks to an ML backend over a small JSON protocol (its ``ml/api_connector.py`` is the
client); this server answers it:

    GET  /health    {"status": "UP", "model_class": "avminer", "model_version": <release>}
    POST /setup     {"project": "<id>.<created>", "schema": <labeling config>, "hostname", "access_token", ...}
                    -> {"model_version": <release>}; 400 when the config has no BrushLabels "tag" on
                    Image "image" or names a label the model does not know
    POST /predict   {"tasks": [<task>...], "project", "label_config", "params": {...}}
                    -> {"results": [{"result": [<brushlabels>...], "score": <mutual information>,
                    "model_version": <release>}, ...]}, one per task, in order
    POST /webhook   Label Studio's webhook events (connecting a backend subscribes it to its project's
                    events): ANNOTATION_CREATED / ANNOTATION_UPDATED become LabelResults delivered
                    like a pull (:mod:`avminer.labels.deliver`); START_TRAINING is acknowledged
    POST /train     the older training call: acknowledged (the trainer decides when to retrain)
    GET  /versions  {"versions": [<release>]}

The prediction is the ensemble's mean-probability argmax as brush masks at the frame's own size; its
``score`` is the frame's pooled ensemble mutual information (BALD, Houlsby et al. 2011), so sorting the
Data Manager by prediction score, descending, puts the frames the ensemble disagrees on first
(HumanSignal/label-studio#952 asks for exactly this instead of confidence).

A task's frame is read from the frame store when ``data.sample_id`` is a mined sample in the catalog
(tasks avminer pushed), else fetched from ``data.image``: an absolute URL as it is (presigned S3), a
Label Studio path (``/data/...``) from the configured Label Studio with its token.

With a password (``labelstudio.ml_backend_secret``) every request must carry HTTP Basic credentials
with it (Label Studio's ``BASIC_AUTH`` backend setting; the webhook gets the header from
:func:`~avminer.labels.labelstudio_api.connect_ml_backend`): annotation events write labels.

The retrain trigger: an annotation event becomes a LabelResult on ``topics.label_results`` (broker) or a
``labeled`` sample in the catalog (embedded); the trainer service wakes on that topic, counts pending
labels and retrains at ``trainer.retrain_every_labels``.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from avminer.errors import AvminerError, LabelError
from avminer.labels.labelstudio import FROM_NAME, TO_NAME, prediction_results
from avminer.utils.httpserver import BoundedHTTPServer, JsonHandler

log = logging.getLogger(__name__)

MAX_BODY = 64 << 20  # a webhook carries whole brush annotations


@dataclass(slots=True)
class FramePrediction:
    """What the model says about one frame.

    Attributes:
        mask: uint8 ``[H, W]`` class ids at the frame's own size.
        scores: frame scores (``mi``, ``entropy``, ``shift``, ...), as mining computes them.
        version: the model version that produced them.
    """

    mask: np.ndarray
    scores: dict[str, float]
    version: str


class Predictor(Protocol):
    """The model behind the backend: frames in, predictions out."""

    @property
    def version(self) -> str | None: ...

    @property
    def classes(self) -> Sequence[str]: ...

    def predict(self, images: list[np.ndarray]) -> list[FramePrediction]:
        """uint8 RGB frames ``[h, w, 3]`` of any size -> one prediction each."""
        ...


class EnsemblePredictor:
    """The serving ensemble (an :class:`~avminer.engines.hotswap.EngineHolder`, hot-swapped on releases)
    scored by the miner's own :class:`~avminer.scoring.scorer.Scorer`.

    Args:
        holder: the engine holder (``avminer.mining.daemon.open_engines``).
        scorer_for: engine -> Scorer (``avminer.mining.pipeline.default_scorer_factory(settings)``).
    """

    def __init__(self, holder: Any, scorer_for: Callable[[Any], Any]) -> None:
        self.holder = holder
        self.scorer_for = scorer_for
        self._scorers: dict[str, Any] = {}
        self._lock = threading.Lock()  # one batch at a time: the scorer's drift windows are not shared-safe

    @property
    def version(self) -> str | None:
        v: str | None = self.holder.version
        return v

    @property
    def classes(self) -> Sequence[str]:
        return list(self.holder.current.bundle.classes)

    def predict(self, images: list[np.ndarray]) -> list[FramePrediction]:
        from PIL import Image

        from avminer.engines.base import resize_batch
        from avminer.events.records import CameraFrame

        if not images:
            return []
        with self._lock, self.holder.acquire() as engine:
            h, w = engine.input_hw
            batch = resize_batch(images, h, w)  # [N, H, W, 3]
            out = engine.infer(batch)
            scorer = self._scorers.get(out.version)
            if scorer is None:
                scorer = self.scorer_for(engine)
                self._scorers = {out.version: scorer}
            frames = [CameraFrame("labelstudio", "task", 0, f"task-{i}", img.shape[1], img.shape[0])
                      for i, img in enumerate(images)]
            scored = scorer.score(out, batch, frames, [None] * len(images))
        preds = []
        for img, fs in zip(images, scored, strict=True):
            small = Image.fromarray(np.ascontiguousarray(fs.prediction, dtype=np.uint8))
            mask = np.asarray(small.resize((img.shape[1], img.shape[0]), Image.Resampling.NEAREST))  # [H, W]
            preds.append(FramePrediction(mask, dict(fs.scores), out.version))
        return preds


def check_label_config(config: str, classes: Sequence[str]) -> None:
    """Refuse a labeling config the backend cannot fill: it needs ``<BrushLabels name="tag">`` on
    ``<Image name="image">`` whose labels are all model classes.

    Raises:
        LabelError: naming what is missing.
    """
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise LabelError(f"the labeling config is not XML: {exc}") from exc
    brush = next((el for el in root.iter("BrushLabels") if el.get("name") == FROM_NAME), None)
    if brush is None or brush.get("toName") != TO_NAME:
        raise LabelError(f'the labeling config needs <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">; '
                         "generate it with avminer export labelstudio --config-out")
    unknown = sorted({str(lab.get("value")) for lab in brush.iter("Label")} - set(classes))
    if unknown:
        raise LabelError(f"labels {unknown} are not classes of the model ({list(classes)})")


class FrameFetcher:
    """A task's frame bytes: from the frame store by sample id, else from ``data.image``.

    Absolute URLs are fetched only from ``allowed_origins`` (the S3 endpoint that presigned them, Label
    Studio itself): a task's data is written by whoever can create tasks, and the backend must not fetch
    arbitrary addresses on its network for them.

    Args:
        catalog: the catalog (None: never by sample id).
        read_blob: reads a stored URI (the frame store's reader).
        labelstudio: a :class:`~avminer.labels.labelstudio_api.LabelStudioClient` for ``/data/...`` paths.
        allowed_origins: ``scheme://host[:port]`` of the servers frames may be fetched from by URL.
        max_bytes: read at most this many bytes of a frame (``decode.max_bytes``).
    """

    def __init__(self, catalog: Any = None, read_blob: Callable[[str], bytes] | None = None,
                 labelstudio: Any = None, allowed_origins: Sequence[str] = (), max_bytes: int = 64 << 20) -> None:
        self.catalog = catalog
        self.read_blob = read_blob
        self.labelstudio = labelstudio
        self.allowed_origins = {_origin(o) for o in allowed_origins if o}
        self.max_bytes = max_bytes

    def __call__(self, task: dict[str, Any]) -> bytes:
        data = task.get("data") or {}
        sid = data.get("sample_id")
        if isinstance(sid, str) and self.catalog is not None and self.read_blob is not None:
            row = self.catalog.get_sample(sid)
            if row is not None and row.frame_uri:
                return self.read_blob(row.frame_uri)
        url = data.get(TO_NAME)
        if not isinstance(url, str) or not url:
            raise LabelError(f"task {task.get('id')}: no data.{TO_NAME} to read the frame from")
        if url.startswith("/"):
            if self.labelstudio is None:
                raise LabelError(f"task {task.get('id')}: {url} is a Label Studio path; configure labelstudio.url "
                                 "and labelstudio.token so the backend can read it")
            body: bytes = self.labelstudio.request("GET", url, raw=True)
            return body
        if url.startswith(("http://", "https://")):
            if _origin(url) not in self.allowed_origins:
                raise LabelError(f"task {task.get('id')}: will not fetch {_origin(url)}: frames come from "
                                 f"{sorted(self.allowed_origins) or 'no URL'} (sinks.s3.endpoint_url, labelstudio.url)")
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - http(s), allowed origins only
                out: bytes = resp.read(self.max_bytes + 1)
            if len(out) > self.max_bytes:
                raise LabelError(f"task {task.get('id')}: the frame at {_origin(url)} is over {self.max_bytes} bytes")
            return out
        raise LabelError(f"task {task.get('id')}: cannot read {url[:80]!r} (not http(s) nor a Label Studio path)")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class MLBackendHandler(JsonHandler):
    """Routes of the ML-backend protocol; the state is on the server (``server.backend``)."""

    server: MLBackendServer

    def _read_json(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        if length > MAX_BODY:
            self.close_connection = True
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _authorized(self) -> bool:
        secret = self.server.secret
        if secret is None:
            return True
        header = self.headers.get("Authorization") or ""
        if not header.startswith("Basic "):
            return False
        try:
            _, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), secret.encode())

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        backend = self.server.backend
        try:
            if not self._authorized():
                # Annotation events label the catalog: nobody without the password may send them.
                raise _HttpError(HTTPStatus.UNAUTHORIZED, "HTTP Basic authentication with the backend's password "
                                 "(labelstudio.ml_backend_secret) is required")
            routes: dict[tuple[str, str], Callable[[], Any]] = {
                ("GET", "/health"): lambda: backend.health(), ("GET", "/"): lambda: backend.health(),
                ("GET", "/versions"): lambda: {"versions": [v for v in [backend.predictor.version] if v]},
                ("POST", "/setup"): lambda: backend.setup(self._read_json()),
                ("POST", "/predict"): lambda: backend.predict(self._read_json()),
                ("POST", "/webhook"): lambda: backend.webhook(self._read_json()),
                ("POST", "/train"): lambda: backend.train(self._read_json()),
            }
            route = routes.get((method, path))
            if route is None:
                raise _HttpError(HTTPStatus.NOT_FOUND, f"no route {method} {path}")
            status, body = HTTPStatus.OK, route()
        except _HttpError as exc:
            status, body = exc.status, {"error": str(exc)}
        except AvminerError as exc:
            status, body = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        except Exception as exc:  # a bug must not kill the server thread silently
            log.exception("ML backend: %s %s failed", method, path)
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}"}
        self._send_json(status, body)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")


@dataclass
class WebhookStats:
    """Annotation events received and what became of them."""

    events: int = 0
    results: int = 0
    problems: int = 0


class MLBackend:
    """The protocol's logic, free of HTTP.

    Args:
        predictor: the model.
        fetch: task -> frame bytes (:class:`FrameFetcher`).
        on_results: delivers LabelResults from annotation events (``deliver`` bound to settings and an
            applier); None: events are acknowledged and dropped.
        decode_limits: ``settings.decode`` (frames from Label Studio are checked like mined frames).
        emails: user ids -> e-mails (:class:`~avminer.labels.labelstudio_api.UserEmails`) for the labeler
            of annotation events; None: the user id is recorded.
    """

    def __init__(self, predictor: Predictor, fetch: Callable[[dict[str, Any]], bytes],
                 on_results: Callable[[list[Any]], Any] | None = None, decode_limits: Any = None,
                 emails: Callable[[Any], dict[int, str]] | None = None) -> None:
        from avminer.config import DecodeSettings

        self.predictor = predictor
        self.fetch = fetch
        self.on_results = on_results
        self.decode_limits = decode_limits or DecodeSettings()
        self.emails = emails
        self.webhooks = WebhookStats()
        self._lock = threading.Lock()

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "avminer", "model_version": self.predictor.version}

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        schema = body.get("schema")
        if isinstance(schema, str) and schema.strip():
            check_label_config(schema, self.predictor.classes)
        return {"model_version": self.predictor.version}

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        from avminer import images as imaging

        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "tasks: must be a list of Label Studio tasks")
        config = body.get("label_config")
        if isinstance(config, str) and config.strip():
            check_label_config(config, self.predictor.classes)
        images: list[np.ndarray | None] = []
        for task in tasks:
            try:
                images.append(imaging.decode_image(self.fetch(task), max_bytes=self.decode_limits.max_bytes,
                                                   max_pixels=self.decode_limits.max_pixels))
            except (AvminerError, imaging.ImageDecodeError, OSError) as exc:
                log.warning("task %s: no frame to predict on: %s", task.get("id") if isinstance(task, dict) else "?",
                            exc)
                images.append(None)
        ok = [img for img in images if img is not None]
        preds = iter(self.predictor.predict(ok))
        classes = list(self.predictor.classes)
        results: list[dict[str, Any]] = []
        for img in images:
            if img is None:
                # Label Studio pairs results with tasks by position: an empty one keeps the others aligned.
                results.append({"result": [], "score": None, "model_version": self.predictor.version})
                continue
            p = next(preds)
            results.append({"result": prediction_results(p.mask, classes), "score": float(p.scores["mi"]),
                            "model_version": p.version})
        return {"results": results}

    def webhook(self, body: dict[str, Any]) -> dict[str, Any]:
        from avminer.labels.labelstudio_api import results_from_event

        action = body.get("action")
        results, problems = results_from_event(body, self.predictor.classes, self.emails)
        for line in problems:
            log.warning("Label Studio %s: %s", action, line)
        delivered: Any = None
        with self._lock:
            if results or problems:
                self.webhooks.events += 1
                self.webhooks.results += len(results)
                self.webhooks.problems += len(problems)
            if results and self.on_results is not None:
                delivered = self.on_results(results)
        out: dict[str, Any] = {"status": "ok", "action": action, "results": len(results), "problems": problems}
        if delivered is not None and hasattr(delivered, "to_dict"):
            out["delivered"] = delivered.to_dict()
        return out

    def train(self, body: dict[str, Any]) -> dict[str, Any]:
        # Training is the trainer service's decision (trainer.retrain_every_labels); labels reach it
        # through annotation events and pulls, not through this call.
        return {"status": "ok", "job": None, "note": "avminer retrains from the catalog's labels; "
                                                      "see trainer.retrain_every_labels"}


class MLBackendServer(BoundedHTTPServer):
    """The ML backend bound to ``(host, port)`` (port 0: any free port); with ``secret``, every request
    must carry HTTP Basic credentials with that password (Label Studio's ML backend ``BASIC_AUTH``)."""

    name = "labelstudio-ml-backend"

    def __init__(self, backend: MLBackend, host: str = "127.0.0.1", port: int = 0, secret: str | None = None) -> None:
        self.backend = backend
        self.secret = secret
        super().__init__((host, port), MLBackendHandler)

