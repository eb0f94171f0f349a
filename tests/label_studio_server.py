"""Start a throwaway Label Studio: its own virtual environment, a free loopback port, SQLite in a temp dir.

Label Studio (``label-studio``, pinned to :data:`VERSION`) brings Django and ~150 other packages, so it
is installed into a virtual environment of its own, never into avminer's: by default
``~/.cache/avminer/label-studio-venv-<version>`` (``$AVMINER_LABEL_STUDIO_VENV`` overrides), created
once and reused by every later run (a ``.installed`` stamp marks a finished install; a lock file keeps
two test runs from installing at once).

:func:`start_label_studio` runs ``label-studio start`` with:

- its data (SQLite database, media) under the work directory;
- a first user made from ``LABEL_STUDIO_USERNAME`` / ``PASSWORD`` / ``USER_TOKEN``. Label Studio 1.23
  turns legacy tokens off by default; its documented ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN`` setting
  keeps the startup token usable, and that token is used once to mint a personal access token
  (``POST /api/token/``) — the kind a user copies from the UI — which is what avminer then uses;
- local-file serving under ``files_root`` (``LOCAL_FILES_SERVING_ENABLED``, ``LOCAL_FILES_DOCUMENT_ROOT``);
- loopback addresses allowed as ML backends and webhook targets (``USE_DEFAULT_BANNED_SUBNETS=false``:
  its SSRF guard refuses private networks by default, and here everything is on 127.0.0.1).

It waits until ``/health`` answers. A fresh database spends most of a start in migrations (25 s on an
idle machine, 80-110 s on this shared 2-core one), so the first start after an install builds a migrated
template database next to the environment (:func:`ensure_template`) and every server copies it: a few
seconds to ``/health`` afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from avminer.errors import LabelError
from avminer.evaluation.broker import LOOPBACK, free_port, stop_process_group

VERSION = "1.23.2"
USERNAME = "labeler@example.com"


def venv_dir(version: str = VERSION) -> Path:
    """Where Label Studio's own virtual environment lives (``$AVMINER_LABEL_STUDIO_VENV`` or the cache)."""
    override = os.environ.get("AVMINER_LABEL_STUDIO_VENV")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "avminer" / f"label-studio-venv-{version}"


def ensure_installed(version: str = VERSION, python: str | None = None) -> Path:
    """The Python of a virtual environment with ``label-studio==version``, installing it if needed.

    Args:
        version: the Label Studio version to pin.
        python: the interpreter that creates the environment (default: this one).

    Returns:
        the environment's ``bin/python``.

    Raises:
        LabelError: ``pip install`` failed (its output's tail is in the message).
    """
    venv = venv_dir(version)
    py = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return py
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing: wait for it
        if stamp.exists():
            return py
        shutil.rmtree(venv, ignore_errors=True)  # a half-finished install from a killed run
        log = venv.parent / f"{venv.name}.install.log"
        with open(log, "wb") as fh:
            steps = [
                [python or sys.executable, "-m", "venv", str(venv)],
                [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"label-studio=={version}"],
            ]
            for cmd in steps:
                if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode != 0:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise LabelError(f"installing label-studio=={version} into {venv} failed:\n{tail}")
        stamp.write_text(version + "\n")
    return py


@dataclass
class LocalLabelStudio:
    """A running Label Studio; :meth:`stop` ends it.

    Attributes:
        url: base URL (``http://127.0.0.1:<port>``).
        token: a personal access token of :attr:`username`.
        legacy_token: the startup legacy token (enabled on this server).
        username: the first user's e-mail.
        files_root: ``LOCAL_FILES_DOCUMENT_ROOT`` (None: local files are not served).
        data_dir: Label Studio's data (SQLite, media).
    """

    url: str
    token: str
    legacy_token: str
    username: str
    files_root: Path | None
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process_group(self.proc)


