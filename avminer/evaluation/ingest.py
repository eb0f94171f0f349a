"""Kafka consume rate: kafka-python (with and without ``crc32c``) vs confluent-kafka, same broker, same messages.

The messages are produced once into a fresh topic; then each client variant reads all of them in a fresh
Python process of its own (``python -m avminer.evaluation.ingest SPEC``), so that the variants cannot
share warm caches or imports:

- ``kafka-python``: the default install, CRC-32C from the ``crc32c`` C extension;
- ``kafka-python (no crc32c)``: the same with ``crc32c`` made unimportable (``sys.modules["crc32c"] =
  None`` before kafka is imported). kafka-python picks its CRC-32C function at import time
  (``kafka/record/util.py``: ``from crc32c import crc32c`` or the pure-Python ``kafka.record._crc32c``,
  bound as the default argument of ``calc_crc32c``), so the worker reads back which function is bound and
  reports it;
- ``kafka-python (avminer)``: kafka-python as avminer's consumers run it by default: the process keeps
  freed fetch buffers (:mod:`avminer.sources.kafka_memory`, ``kafka.keep_fetch_memory``); the worker
  reports what its allocator runs with;
- ``kafka-python (avminer recv)``: the same with ``kafka.bulk_recv``, the bulk socket read of
  :mod:`avminer.sources.kafka_recv` (``recv_into`` 1 MiB instead of ``recv(4096)``); the worker
  reports which receive path its connections actually used;
- ``confluent-kafka``: librdkafka, with ``check.crcs=true`` (librdkafka's default is false; kafka-python
  checks by default), so both clients verify the CRC-32C of every v2 record batch.

With ``decode=True`` each message is also decoded with :func:`avminer.events.codec.decode`, the cost the
mining pipeline adds on top of the fetch (the time inside ``decode`` is reported per message). Rates are timed from just before ``assign`` (connections are
already up: the worker reads the partition offsets first) to the last message, and count value bytes.
Completeness is checked on distinct (partition, offset) pairs read, not on the high watermark: tansu's
can trail the last batch.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avminer.errors import SourceError

KAFKA_PYTHON = "kafka-python"
KAFKA_PYTHON_NO_CRC32C = "kafka-python (no crc32c)"
KAFKA_PYTHON_AVMINER = "kafka-python (avminer)"
KAFKA_PYTHON_AVMINER_RECV = "kafka-python (avminer recv)"
CONFLUENT = "confluent-kafka"
CONFLUENT_MISSING = "confluent-kafka not installed: pip install 'avminer[bench]'"
IDLE_TIMEOUT_S = 30.0
"""A worker gives up when no message arrives for this long (the broker lost them, or is stuck)."""


class IngestBenchError(SourceError):
    """The ingest benchmark could not produce or consume its messages."""


@dataclass
class IngestRow:
    """One client variant's measurement (the best of the repeats), or why it was not measured."""

    client: str
    available: bool
    note: str = ""
    version: str = ""
    crc32c_impl: str = ""  # the CRC-32C function the consumer used, as read back in the worker
    crc32c_native: bool | None = None
    recv_path: str = ""  # kafka-python rows: whose socket read its connections used
    malloc: str = ""  # kafka-python rows: the allocator's thresholds, as the worker set or left them
    checks_crcs: bool | None = None
    decode: bool = False
    messages: int = 0
    bytes: int = 0
    seconds: float = 0.0  # from assign to the last message
    first_message_s: float = 0.0  # from assign to the first message (offset lookup + first fetch)
    decode_us_per_msg: float | None = None  # time inside codec.decode, when decode is on
    cpu_us_per_msg: float = 0.0  # the consumer process's CPU (all its threads) a message, least of the repeats
    msgs_per_s: float = 0.0
    mb_per_s: float = 0.0
    repeats_msgs_per_s: list[float] = field(default_factory=list)


@dataclass
class IngestReport:
    bootstrap: str
    broker: str
    topic: str
    partitions: int
    messages: int
    message_bytes_mean: float
    payload: str
    produce_s: float
    rows: list[IngestRow]
    ratios: dict[str, float]
    kafka_python_config: dict[str, Any] = field(default_factory=dict)  # settings beyond the defaults

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- messages


