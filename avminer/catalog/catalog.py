"""The provenance catalog: every mined sample, its label, the datasets and training runs that used it.

One schema (``catalog.sql``) and one DAO for both backends:

- SQLite (default, one file, WAL mode) — ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or a
  plain path;
- PostgreSQL (production: several miners and the trainer write one catalog) —
  ``postgresql://user@host/db``; an optional ``?schema=name`` keeps the tables in their own schema
  (created if missing), which the tests use for isolation.

The SQL is written once with ``?`` placeholders; :class:`_Dialect` turns them into ``%s`` for psycopg.
Every write is an idempotent upsert (``INSERT ... ON CONFLICT``, supported by both), so replays and
concurrent writers converge. A sample's state only moves forward: mined → requested → labeled → used.

Datasets: :meth:`Catalog.create_dataset` freezes a :class:`DatasetQuery` into a new immutable version
(``1, 2, ...``) of a dataset id; a frozen version never changes, even when labels are later replaced.
A training run names one dataset version, so :meth:`Catalog.trained_on` answers "which labels trained
model v7".

Why one module of ~800 lines: it is one DAO over one schema, and each table's writes sit beside the
reads that depend on their upsert rules (a sample's state only moves forward); the HTTP API is apart
(:mod:`avminer.catalog.api`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from avminer.config import mask_url
from avminer.errors import CatalogError, SinkUnavailableError
from avminer.events.records import Decision, LabelRequest

SCHEMA_VERSION = 1
STATES = ("mined", "requested", "labeled", "used")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COLUMNS = (
    "sample_id", "frame_id", "frame_uri", "uncertainty_uri", "prediction_uri", "vehicle", "camera",
    "timestamp_us", "slice", "scores", "reasons", "model_version", "mined", "width", "height", "priority",
    "state", "decided_at_us", "requested_at_us", "label_uri", "labeler", "labeled_at_us", "used_by_run",
    "updated_at_us",
)
_SELECT = ", ".join(f"s.{c}" for c in _COLUMNS)


def now_us() -> int:
    return int(time.time() * 1_000_000)


def check_id(value: str, what: str = "dataset id") -> str:
    """Validate a dataset or run id: 1-128 of ``A-Z a-z 0-9 . _ -``, starting alphanumeric."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise CatalogError(
            f"invalid {what} {value!r}: use 1-128 characters of letters, digits, '.', '_', '-' "
            "starting with a letter or digit"
        )
    return value


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)\s*$")
_UNIT_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000,
            "d": 86_400_000_000, "w": 7 * 86_400_000_000}


