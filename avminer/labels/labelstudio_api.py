"""A live Label Studio: push mined frames as tasks, pull finished annotations back as LabelResults.

Plain HTTP (``urllib``) against Label Studio's REST API, so avminer needs no SDK and none of its
dependencies. What goes over the wire is the same task JSON ``avminer export labelstudio`` writes
(:mod:`avminer.labels.labelstudio`): the frame URL in ``data.image``, every mining score flattened
into ``data`` (``score_mi``, ``score_shift``, ``slice``, ``reasons``, ``model_version``, ``priority``)
so the Data Manager sorts and filters by them, and the ensemble's prediction as brush-mask
pre-annotations.

- :class:`LabelStudioClient` — authentication (personal access tokens are JWT refresh tokens,
  exchanged for short-lived access tokens and refreshed on 401; legacy tokens are sent as they are)
  and the handful of endpoints avminer uses.
- :func:`ensure_project` — the project by title, created or updated with the labeling configuration
  generated from the class list.
- :func:`push_samples` — idempotent by sample id: a task per sample, found again by ``data.sample_id``;
  a re-mined frame updates its task's data and adds the new model's prediction instead of a duplicate.
- :func:`pull_results` — the project's JSON export through :func:`results_from_export`, the importer's
  own parser, with each annotator's e-mail and the annotation id in ``labeler``
  (``labelstudio:<email>#annotation-<id>``); annotations the catalog already holds are skipped.
- :func:`results_from_event` — the same for one webhook event (``ANNOTATION_CREATED``/``UPDATED``).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avminer.catalog.catalog import Catalog, SampleRow
from avminer.errors import LabelError
from avminer.events.records import LabelResult
from avminer.labels.labelstudio import label_config, results_from_export, sample_task
from avminer.labels.masks import CLASS_NAMES

log = logging.getLogger(__name__)

PAGE_SIZE = 100
IMPORT_CHUNK = 100
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


class LabelStudioError(LabelError):
    """Label Studio refused a request or could not be reached.

    Attributes:
        status: the HTTP status, or None when no response came back.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


def is_personal_access_token(token: str) -> bool:
    """True for a personal access token (a JWT: three base64url parts), False for a legacy token."""
    return token.count(".") == 2 and not any(c.isspace() for c in token)