def build_messages(n: int, message_bytes: int | None = None) -> tuple[list[tuple[bytes, bytes]], str]:
    """``n`` encoded CameraFrame messages as (key, value) pairs, and a description of the payload.

    Args:
        n: number of messages.
        message_bytes: None for the sample drive's CamVid frames (JPEG-bearing, ~48 KB each) repeated
            with distinct frame ids and timestamps; else synthetic frames whose encoded size is this many
            bytes (a random image, the same for every message: the benchmark does not compress).
    """
    from avminer.events import codec
    from avminer.events.records import CameraFrame

    if message_bytes is None:
        from avminer.datasets import sample_drive_path
        from avminer.events.drivelog import read_drive_log

        frames = [r for r in read_drive_log(sample_drive_path()) if isinstance(r, CameraFrame)]
        payload = f"sample drive CameraFrames ({len(frames)} CamVid JPEG frames repeated with distinct ids)"
    else:
        import random

        base = CameraFrame(vehicle_id="bench-0001", camera_id="front", timestamp_us=1_700_000_000_000_000,
                           frame_id="bench", width=480, height=360, image=b"")
        overhead = len(codec.encode(base)) + 8  # + room for longer frame ids and the image length varint
        image = random.Random(0).randbytes(max(0, message_bytes - overhead))
        frames = [dataclasses.replace(base, image=image)]
        payload = f"synthetic CameraFrames ({message_bytes} B, random image)"
    messages = []
    for i in range(n):
        lap, frame = divmod(i, len(frames))
        copy = dataclasses.replace(
            frames[frame], frame_id=f"{frames[frame].frame_id}-r{lap}",
            timestamp_us=frames[frame].timestamp_us + lap * 3_600_000_000,  # an hour per lap: distinct ids
        )
        messages.append((copy.sample_id.encode(), codec.encode(copy)))
    return messages, payload


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], partitions: int) -> float:
    """Create ``topic`` and write ``messages`` round-robin over its partitions; returns seconds taken."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, linger_ms=5, batch_size=1 << 20,
                                 max_request_size=16 << 20)
        started = time.perf_counter()
        try:
            for i, (key, value) in enumerate(messages):
                producer.send(topic, value=value, key=key, partition=i % partitions)
            producer.flush(timeout=120)
        finally:
            producer.close()
    except Exception as exc:  # kafka-python raises many unrelated types for an unreachable broker
        raise IngestBenchError(f"could not write the benchmark messages to {bootstrap} topic {topic}: {exc}; "
                               "is the broker up and does it allow creating topics?") from exc
    return time.perf_counter() - started


def _delete_topic(bootstrap: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            admin.delete_topics([topic])
        finally:
            admin.close()
    except Exception:  # best effort: an external broker may forbid deletes
        pass


# ----------------------------------------------------------------------------------------------- worker


def _crc32c_in_use() -> tuple[str, bool]:
    """The CRC-32C function kafka-python bound at import, and whether it is the C extension."""
    from kafka.record import util

    defaults = util.calc_crc32c.__defaults__
    impl = defaults[0] if defaults else util._crc32c
    native = util.crc32c_c is not None and impl is util.crc32c_c
    return f"{impl.__module__}.{getattr(impl, '__qualname__', impl.__name__)}", native


def _consume_kafka_python(spec: dict[str, Any]) -> dict[str, Any]:
    import kafka
    from kafka import KafkaConsumer, TopicPartition

    impl, native = _crc32c_in_use()
    malloc = "C library defaults (kafka-python's own setup)"
    if spec.get("keep_memory"):
        from avminer.sources.kafka_memory import keep_fetch_memory

        malloc = keep_fetch_memory()
    bulk: dict[str, Any] = {}
    if spec.get("bulk_recv"):
        from avminer.sources.kafka_recv import bulk_recv_settings

        bulk = bulk_recv_settings()
    consumer = KafkaConsumer(bootstrap_servers=spec["bootstrap"], group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", check_crcs=True, **spec.get("config", {}), **bulk)
    try:
        parts = [TopicPartition(spec["topic"], p) for p in range(spec["partitions"])]
        # Connects to the broker before the clock starts (tansu's high watermark can lag: informational).
        high_watermark = sum(consumer.end_offsets(parts).values())
        decode = _Decoder(spec["decode"])
        n = size = 0
        seen: set[tuple[int, int]] = set()
        first_at = 0.0
        started = last = time.perf_counter()
        usage = _Usage()
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        while n < spec["messages"] and time.perf_counter() - last < IDLE_TIMEOUT_S:
            batch = consumer.poll(timeout_ms=1000, max_records=500)
            if not batch:
                continue
            first_at = first_at or time.perf_counter()
            for records in batch.values():
                for record in records:
                    size += len(record.value)
                    seen.add((record.partition, record.offset))
                    decode(record.value)
                n += len(records)
            last = time.perf_counter()
        return {"version": kafka.__version__, "crc32c_impl": impl, "crc32c_native": native,
                "recv_path": _recv_path(consumer), "malloc": malloc, "checks_crcs": bool(consumer.config["check_crcs"]), "high_watermark": high_watermark,
                "config": {key: consumer.config[key] for key in spec.get("config", {})},
                **_counts(n, len(seen), size, started, first_at, last, decode),
                **usage.since()}
    finally:
        consumer.close()


def _recv_path(consumer: Any) -> str:
    """Whose socket read the consumer's open connections use: ``avminer bulk`` or ``kafka-python``."""
    from avminer.sources.kafka_recv import BulkReceiver

    conns = list(consumer._client._manager._conns.values())
    kinds = {"avminer bulk" if isinstance(getattr(getattr(c, "transport", None), "_sock_recv", None), BulkReceiver)
             else "kafka-python" for c in conns if getattr(c, "transport", None) is not None}
    return "+".join(sorted(kinds)) or "no open connection"