def parse_time_us(value: str | int | float, *, now: int | None = None) -> int:
    """A point in time as microseconds since the epoch.

    Accepts an integer (already microseconds), a duration meaning "that long ago" (``90s``, ``15m``,
    ``1h``, ``7d``), or an ISO-8601 timestamp (UTC unless it names a zone).
    """
    if isinstance(value, bool):
        raise CatalogError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    text = value.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    m = _DURATION_RE.match(text)
    if m:
        return (now_us() if now is None else now) - int(float(m.group(1)) * _UNIT_US[m.group(2)])
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CatalogError(
            f"not a time: {value!r}; use microseconds, a duration ago like '1h' or '30m', or ISO-8601"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def slice_matches(pattern: str, slice_key: str) -> bool:
    """True if ``slice_key`` (``day/clear/cambridge_uk``) matches ``pattern`` segment by segment.

    Each segment is an fnmatch pattern (``*`` never crosses a ``/``); a pattern with fewer segments
    matches any value of the missing ones (``dusk`` = ``dusk/*/*``).
    """
    pat = pattern.split("/")
    key = slice_key.split("/")
    if len(pat) > len(key):
        return False
    return all(fnmatch.fnmatchcase(k, p) for p, k in zip(pat, key, strict=False))


def _like_prefix(pattern: str) -> str:
    """A LIKE pattern selecting a superset of ``pattern``'s matches (its literal prefix)."""
    literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    escaped = literal.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


@dataclass(slots=True)
class SampleRow:
    """One sample as the catalog knows it (JSON columns decoded)."""

    sample_id: str
    frame_id: str
    frame_uri: str | None
    uncertainty_uri: str | None
    prediction_uri: str | None
    vehicle: str
    camera: str
    timestamp_us: int
    slice: str
    scores: dict[str, float]
    reasons: list[str]
    model_version: str
    mined: bool
    width: int | None
    height: int | None
    priority: float
    state: str
    decided_at_us: int | None
    requested_at_us: int | None
    label_uri: str | None
    labeler: str | None
    labeled_at_us: int | None
    used_by_run: str | None
    updated_at_us: int

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> SampleRow:
        data = dict(zip(_COLUMNS, row, strict=True))
        data["scores"] = json.loads(data["scores"])
        data["reasons"] = json.loads(data["reasons"])
        data["mined"] = bool(data["mined"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class DatasetQuery:
    """What a dataset version is frozen from (all filters ANDed; slices ORed among themselves).

    Attributes:
        slices: slice patterns (``dusk/*/*``); empty: every slice.
        start_us: earliest frame timestamp (inclusive), microseconds.
        end_us: latest frame timestamp (exclusive), microseconds.
        labeled_only: only samples with a label (state labeled or used).
        limit: at most this many samples (newest first), None: all.
    """

    slices: list[str] = field(default_factory=list)
    start_us: int | None = None
    end_us: int | None = None
    labeled_only: bool = True
    limit: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> DatasetQuery:
        """Parse and validate a JSON query (HTTP body); raises CatalogError naming the bad field.

        ``start``/``end`` may be given instead of ``start_us``/``end_us`` as ISO-8601 or a duration ago.
        """
        if not isinstance(data, dict):
            raise CatalogError("the dataset query must be a JSON object")
        known = {"slices", "start_us", "end_us", "start", "end", "labeled_only", "limit"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CatalogError(f"unknown query field(s) {unknown}; known: {sorted(known)}")
        slices = data.get("slices", [])
        if isinstance(slices, str):
            slices = [slices]
        if not isinstance(slices, list) or not all(isinstance(s, str) and s for s in slices):
            raise CatalogError("slices: must be a list of non-empty slice patterns like 'dusk/*/*'")
        bounds: dict[str, int | None] = {}
        for name in ("start", "end"):
            raw = data.get(f"{name}_us", data.get(name))
            if raw is None:
                bounds[name] = None
            elif isinstance(raw, (int, str)) and not isinstance(raw, bool):
                bounds[name] = parse_time_us(raw)
            else:
                raise CatalogError(f"{name}: must be microseconds, an ISO-8601 time or a duration like '1h'")
        if bounds["start"] is not None and bounds["end"] is not None and bounds["end"] <= bounds["start"]:
            raise CatalogError("end: must be after start")
        labeled_only = data.get("labeled_only", True)
        if not isinstance(labeled_only, bool):
            raise CatalogError("labeled_only: must be true or false")
        limit = data.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise CatalogError("limit: must be a positive integer")
        return cls(list(slices), bounds["start"], bounds["end"], labeled_only, limit)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class DatasetVersion:
    """A frozen dataset version (the list of its samples comes from :meth:`Catalog.dataset_samples`)."""

    dataset_id: str
    version: int
    query: dict[str, Any]
    created_at_us: int
    sample_count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Dialect:
    """What differs between SQLite and PostgreSQL: placeholders, connect, transactions, errors."""

    name = "sqlite"

    def sql(self, query: str) -> str:
        return query


class _PgDialect(_Dialect):
    name = "postgresql"

    def sql(self, query: str) -> str:
        # No literal '?' or '%' ever appears in our SQL text: values are always parameters.
        return query.replace("?", "%s")


def _schema_statements() -> list[str]:
    text = resources.files("avminer.catalog").joinpath("catalog.sql").read_text()
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    body = "\n".join(line.split("--")[0] for line in lines)
    return [s.strip() for s in body.split(";") if s.strip()]


class Catalog:
    """DAO over the catalog tables; thread-safe (one connection behind a lock).

    Use :func:`open_catalog` to get one. Operational failures (database locked beyond the busy
    timeout, PostgreSQL connection lost) raise :class:`SinkUnavailableError` — retry later; the
    PostgreSQL connection is reopened on the next call. Bad arguments raise :class:`CatalogError`.
    """

    def __init__(self, url: str, *, schema: str | None = None, create: bool = True) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._conn: Any = None
        self._schema = schema
        parts = urlsplit(url)
        if parts.scheme in ("postgresql", "postgres"):
            self.dialect: _Dialect = _PgDialect()
            query = dict(parse_qsl(parts.query))
            self._schema = query.pop("schema", None) or schema
            if self._schema is not None:
                check_id(self._schema, "schema name")
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self._schema):
                    raise CatalogError(f"schema name {self._schema!r}: use letters, digits and '_' only")
            self._dsn = urlunsplit(parts._replace(query=urlencode(query)))
        elif parts.scheme in ("sqlite", ""):
            self.dialect = _Dialect()
            if parts.scheme == "sqlite":
                if not url.startswith("sqlite:///"):
                    raise CatalogError(f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
                path = url[len("sqlite:///"):]
            else:
                path = url
            self._dsn = path
            if path != ":memory:" and not create and not Path(path).expanduser().is_file():
                # A mistyped path must not leave directories and an empty catalog behind.
                raise CatalogError(f"no catalog at {path}: check --catalog / sinks.catalog_url")
            if path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            raise CatalogError(f"unsupported catalog URL {mask_url(url)!r}: use sqlite:///path or postgresql://...")
        try:
            self._connect()
            self._create_schema()
        except sqlite3.DatabaseError as exc:  # not a database at all, or a corrupt one
            self.close()
            raise CatalogError(f"{mask_url(url)} is not a usable SQLite catalog: "
                               f"{exc}") from exc

    # -- connection plumbing ------------------------------------------------------------------------

    @property
    def is_postgres(self) -> bool:
        return self.dialect.name == "postgresql"

    def _connect(self) -> None:
        if self.is_postgres:
            import psycopg

            try:
                conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as exc:
                raise SinkUnavailableError(f"cannot connect to the catalog at {self._redacted()}: {exc}") from exc
            if self._schema:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                conn.execute(f'SET search_path TO "{self._schema}"')
            self._conn = conn
        else:
            lite = sqlite3.connect(self._dsn, timeout=30.0, isolation_level=None, check_same_thread=False)
            lite.execute("PRAGMA journal_mode=WAL")
            lite.execute("PRAGMA synchronous=NORMAL")
            self._conn = lite

    def _redacted(self) -> str:
        parts = urlsplit(self.url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return self.url

    def _operational_errors(self) -> tuple[type[BaseException], ...]:
        if self.is_postgres:
            import psycopg

            return (psycopg.OperationalError,)
        return (sqlite3.OperationalError,)

    def _data_errors(self) -> tuple[type[BaseException], ...]:
        if self.is_postgres:
            import psycopg

            return (psycopg.DataError,)
        return (sqlite3.DataError, ValueError)

    def _integrity_errors(self) -> tuple[type[BaseException], ...]:
        if self.is_postgres:
            import psycopg

            return (psycopg.IntegrityError,)
        return (sqlite3.IntegrityError,)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction; yields a cursor. Maps connection failures to SinkUnavailableError."""
        with self._lock:
            if self._conn is None:
                self._connect()
            conn = self._conn
            try:
                if self.is_postgres:
                    with conn.transaction(), conn.cursor() as cur:
                        yield cur
                else:
                    cur = conn.cursor()
                    cur.execute("BEGIN IMMEDIATE")
                    try:
                        yield cur
                    except BaseException:
                        cur.execute("ROLLBACK")
                        raise
                    cur.execute("COMMIT")
            except self._operational_errors() as exc:
                if self.is_postgres:
                    with contextlib.suppress(Exception):
                        conn.close()
                    self._conn = None
                raise SinkUnavailableError(f"catalog {self._redacted()} unavailable: {exc}") from exc
            except self._data_errors() as exc:
                # A value the database cannot hold (a NUL in PostgreSQL text): the caller's input, not the sink.
                raise CatalogError(f"catalog refused a value: {exc}") from exc

    def _exec(self, cur: Any, query: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self.dialect.sql(query), tuple(params))
        return cur

    def _create_schema(self) -> None:
        with self._tx() as cur:
            if self.is_postgres:
                # Several miners may start at once; CREATE ... IF NOT EXISTS races in PostgreSQL.
                self._exec(cur, "SELECT pg_advisory_xact_lock(7310001)")
            for stmt in _schema_statements():
                self._exec(cur, stmt)
            self._exec(
                cur,
                "INSERT INTO catalog_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
            row = self._exec(cur, "SELECT value FROM catalog_meta WHERE key = 'schema_version'").fetchone()
        if int(row[0]) != SCHEMA_VERSION:
            raise CatalogError(
                f"catalog schema version {row[0]} at {self._redacted()} is not {SCHEMA_VERSION}; "
                "upgrade avminer or point sinks.catalog_url at a new catalog"
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop_schema(self) -> None:
        """PostgreSQL only: drop this catalog's own schema and everything in it (tests)."""
        if not (self.is_postgres and self._schema):
            raise CatalogError("drop_schema needs a PostgreSQL catalog opened with a schema")
        with self._tx() as cur:
            self._exec(cur, f'DROP SCHEMA IF EXISTS "{self._schema}" CASCADE')
        self.close()

    # -- samples ----------------------------------------------------------------------------------

    def upsert_decision(
        self,
        decision: Decision,
        *,
        frame_uri: str | None = None,
        uncertainty_uri: str | None = None,
        prediction_uri: str | None = None,
        width: int | None = None,
        height: int | None = None,
        priority: float = 0.0,
    ) -> None:
        """Insert the sample row of a decision; on replay, fill missing URIs and keep the rest.

        The first decision recorded for a sample wins: its scores and model version are what the
        label request carried.
        """
        t = now_us()
        d = decision
        with self._tx() as cur:
            self._exec(
                cur,
                """
                INSERT INTO samples (sample_id, frame_id, frame_uri, uncertainty_uri, prediction_uri, vehicle,
                    camera, timestamp_us, slice, scores, reasons, model_version, mined, width, height, priority,
                    state, decided_at_us, updated_at_us)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'mined', ?, ?)
                ON CONFLICT (sample_id) DO UPDATE SET
                    frame_uri = COALESCE(samples.frame_uri, excluded.frame_uri),
                    uncertainty_uri = COALESCE(samples.uncertainty_uri, excluded.uncertainty_uri),
                    prediction_uri = COALESCE(samples.prediction_uri, excluded.prediction_uri),
                    width = COALESCE(samples.width, excluded.width),
                    height = COALESCE(samples.height, excluded.height),
                    updated_at_us = excluded.updated_at_us
                """,
                (d.sample_id, d.frame_id, frame_uri, uncertainty_uri, prediction_uri, d.vehicle_id, d.camera_id,
                 d.timestamp_us, d.slice, json.dumps(d.scores, sort_keys=True), json.dumps(list(d.reasons)),
                 d.model_version, int(d.mined), width, height, float(priority), d.decided_at_us or t, t),
            )

    def upsert_request(self, req: LabelRequest) -> None:
        """Record that a label request was sent: state ``requested`` unless already further."""
        self.upsert_requests([req])

    def upsert_requests(self, reqs: Sequence[LabelRequest]) -> None:
        """:meth:`upsert_request` for a batch, in one transaction.

        The writer records a batch's requests right after the request sink confirmed them; one commit
        instead of one per request keeps the window in which a crash leaves a sent request unrecorded
        (and so sent again on replay) as short as it can be without a transaction spanning both.
        """
        t = now_us()
        with self._tx() as cur:
            for req in reqs:
                self._exec(
                    cur,
                    """
                    INSERT INTO samples (sample_id, frame_id, frame_uri, uncertainty_uri, vehicle, camera,
                        timestamp_us, slice, scores, reasons, model_version, mined, priority, state,
                        requested_at_us, updated_at_us)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, 'requested', ?, ?)
                    ON CONFLICT (sample_id) DO UPDATE SET
                        state = CASE WHEN samples.state = 'mined' THEN 'requested' ELSE samples.state END,
                        frame_uri = COALESCE(samples.frame_uri, excluded.frame_uri),
                        uncertainty_uri = COALESCE(samples.uncertainty_uri, excluded.uncertainty_uri),
                        requested_at_us = COALESCE(samples.requested_at_us, excluded.requested_at_us),
                        priority = excluded.priority,
                        updated_at_us = excluded.updated_at_us
                    """,
                    (req.sample_id, req.frame_id, req.frame_uri, req.uncertainty_uri, req.vehicle_id, req.camera_id,
                     req.timestamp_us, req.slice, json.dumps(req.scores, sort_keys=True), json.dumps(list(req.reasons)),
                     req.model_version, float(req.priority), req.requested_at_us or t, t),
                )

    def requested_ids(self, sample_ids: Sequence[str]) -> set[str]:
        """The subset of ``sample_ids`` whose label request was already sent (state past mined)."""
        found: set[str] = set()
        ids = list(dict.fromkeys(sample_ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            with self._tx() as cur:
                rows = self._exec(
                    cur, f"SELECT sample_id FROM samples WHERE state <> 'mined' AND sample_id IN ({marks})", chunk
                ).fetchall()
            found.update(r[0] for r in rows)
        return found

    def mark_labeled(self, sample_id: str, label_uri: str, labeler: str, labeled_at_us: int | None = None) -> None:
        """Attach a (validated) label; a later label replaces the earlier one (frozen datasets keep theirs).

        Raises:
            CatalogError: the sample is not in the catalog.
        """
        t = now_us()
        with self._tx() as cur:
            n = self._exec(
                cur,
                """
                UPDATE samples SET
                    state = CASE WHEN state = 'used' THEN 'used' ELSE 'labeled' END,
                    label_uri = ?, labeler = ?, labeled_at_us = ?, updated_at_us = ?
                WHERE sample_id = ?
                """,
                (label_uri, labeler, labeled_at_us or t, t, sample_id),
            ).rowcount
        if n == 0:
            raise CatalogError(f"unknown sample {sample_id!r}: it was never mined into this catalog")

    def mark_used(self, sample_ids: Sequence[str], run_id: str) -> int:
        """Mark labeled samples as used by training run ``run_id``; returns how many rows changed."""
        changed = 0
        ids = list(dict.fromkeys(sample_ids))
        t = now_us()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            with self._tx() as cur:
                changed += self._exec(
                    cur,
                    f"UPDATE samples SET state = 'used', used_by_run = ?, updated_at_us = ? "
                    f"WHERE state IN ('labeled', 'used') AND sample_id IN ({marks})",
                    [run_id, t, *chunk],
                ).rowcount
        return changed

    def mark_pseudo_labeled(self, frame_ids: Sequence[str], model_version: str) -> int:
        """Record that ``model_version`` pseudo-labeled these frames (self-training): ``labeler`` becomes
        ``pseudo:<model_version>``; state and ``label_uri`` stay, so a pseudo-label never passes for a
        human one, and frames with a human label are left alone. Returns how many rows changed."""
        ids, changed = list(dict.fromkeys(frame_ids)), 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            with self._tx() as cur:
                changed += self._exec(
                    cur, f"UPDATE samples SET labeler = ?, updated_at_us = ? WHERE label_uri IS NULL AND frame_id "
                    f"IN ({', '.join('?' * len(chunk))})", [f"pseudo:{model_version}", now_us(), *chunk],
                ).rowcount
        return changed

    def get_sample(self, sample_id: str) -> SampleRow | None:
        with self._tx() as cur:
            row = self._exec(cur, f"SELECT {_SELECT} FROM samples s WHERE s.sample_id = ?", (sample_id,)).fetchone()
        return SampleRow.from_row(row) if row else None

    def query_samples(
        self,
        *,
        slices: Sequence[str] = (),
        since_us: int | None = None,
        until_us: int | None = None,
        states: Sequence[str] = (),
        labeled_only: bool = False,
        reason: str | None = None,
        limit: int | None = None,
    ) -> list[SampleRow]:
        """Samples matching every filter, newest first.

        Args:
            slices: slice patterns (``dusk/*/*``), ORed; empty: all.
            since_us: frame timestamp >= this.
            until_us: frame timestamp < this.
            states: any of ``mined requested labeled used``; empty: all.
            labeled_only: only samples with a label.
            reason: only samples mined for this reason (``uncertainty``, ``shift``, ...).
            limit: at most this many rows.
        """
        for s in states:
            if s not in STATES:
                raise CatalogError(f"unknown state {s!r}; use one of {', '.join(STATES)}")
        where: list[str] = []
        params: list[Any] = []
        if slices:
            where.append("(" + " OR ".join("s.slice LIKE ? ESCAPE '\\'" for _ in slices) + ")")
            params.extend(_like_prefix(p) for p in slices)
        if since_us is not None:
            where.append("s.timestamp_us >= ?")
            params.append(int(since_us))
        if until_us is not None:
            where.append("s.timestamp_us < ?")
            params.append(int(until_us))
        if states:
            where.append(f"s.state IN ({', '.join('?' * len(states))})")
            params.extend(states)
        if labeled_only:
            where.append("s.label_uri IS NOT NULL")
        sql = f"SELECT {_SELECT} FROM samples s"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY s.timestamp_us DESC, s.sample_id"
        out: list[SampleRow] = []
        with self._tx() as cur:
            self._exec(cur, sql, params)
            for raw in cur:
                row = SampleRow.from_row(raw)
                if slices and not any(slice_matches(p, row.slice) for p in slices):
                    continue
                if reason is not None and reason not in row.reasons:
                    continue
                out.append(row)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def stats(self) -> dict[str, Any]:
        """Counts by state, by slice (and state), by reason; datasets and training runs."""
        by_state: dict[str, int] = dict.fromkeys(STATES, 0)
        by_slice: dict[str, dict[str, int]] = {}
        by_reason: dict[str, int] = {}
        with self._tx() as cur:
            for slice_key, state, n in self._exec(
                cur, "SELECT slice, state, COUNT(*) FROM samples GROUP BY slice, state ORDER BY slice"
            ).fetchall():
                by_state[state] = by_state.get(state, 0) + int(n)
                by_slice.setdefault(slice_key, {})[state] = int(n)
            for (reasons,) in self._exec(cur, "SELECT reasons FROM samples").fetchall():
                for r in json.loads(reasons):
                    by_reason[r] = by_reason.get(r, 0) + 1
            datasets = self._exec(cur, "SELECT COUNT(DISTINCT dataset_id), COUNT(*) FROM datasets").fetchone()
            runs = self._exec(cur, "SELECT COUNT(*) FROM training_runs").fetchone()
        return {
            "samples": sum(by_state.values()),
            "by_state": by_state,
            "by_slice": by_slice,
            "by_reason": dict(sorted(by_reason.items())),
            "datasets": int(datasets[0]),
            "dataset_versions": int(datasets[1]),
            "training_runs": int(runs[0]),
        }

    # -- datasets -----------------------------------------------------------------------------------

    def create_dataset(self, dataset_id: str, query: DatasetQuery, *, allow_empty: bool = False) -> DatasetVersion:
        """Freeze the samples matching ``query`` into the next version of ``dataset_id``.

        Every call creates a new version (1, 2, ...); existing versions are never modified.

        Raises:
            CatalogError: bad id, or no sample matches and ``allow_empty`` is False.
        """
        check_id(dataset_id)
        rows = self.query_samples(
            slices=query.slices, since_us=query.start_us, until_us=query.end_us,
            labeled_only=query.labeled_only, limit=query.limit,
        )
        if not rows and not allow_empty:
            raise CatalogError(f"no sample matches the query {query.to_json()}; dataset {dataset_id!r} not created")
        created = now_us()
        for _attempt in range(5):
            try:
                with self._tx() as cur:
                    (last,) = self._exec(
                        cur, "SELECT COALESCE(MAX(version), 0) FROM datasets WHERE dataset_id = ?", (dataset_id,)
                    ).fetchone()
                    version = int(last) + 1
                    self._exec(
                        cur,
                        "INSERT INTO datasets (dataset_id, version, query, created_at_us, sample_count) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (dataset_id, version, json.dumps(query.to_json(), sort_keys=True), created, len(rows)),
                    )
                    cur.executemany(
                        self.dialect.sql(
                            "INSERT INTO dataset_samples (dataset_id, version, sample_id, frame_uri, label_uri) "
                            "VALUES (?, ?, ?, ?, ?)"
                        ),
                        [(dataset_id, version, r.sample_id, r.frame_uri, r.label_uri) for r in rows],
                    )
                return DatasetVersion(dataset_id, version, query.to_json(), created, len(rows))
            except self._integrity_errors():
                continue  # another writer took this version number at the same moment: take the next
        raise CatalogError(f"could not allocate a version for dataset {dataset_id!r} (too much contention)")

    def list_datasets(self) -> list[DatasetVersion]:
        """Every version of every dataset, by id then version."""
        with self._tx() as cur:
            rows = self._exec(
                cur,
                "SELECT dataset_id, version, query, created_at_us, sample_count FROM datasets "
                "ORDER BY dataset_id, version",
            ).fetchall()
        return [DatasetVersion(r[0], int(r[1]), json.loads(r[2]), int(r[3]), int(r[4])) for r in rows]

    def get_dataset(self, dataset_id: str, version: int | None = None) -> DatasetVersion:
        """One version (latest when None). Raises CatalogError if there is none."""
        check_id(dataset_id)
        with self._tx() as cur:
            if version is None:
                row = self._exec(
                    cur,
                    "SELECT dataset_id, version, query, created_at_us, sample_count FROM datasets "
                    "WHERE dataset_id = ? ORDER BY version DESC LIMIT 1",
                    (dataset_id,),
                ).fetchone()
            else:
                row = self._exec(
                    cur,
                    "SELECT dataset_id, version, query, created_at_us, sample_count FROM datasets "
                    "WHERE dataset_id = ? AND version = ?",
                    (dataset_id, int(version)),
                ).fetchone()
        if row is None:
            which = "versions" if version is None else f"version {version}"
            raise CatalogError(f"dataset {dataset_id!r} has no {which}")
        return DatasetVersion(row[0], int(row[1]), json.loads(row[2]), int(row[3]), int(row[4]))

    def dataset_samples(self, dataset_id: str, version: int | None = None) -> list[dict[str, Any]]:
        """The frozen samples of a dataset version: sample id, frame URI and label URI as frozen,
        with slice, timestamp and labeler from the sample row."""
        ds = self.get_dataset(dataset_id, version)
        with self._tx() as cur:
            rows = self._exec(
                cur,
                """
                SELECT d.sample_id, d.frame_uri, d.label_uri, s.frame_id, s.slice, s.timestamp_us, s.vehicle,
                       s.camera, s.labeler, s.width, s.height
                FROM dataset_samples d LEFT JOIN samples s ON s.sample_id = d.sample_id
                WHERE d.dataset_id = ? AND d.version = ? ORDER BY d.sample_id
                """,
                (ds.dataset_id, ds.version),
            ).fetchall()
        keys = ("sample_id", "frame_uri", "label_uri", "frame_id", "slice", "timestamp_us", "vehicle", "camera",
                "labeler", "width", "height")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- training runs --------------------------------------------------------------------------------

    def record_training_run(
        self,
        run_id: str,
        dataset_id: str,
        dataset_version: int | None = None,
        model_version: str | None = None,
        notes: str = "",
    ) -> DatasetVersion:
        """Record (or update) a training run on a dataset version and mark its samples used.

        Call again with ``model_version`` once the run produced a release. Returns the dataset version
        the run is tied to (latest when ``dataset_version`` is None at the first call).
        """
        check_id(run_id, "run id")
        ds = self.get_dataset(dataset_id, dataset_version)
        with self._tx() as cur:
            self._exec(
                cur,
                """
                INSERT INTO training_runs (run_id, model_version, dataset_id, dataset_version, started_at_us, notes)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (run_id) DO UPDATE SET
                    model_version = COALESCE(excluded.model_version, training_runs.model_version),
                    notes = CASE WHEN excluded.notes = '' THEN training_runs.notes ELSE excluded.notes END
                """,
                (run_id, model_version, ds.dataset_id, ds.version, now_us(), notes),
            )
            row = self._exec(
                cur, "SELECT dataset_id, dataset_version FROM training_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        if (row[0], int(row[1])) != (ds.dataset_id, ds.version):
            raise CatalogError(
                f"training run {run_id!r} is already tied to dataset {row[0]} v{row[1]}, not "
                f"{ds.dataset_id} v{ds.version}; a run trains on exactly one dataset version"
            )
        self.mark_used([s["sample_id"] for s in self.dataset_samples(ds.dataset_id, ds.version)], run_id)
        return ds

    def training_runs(self, model_version: str | None = None) -> list[dict[str, Any]]:
        """Training runs (all, or those that produced ``model_version``)."""
        sql = ("SELECT run_id, model_version, dataset_id, dataset_version, started_at_us, notes "
               "FROM training_runs")
        params: tuple[Any, ...] = ()
        if model_version is not None:
            sql += " WHERE model_version = ?"
            params = (model_version,)
        with self._tx() as cur:
            rows = self._exec(cur, sql + " ORDER BY started_at_us", params).fetchall()
        keys = ("run_id", "model_version", "dataset_id", "dataset_version", "started_at_us", "notes")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def trained_on(self, model_version: str) -> list[dict[str, Any]]:
        """The labels that trained ``model_version``: one entry per (run, sample), label URI as frozen.

        Raises:
            CatalogError: no training run produced that model version.
        """
        runs = self.training_runs(model_version)
        if not runs:
            raise CatalogError(f"no training run produced model {model_version!r}; see `avminer catalog runs`")
        out = []
        for run in runs:
            for s in self.dataset_samples(run["dataset_id"], int(run["dataset_version"])):
                out.append({"run_id": run["run_id"], "dataset_id": run["dataset_id"],
                            "dataset_version": run["dataset_version"], **s})
        return out


def open_catalog(url: str, *, schema: str | None = None, create: bool = True) -> Catalog:
    """Open (and create if needed) the catalog at ``url``.

    Args:
        url: ``sqlite:///path``, a plain file path, or ``postgresql://...[?schema=name]``.
        schema: PostgreSQL schema to keep the tables in (overridden by ``?schema=`` in the URL).
        create: False: a SQLite catalog that does not exist yet is an error (queries), not created.
    """
    return Catalog(url, schema=schema, create=create)