class LabelStudioClient:
    """Label Studio's REST API over plain HTTP.

    Args:
        url: the server's base URL (``http://127.0.0.1:8080``).
        token: a personal access token (JWT refresh token) or a legacy API token.
        timeout_s: per-request timeout.
    """

    def __init__(self, url: str, token: str, timeout_s: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"labelstudio.url must be an http(s):// URL, got {url!r}")
        if not token:
            raise LabelStudioError("no Label Studio token: set labelstudio.token (AVMINER_LABELSTUDIO__TOKEN)")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = token
        self._pat = is_personal_access_token(token)
        self._access: str | None = None

    # -- transport -------------------------------------------------------------------------------------
    def _auth_header(self) -> str:
        if not self._pat:
            return f"Token {self._token}"
        if self._access is None:
            self._access = self._refresh_access()
        return f"Bearer {self._access}"

    def _refresh_access(self) -> str:
        """Exchange the personal access token (a refresh token) for an access token."""
        body = self._send("POST", "/api/token/refresh/", {"refresh": self._token}, auth=None)
        access = body.get("access") if isinstance(body, dict) else None
        if not isinstance(access, str):
            raise LabelStudioError("Label Studio's /api/token/refresh answered without an access token")
        return access

    def _send(self, method: str, path: str, body: Any = None, *, auth: str | None, raw: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth is not None:
            req.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - http(s) only
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            raise LabelStudioError(f"{method} {path}: HTTP {exc.code}: {detail}", exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise LabelStudioError(f"{method} {path}: Label Studio at {self.url} is unreachable: {exc}") from exc
        if raw:
            return payload
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise LabelStudioError(f"{method} {path}: the answer is not JSON: {payload[:200]!r}") from exc

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                *, raw: bool = False) -> Any:
        """One authenticated request; JSON in and out (``raw``: the response bytes).

        Raises:
            LabelStudioError: an HTTP error (status and the start of the body in the message) or no answer.
        """
        if params:
            path = f"{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            return self._send(method, path, body, auth=self._auth_header(), raw=raw)
        except LabelStudioError as exc:
            if exc.status == 401 and self._pat:
                self._access = None  # access tokens are short-lived: refresh once and retry
                return self._send(method, path, body, auth=self._auth_header(), raw=raw)
            raise

    # -- endpoints -------------------------------------------------------------------------------------
    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Items of a paginated list (``results`` / ``tasks`` pages, or a plain list)."""
        page = 1
        while True:
            try:
                body = self.request("GET", path, params={**params, "page": page, "page_size": PAGE_SIZE})
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:  # past the last page
                    return
                raise
            if isinstance(body, list):
                yield from body
                return
            items = body.get("results", body.get("tasks", []))
            yield from items
            total = body.get("count", body.get("total"))
            if not items or (isinstance(total, int) and page * PAGE_SIZE >= total) or (
                    "next" in body and not body["next"]):
                return
            page += 1

    def projects(self) -> list[dict[str, Any]]:
        return list(self._pages("/api/projects/", {}))

    def create_project(self, title: str, config: str, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/api/projects/", {"title": title, "label_config": config, **extra})
        return out

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.request("PATCH", f"/api/projects/{project_id}/", fields)
        return out

    def get_project(self, project_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/api/projects/{project_id}/")
        return out

    def tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of a project (id, data, and its predictions' model versions)."""
        return self._pages("/api/tasks/", {"project": project_id, "fields": "all"})

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"/api/projects/{project_id}/import", tasks,
                                           params={"commit_to_project": "true"})
        return out

    def update_task(self, task_id: int, data: dict[str, Any]) -> None:
        self.request("PATCH", f"/api/tasks/{task_id}/", {"data": data})

    def create_prediction(self, task_id: int, prediction: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/api/predictions/", {"task": task_id, **prediction})
        return out

    def predictions(self, task_id: int) -> list[dict[str, Any]]:
        body = self.request("GET", "/api/predictions/", params={"task": task_id})
        return list(body if isinstance(body, list) else body.get("results", []))

    def create_annotation(self, task_id: int, result: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"/api/tasks/{task_id}/annotations/", {"result": result, **extra})
        return out

    def update_annotation(self, annotation_id: int, **fields: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.request("PATCH", f"/api/annotations/{annotation_id}/", fields)
        return out

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """The project's JSON export: every task with its annotations."""
        body = self.request("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"})
        if not isinstance(body, list):
            raise LabelStudioError(f"project {project_id}'s JSON export is not a list of tasks")
        return body

    def users(self) -> list[dict[str, Any]]:
        return list(self._pages("/api/users/", {}))

    def local_storages(self, project_id: int) -> list[dict[str, Any]]:
        body = self.request("GET", "/api/storages/localfiles/", params={"project": project_id})
        return list(body if isinstance(body, list) else body.get("results", []))

    def add_local_storage(self, project_id: int, path: str, title: str = "avminer frames") -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/api/storages/localfiles/", {
            "project": project_id, "path": path, "title": title, "use_blob_urls": True})
        return out

    def ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        body = self.request("GET", "/api/ml/", params={"project": project_id})
        return list(body if isinstance(body, list) else body.get("results", []))

    def webhooks(self, project_id: int) -> list[dict[str, Any]]:
        body = self.request("GET", "/api/webhooks/", params={"project": project_id})
        return list(body if isinstance(body, list) else body.get("results", []))

    def update_webhook(self, webhook_id: int, **fields: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.request("PATCH", f"/api/webhooks/{webhook_id}/", fields)
        return out

    def add_ml_backend(self, project_id: int, url: str, title: str = "avminer", **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/api/ml/", {"project": project_id, "url": url, "title": title,
                                                                **extra})
        return out



# -- project ---------------------------------------------------------------------------------------------
def ensure_project(client: LabelStudioClient, title: str, class_names: Sequence[str] = CLASS_NAMES) -> int:
    """The id of the project named ``title``, created with (or updated to) the class list's labeling config."""
    config = label_config(class_names)
    for project in client.projects():
        if project.get("title") == title:
            pid = int(project["id"])
            if _same_config(project.get("label_config"), config):
                return pid
            try:
                client.update_project(pid, label_config=config)
            except LabelStudioError as exc:
                raise LabelStudioError(
                    f"project {title!r} (id {pid}) has another labeling configuration and Label Studio refused "
                    f"avminer's ({exc}); labels in use cannot be removed: use a new project title"
                ) from exc
            return pid
    created = client.create_project(
        title, config,
        description="Frames mined by avminer: sort by score_mi (uncertainty) or score_shift (domain shift).",
    )
    return int(created["id"])