def _consume_confluent(spec: dict[str, Any]) -> dict[str, Any]:
    import confluent_kafka
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": spec["bootstrap"], "group.id": f"avminer-bench-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "check.crcs": True,
    })
    try:
        # Connects to the broker before the clock starts (tansu's high watermark can lag: informational).
        high_watermark = sum(consumer.get_watermark_offsets(TopicPartition(spec["topic"], p), timeout=10)[1]
                             for p in range(spec["partitions"]))
        decode = _Decoder(spec["decode"])
        n = size = 0
        seen: set[tuple[int | None, int | None]] = set()
        first_at = 0.0
        started = last = time.perf_counter()
        usage = _Usage()
        consumer.assign([TopicPartition(spec["topic"], p, OFFSET_BEGINNING) for p in range(spec["partitions"])])
        while n < spec["messages"] and time.perf_counter() - last < IDLE_TIMEOUT_S:
            # Wait for one message, then drain what is queued: consume(500, timeout) would wait to fill
            # the batch, whereas kafka-python's poll returns what it has.
            first = consumer.poll(1.0)
            if first is None:
                continue
            messages = [first, *consumer.consume(num_messages=499, timeout=0)]
            first_at = first_at or time.perf_counter()
            for message in messages:
                if message.error():
                    raise IngestBenchError(f"confluent-kafka consume error: {message.error()}")
                value = message.value() or b""
                size += len(value)
                seen.add((message.partition(), message.offset()))
                decode(value)
            n += len(messages)
            last = time.perf_counter()
        return {"version": f"{confluent_kafka.version()[0]} (librdkafka {confluent_kafka.libversion()[0]})",
                "crc32c_impl": "librdkafka (native)", "crc32c_native": True, "checks_crcs": True,
                "high_watermark": high_watermark, **_counts(n, len(seen), size, started, first_at, last, decode),
                **usage.since()}
    finally:
        consumer.close()


class _Decoder:
    """Decodes every value with :func:`avminer.events.codec.decode` when asked, timing only the decode."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.seconds = 0.0
        if enabled:
            from avminer.events.codec import decode

            self._decode = decode

    def __call__(self, value: bytes) -> None:
        if self.enabled:
            started = time.perf_counter()
            self._decode(value)
            self.seconds += time.perf_counter() - started


class _Usage:
    """The process's CPU and minor page faults from construction on (what a consumer loop cost)."""

    def __init__(self) -> None:
        self._cpu, self._start = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)

    def since(self) -> dict[str, float]:
        """``cpu_s`` (user + system), ``user_s``, ``sys_s`` and ``minflt`` spent since construction."""
        now = resource.getrusage(resource.RUSAGE_SELF)
        return {"cpu_s": time.process_time() - self._cpu, "user_s": now.ru_utime - self._start.ru_utime,
                "sys_s": now.ru_stime - self._start.ru_stime, "minflt": now.ru_minflt - self._start.ru_minflt}