def _post_json(url: str, token: str) -> dict[str, object]:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={
        "Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback http
        out: dict[str, object] = json.loads(resp.read())
    return out


def _spawn(py: Path, workdir: Path, data: Path, user: dict[str, str], files_root: Path | None,
           ) -> tuple[str, subprocess.Popen[bytes], Path]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "HEARTEX_", "DJANGO_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_USERNAME": user["username"],
        "LABEL_STUDIO_PASSWORD": user["password"],
        "LABEL_STUDIO_USER_TOKEN": user["legacy_token"],
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "USE_DEFAULT_BANNED_SUBNETS": "false",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",  # no call to pypi.org: nothing leaves loopback
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    })
    if files_root is not None:
        env.update({"LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(files_root.resolve())})
    log = workdir / "label-studio.log"
    cmd = [str(py), "-c", "from label_studio.server import main; main()", "start", "--port", str(port),
           "--host", url, "--internal-host", LOOPBACK, "--no-browser"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                start_new_session=True)
    return url, proc, log


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    from avminer.labels.labelstudio_api import LabelStudioError, wait_for_health

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise LabelError(f"label-studio exited with {proc.returncode}")
        try:
            wait_for_health(url, min(5.0, max(0.1, deadline - time.monotonic())))
            return
        except LabelStudioError:
            if time.monotonic() >= deadline:
                raise


def ensure_template(version: str = VERSION, timeout_s: float = 300.0) -> tuple[Path, dict[str, str]]:
    """A migrated SQLite database with the first user and organization, made once per version.

    A fresh Label Studio spends most of its start (a minute and more on a loaded machine) migrating an
    empty database; every server started afterwards copies this one instead and is up in seconds.

    Returns:
        (database file, the user it holds: ``username``, ``password``, ``legacy_token``).
    """
    py = ensure_installed(version)
    tdir = venv_dir(version) / "template"
    db, meta = tdir / "label_studio.sqlite3", tdir / "user.json"
    if meta.exists():
        return db, json.loads(meta.read_text())
    with open(venv_dir(version).parent / f"{venv_dir(version).name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if meta.exists():
            return db, json.loads(meta.read_text())
        user = {"username": USERNAME, "password": secrets.token_urlsafe(16), "legacy_token": secrets.token_hex(20)}
        with tempfile.TemporaryDirectory(prefix="label-studio-template-") as tmp:
            work = Path(tmp)
            url, proc, log = _spawn(py, work, work / "data", user, None)
            try:
                _wait_healthy(url, proc, timeout_s)
            except BaseException as exc:
                stop_process_group(proc)
                tail = log.read_text(errors="replace")[-3000:]
                raise LabelError(f"Label Studio did not start to build its template database: {exc}\n{tail}") from exc
            stop_process_group(proc)
            tdir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / "data" / db.name, db.with_suffix(".tmp"))
            os.replace(db.with_suffix(".tmp"), db)
            meta.write_text(json.dumps(user))  # written last: its presence means the template is whole
    return db, user


def start_label_studio(workdir: Path, files_root: Path | None = None, timeout_s: float = 180.0) -> LocalLabelStudio:
    """Install (once) and start Label Studio on a free loopback port; wait for ``/health``.

    Args:
        workdir: its data directory and log (``label-studio.log``) go here.
        files_root: serve local files under this directory (``LOCAL_FILES_DOCUMENT_ROOT``).
        timeout_s: how long to wait for ``/health``.

    Raises:
        LabelError: the install failed, or the server exited or did not answer in time (log tail included).
    """
    py = ensure_installed()
    template, user = ensure_template()
    data = workdir / "label-studio-data"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, data / template.name)
    url, proc, log = _spawn(py, workdir, data, user, files_root)
    server = LocalLabelStudio(url, "", user["legacy_token"], user["username"], files_root, data, proc, log)
    try:
        _wait_healthy(url, proc, timeout_s)
        body = _post_json(f"{url}/api/token/", user["legacy_token"])
        if not isinstance(body.get("token"), str):
            raise LabelError(f"POST /api/token/ gave no personal access token: {sorted(body)}")
        server.token = str(body["token"])
    except BaseException as exc:
        server.stop()
        tail = log.read_text(errors="replace")[-3000:]
        if isinstance(exc, (LabelError, OSError)):
            raise LabelError(f"Label Studio on {url} did not start: {exc}\n{tail}") from exc
        raise
    return server


@contextlib.contextmanager
def running_label_studio(workdir: Path, files_root: Path | None = None) -> Iterator[LocalLabelStudio]:
    """:func:`start_label_studio` as a context manager that always stops the server."""
    server = start_label_studio(workdir, files_root)
    try:
        yield server
    finally:
        server.stop()