def ensure_local_storage(client: LabelStudioClient, project_id: int, path: str | Path) -> None:
    """Give the project a local-files storage at ``path`` (once), so Label Studio serves frames under it.

    Label Studio serves ``/data/local-files/?d=...`` only for files under a local storage of a project the
    user can see, and only below its ``LOCAL_FILES_DOCUMENT_ROOT`` (``LOCAL_FILES_SERVING_ENABLED=true``).
    Nothing is synced from the storage: avminer creates the tasks itself.
    """
    where = str(Path(path).resolve())
    if any(str(st.get("path", "")).rstrip("/") == where for st in client.local_storages(project_id)):
        return
    try:
        client.add_local_storage(project_id, where)
    except LabelStudioError as exc:
        raise LabelStudioError(
            f"Label Studio refused a local-files storage at {where} ({exc}); start it with "
            "LOCAL_FILES_SERVING_ENABLED=true and LOCAL_FILES_DOCUMENT_ROOT set to a parent directory of "
            "the output directory, or push presigned S3 URLs instead", exc.status,
        ) from exc


def connect_ml_backend(client: LabelStudioClient, project_id: int, url: str, password: str | None = None) -> int:
    """Connect the ML backend at ``url`` to the project (once); returns its id.

    Label Studio checks the backend (``/health``, ``/setup``) and subscribes ``<url>/webhook`` to the
    project's events. With ``password`` it authenticates to the backend with HTTP Basic, and the webhook
    gets the same ``Authorization`` header (Label Studio does not add it to webhooks by itself).
    """
    found = next((b for b in client.ml_backends(project_id) if str(b.get("url", "")).rstrip("/") == url.rstrip("/")),
                 None)
    auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": "avminer", "basic_auth_pass": password} if password else {}
    if found is None:
        found = client.add_ml_backend(project_id, url, **auth)
    if password:
        token = base64.b64encode(f"avminer:{password}".encode()).decode()
        for hook in client.webhooks(project_id):
            if str(hook.get("url", "")).rstrip("/") == url.rstrip("/") + "/webhook":
                client.update_webhook(int(hook["id"]), headers={"Authorization": f"Basic {token}"})
    return int(found["id"])


def _same_config(a: Any, b: str) -> bool:
    return isinstance(a, str) and "".join(a.split()) == "".join(b.split())