def _counts(n: int, distinct: int, size: int, started: float, first_at: float, last: float,
            decode: _Decoder) -> dict[str, Any]:
    return {"messages": n, "distinct": distinct, "bytes": size, "seconds": last - started,
            "first_message_s": first_at - started if first_at else 0.0, "decode_s": decode.seconds}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Consume ``spec["messages"]`` messages with one client variant in this process and report the rate.

    ``spec`` holds bootstrap, topic, partitions, messages, client (``kafka-python`` | ``confluent-kafka``),
    decode (bool), block (module names made unimportable first, e.g. ``["crc32c"]``) and, for kafka-python,
    keep_memory, bulk_recv and config (extra consumer settings). The result carries the counts and the
    loop's CPU (``cpu_s``, ``user_s``, ``sys_s``) and minor page faults (``minflt``).
    """
    for name in spec.get("block", []):
        if name in sys.modules or "kafka" in sys.modules:
            raise IngestBenchError(f"cannot block {name}: it (or kafka) was imported before the worker started")
        sys.modules[name] = None  # type: ignore[assignment]  # documented: makes ``import name`` fail
    if spec["client"] == CONFLUENT:
        return _consume_confluent(spec)
    return _consume_kafka_python(spec)


def _run_worker(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "avminer.evaluation.ingest", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise IngestBenchError(f"{spec['client']} consumer took over {timeout_s:.0f}s; "
                               "use fewer --messages on a slow machine") from exc
    if done.returncode != 0:
        raise IngestBenchError(f"{spec['client']} consumer failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -------------------------------------------------------------------------------------------- the bench


def confluent_available() -> bool:
    """True if confluent-kafka imports (it is an optional, benchmark-only peer: ``avminer[bench]``)."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _broker(bootstrap: str | None, workdir: Path | None) -> Iterator[tuple[str, str]]:
    if bootstrap:
        yield bootstrap, f"external broker at {bootstrap}"
        return
    import tempfile

    from avminer.evaluation.broker import running_tansu

    with tempfile.TemporaryDirectory(prefix="avminer-ingest-") as tmp, running_tansu(workdir or Path(tmp)) as broker:
        yield broker.bootstrap, f"tansu (memory storage) started on {broker.bootstrap}"


def run_ingest_bench(
    bootstrap: str | None = None,
    messages: int = 1000,
    message_bytes: int | None = None,
    partitions: int = 1,
    decode: bool = False,
    repeats: int = 1,
    clients: tuple[str, ...] = (KAFKA_PYTHON, KAFKA_PYTHON_NO_CRC32C, KAFKA_PYTHON_AVMINER, KAFKA_PYTHON_AVMINER_RECV,
                                CONFLUENT),
    workdir: Path | None = None,
    kafka_python_config: dict[str, Any] | None = None,
) -> IngestReport:
    """Produce ``messages`` frames once into a fresh topic, then time each client variant reading all of them.

    Args:
        bootstrap: ``host:port`` of a Kafka broker; None starts a tansu broker on a free loopback port.
        messages: number of messages.
        message_bytes: synthetic message size; None uses the sample drive's CamVid frames (~48 KB).
        partitions: partitions of the topic (messages are spread round-robin).
        decode: also time kafka-python and confluent-kafka decoding every message (extra rows).
        repeats: measure every variant this many times (interleaved) and keep the best rate.
        clients: the variants to run (a subset of the five defaults).
        workdir: where a started broker keeps its log (default: a temporary directory).
        kafka_python_config: extra ``KafkaConsumer`` settings for the kafka-python rows (fetch sizes,
            ``receive_buffer_bytes``...: what the miner's ``kafka.extra`` would pass).

    Raises:
        IngestBenchError: the broker is unreachable, a client did not read every message, or a
            ``kafka_python_config`` key kafka-python does not know.
    """
    if messages < 1 or partitions < 1 or repeats < 1:
        raise IngestBenchError("--messages, --partitions and --repeats must be at least 1")
    consumer_config = check_consumer_config(kafka_python_config or {})
    payloads, payload = build_messages(messages, message_bytes)
    total_bytes = sum(len(v) for _, v in payloads)
    variants: list[tuple[str, bool]] = [(c, False) for c in clients]
    if decode:
        variants += [(c, True) for c in clients if c != KAFKA_PYTHON_NO_CRC32C]
    rows: dict[tuple[str, bool], IngestRow] = {}
    for client, dec in variants:
        if client == CONFLUENT and not confluent_available():
            rows[client, dec] = IngestRow(client, available=False, note=CONFLUENT_MISSING, decode=dec)
        else:
            rows[client, dec] = IngestRow(client, available=True, decode=dec)
    # The pure-Python CRC reads ~2 MB/s on one core: allow for it, and for a loaded machine.
    timeout_s = 120.0 + total_bytes / 0.3e6
    with _broker(bootstrap, workdir) as (server, broker):
        topic = f"avminer-bench-ingest-{uuid.uuid4().hex[:10]}"
        produce_s = produce(server, topic, payloads, partitions)
        del payloads
        try:
            for _ in range(repeats):
                for (client, dec), row in rows.items():
                    if not row.available:
                        continue
                    spec = {"bootstrap": server, "topic": topic, "partitions": partitions, "messages": messages,
                            "client": CONFLUENT if client == CONFLUENT else KAFKA_PYTHON, "decode": dec,
                            "keep_memory": client in (KAFKA_PYTHON_AVMINER, KAFKA_PYTHON_AVMINER_RECV),
                            "bulk_recv": client == KAFKA_PYTHON_AVMINER_RECV,
                            "block": ["crc32c"] if client == KAFKA_PYTHON_NO_CRC32C else [],
                            "config": consumer_config}
                    _record(row, _run_worker(spec, timeout_s), messages, consumer_config)
        finally:
            _delete_topic(server, topic)
    return IngestReport(
        kafka_python_config=consumer_config,
        bootstrap=server, broker=broker, topic=topic, partitions=partitions, messages=messages,
        message_bytes_mean=round(total_bytes / messages, 1), payload=payload, produce_s=round(produce_s, 3),
        rows=list(rows.values()), ratios=_ratios(rows),
    )


_FIXED = frozenset({"bootstrap_servers", "group_id", "enable_auto_commit", "auto_offset_reset", "check_crcs"})