# -- push ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class PushStats:
    """What a push did, by sample."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    predictions_added: int = 0
    no_frame: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "predictions_added": self.predictions_added, "no_frame": self.no_frame}


def _task_index(client: LabelStudioClient, project_id: int) -> dict[str, dict[str, Any]]:
    index: dict[str, dict[str, Any]] = {}
    for task in client.tasks(project_id):
        sid = (task.get("data") or {}).get("sample_id")
        if isinstance(sid, str):
            index.setdefault(sid, task)  # a duplicate made outside avminer: the first one is the task
    return index


def _prediction_versions(client: LabelStudioClient, task: dict[str, Any]) -> set[str]:
    preds = task.get("predictions")
    if not isinstance(preds, list):
        preds = client.predictions(int(task["id"]))
    return {str(p.get("model_version")) for p in preds if isinstance(p, dict)}


def push_samples(
    client: LabelStudioClient,
    project_id: int,
    samples: Iterable[SampleRow],
    read_blob: Callable[[str], bytes],
    image_urls: Callable[[str], str],
    class_names: Sequence[str] = CLASS_NAMES,
) -> PushStats:
    """Create or update one task per sample (idempotent by ``data.sample_id``).

    A sample already in the project gets its data refreshed (scores, a new presigned URL) when it
    changed, and the ensemble's prediction added when its model version has none yet there; annotations
    are never touched.

    Args:
        client: the Label Studio connection.
        project_id: the project (see :func:`ensure_project`).
        samples: catalog rows; those without a stored frame are counted as ``no_frame`` and skipped.
        read_blob: reads a stored blob by URI (prediction PNGs).
        image_urls: frame URI -> URL Label Studio's browser client can open.
        class_names: label names, index = class id (must match the project's config).
    """
    stats = PushStats()
    existing = _task_index(client, project_id)
    new: list[dict[str, Any]] = []
    for s in samples:
        task = sample_task(s, read_blob, image_urls, class_names)
        if task is None:
            stats.no_frame += 1
            continue
        current = existing.get(s.sample_id)
        if current is None:
            new.append(task)
            continue
        tid = int(current["id"])
        old = dict(current.get("data") or {})
        # A presigned URL differs on every push; the frame behind it (content-addressed) does not.
        changed = {k: v for k, v in task["data"].items() if k != "image"} != {
            k: v for k, v in old.items() if k != "image"}
        if changed or (old.get("image") != task["data"]["image"] and not task["data"]["image"].startswith("/")):
            client.update_task(tid, task["data"])
            stats.updated += 1
        else:
            stats.unchanged += 1
        if task.get("predictions") and s.model_version not in _prediction_versions(client, current):
            client.create_prediction(tid, task["predictions"][0])
            stats.predictions_added += 1
    for i in range(0, len(new), IMPORT_CHUNK):
        client.import_tasks(project_id, new[i:i + IMPORT_CHUNK])
    stats.created = len(new)
    return stats


# -- pull ------------------------------------------------------------------------------------------------
def _with_people(tasks: list[dict[str, Any]], emails: dict[int, str]) -> list[dict[str, Any]]:
    """Tasks whose annotations name their annotator by e-mail where the export gives only a user id."""
    out = []
    for task in tasks:
        anns = []
        for ann in task.get("annotations") or []:
            who = ann.get("completed_by")
            if isinstance(who, int) and who in emails:
                ann = {**ann, "completed_by": {"id": who, "email": emails[who]}}
            anns.append(ann)
        out.append({**task, "annotations": anns})
    return out


class UserEmails:
    """Label Studio user id -> e-mail, read from ``/api/users/`` and read again on an unknown id
    (exports and webhook events name annotators by id only)."""

    def __init__(self, client: LabelStudioClient) -> None:
        self.client = client
        self._emails: dict[int, str] = {}

    def _load(self) -> None:
        self._emails = {int(u["id"]): str(u.get("email") or u["id"]) for u in self.client.users() if "id" in u}

    def __call__(self, ids: Iterable[int]) -> dict[int, str]:
        wanted = set(ids)
        if wanted - set(self._emails):
            self._load()
        return {i: self._emails[i] for i in wanted if i in self._emails}


def _annotator_ids(tasks: list[dict[str, Any]]) -> set[int]:
    return {a["completed_by"] for t in tasks for a in t.get("annotations") or [] if isinstance(a.get("completed_by"), int)}


@dataclass(slots=True)
class PullResult:
    """What a pull found: new results to deliver, results the catalog already holds, and problems."""

    results: list[LabelResult]
    already_applied: int
    problems: list[str]


def pull_results(
    client: LabelStudioClient,
    project_id: int,
    catalog: Catalog | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> PullResult:
    """LabelResults for every task's latest finished annotation (polling).

    An annotation the catalog already records for its sample (same ``labeler``, i.e. same annotation id,
    and the same time) is skipped, so polling again delivers only new and corrected annotations.

    Returns:
        the results to deliver (validation happens there), the number skipped, and a line per task that
        has no usable annotation (no brush labels, unknown label, not pushed by avminer).
    """
    # A task nobody has finished yet is pending, not a problem: only annotated tasks are read.
    export = [t for t in client.export(project_id)
              if any(not a.get("was_cancelled") for a in t.get("annotations") or [])]
    results, problems = results_from_export(_with_people(export, UserEmails(client)(_annotator_ids(export))),
                                            class_names)
    fresh, skipped = [], 0
    for r in results:
        row = catalog.get_sample(r.sample_id) if catalog is not None else None
        if row is not None and row.labeler == r.labeler and row.labeled_at_us == r.labeled_at_us:
            skipped += 1
        else:
            fresh.append(r)
    return PullResult(fresh, skipped, problems)


def results_from_event(
    event: dict[str, Any],
    class_names: Sequence[str] = CLASS_NAMES,
    emails: Callable[[Iterable[int]], dict[int, str]] | None = None,
) -> tuple[list[LabelResult], list[str]]:
    """LabelResults from one Label Studio webhook event (``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``).

    Other actions give no results. The payload's ``task`` and ``annotation`` are read exactly like an
    export's task with one annotation; ``emails`` (e.g. :class:`UserEmails`) names the annotator, whom
    the event gives by user id only.
    """
    action = event.get("action")
    if action not in ANNOTATION_EVENTS:
        return [], []
    task, ann = event.get("task"), event.get("annotation")
    if not isinstance(task, dict) or not isinstance(ann, dict):
        return [], [f"{action}: the event has no task or annotation (enable 'send payload' on the webhook)"]
    tasks = [{**task, "annotations": [ann]}]
    return results_from_export(_with_people(tasks, emails(_annotator_ids(tasks)) if emails else {}), class_names)


def wait_for_health(url: str, timeout_s: float) -> None:
    """Poll ``<url>/health`` until it answers 200 (Label Studio and the ML backend both have one)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.5)
    raise LabelStudioError(f"{url}/health did not answer within {timeout_s:.0f}s: {last}")