def check_consumer_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` if every key is a ``KafkaConsumer`` setting the bench lets vary.

    Raises:
        IngestBenchError: an unknown key (a typo would otherwise measure the defaults under a new name),
            or one the bench fixes itself (bootstrap, group, commits, offset reset, CRC checks).
    """
    from kafka import KafkaConsumer

    known = set(KafkaConsumer.DEFAULT_CONFIG)
    for key in config:
        if key in _FIXED:
            raise IngestBenchError(f"kafka-python setting {key!r} is fixed by the bench; leave it out")
        if key not in known:
            raise IngestBenchError(f"{key!r} is not a kafka-python KafkaConsumer setting "
                                   "(e.g. fetch_max_bytes, max_partition_fetch_bytes, receive_buffer_bytes)")
    return dict(config)


def _record(row: IngestRow, result: dict[str, Any], expected: int, spec_config: dict[str, Any]) -> None:
    if result["messages"] != expected or result["distinct"] != expected:
        raise IngestBenchError(f"{row.client} read {result['messages']} messages ({result['distinct']} distinct "
                               f"offsets) of the {expected} written; the broker lost or withheld messages")
    if "config" in result and result["config"] != spec_config:
        raise IngestBenchError(f"{row.client} ran with {result['config']}, not the asked {spec_config}")
    rate = result["messages"] / result["seconds"] if result["seconds"] > 0 else float("inf")
    row.repeats_msgs_per_s.append(round(rate, 1))
    row.version, row.crc32c_impl = result["version"], result["crc32c_impl"]
    row.crc32c_native, row.checks_crcs = result["crc32c_native"], result["checks_crcs"]
    row.recv_path, row.malloc = result.get("recv_path", ""), result.get("malloc", "")
    cpu_us = round(1e6 * result["cpu_s"] / max(1, result["messages"]), 1)
    row.cpu_us_per_msg = min(row.cpu_us_per_msg or cpu_us, cpu_us)
    if rate >= row.msgs_per_s:
        row.messages, row.bytes, row.seconds = result["messages"], result["bytes"], round(result["seconds"], 4)
        row.first_message_s = round(result["first_message_s"], 4)
        if row.decode:
            row.decode_us_per_msg = round(1e6 * result["decode_s"] / result["messages"], 1)
        row.msgs_per_s = round(rate, 1)
        row.mb_per_s = round(result["bytes"] / result["seconds"] / 1e6, 2) if result["seconds"] > 0 else 0.0


def _ratios(rows: dict[tuple[str, bool], IngestRow]) -> dict[str, float]:
    def rate(client: str, decode: bool = False) -> float:
        row = rows.get((client, decode))
        return row.msgs_per_s if row is not None and row.available and row.msgs_per_s > 0 else 0.0

    ratios: dict[str, float] = {}
    if rate(KAFKA_PYTHON) and rate(KAFKA_PYTHON_NO_CRC32C):
        ratios["kafka_python_crc32c_over_no_crc32c"] = round(rate(KAFKA_PYTHON) / rate(KAFKA_PYTHON_NO_CRC32C), 2)
    for dec, suffix in ((False, ""), (True, "_decode")):
        if rate(KAFKA_PYTHON, dec) and rate(CONFLUENT, dec):
            ratios[f"kafka_python_over_confluent{suffix}"] = round(rate(KAFKA_PYTHON, dec) / rate(CONFLUENT, dec), 3)
    for client, name in ((KAFKA_PYTHON_AVMINER, "avminer"), (KAFKA_PYTHON_AVMINER_RECV, "avminer_recv")):
        for dec, suffix in ((False, ""), (True, "_decode")):
            if rate(client, dec) and rate(CONFLUENT, dec):
                ratios[f"kafka_python_{name}_over_confluent{suffix}"] = round(rate(client, dec) / rate(CONFLUENT, dec), 3)
        if rate(client) and rate(KAFKA_PYTHON):
            ratios[f"{name}_over_kafka_python"] = round(rate(client) / rate(KAFKA_PYTHON), 3)
    for client in (KAFKA_PYTHON, CONFLUENT):
        if rate(client) and rate(client, True):
            ratios[f"{client.replace('-', '_')}_decode_over_plain"] = round(rate(client, True) / rate(client), 3)
    return ratios


def format_report(report: IngestReport) -> str:
    """The report as a text table followed by the ratios."""
    lines = [
        f"{report.messages} messages x {report.message_bytes_mean / 1e3:.1f} KB ({report.payload}), "
        f"{report.partitions} partition(s), {report.broker}; produced in {report.produce_s:.2f}s",
        *([f"kafka-python settings: {report.kafka_python_config}"] if report.kafka_python_config else []),
        f"{'client':28s} {'decode':6s} {'CRC-32C':34s} {'msgs/s':>9s} {'MB/s':>8s} {'seconds':>8s} {'1st msg s':>9s} {'decode us/msg':>13s} {'CPU us/msg':>10s}",
    ]
    for row in report.rows:
        dec = "yes" if row.decode else "no"
        if not row.available:
            lines.append(f"{row.client:28s} {dec:6s} {row.note}")
            continue
        crc = row.crc32c_impl + ("" if row.checks_crcs else " (not checked)")
        decode_us = "" if row.decode_us_per_msg is None else f"{row.decode_us_per_msg:.1f}"
        lines.append(f"{row.client:28s} {dec:6s} {crc:34s} {row.msgs_per_s:9.1f} {row.mb_per_s:8.2f} "
                     f"{row.seconds:8.3f} {row.first_message_s:9.3f} {decode_us:>13s} {row.cpu_us_per_msg:10.1f}")
    for row in report.rows:
        if row.available and not row.decode and row.client != CONFLUENT:
            lines.append(f"{row.client}: malloc {row.malloc}; socket read by {row.recv_path}")
    labels = {
        "kafka_python_crc32c_over_no_crc32c": "kafka-python with crc32c / without",
        "kafka_python_over_confluent": "kafka-python / confluent-kafka",
        "kafka_python_avminer_over_confluent": "kafka-python as avminer runs it / confluent-kafka",
        "kafka_python_avminer_recv_over_confluent": "kafka-python as avminer runs it, with bulk_recv / confluent-kafka",
    }
    for key, value in report.ratios.items():
        lines.append(f"{labels.get(key, key.replace('_', ' '))}: {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
