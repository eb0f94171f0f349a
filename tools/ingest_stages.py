"""Where a Kafka consumer's CPU goes per message: kafka-python's consume path timed stage by stage.

    .venv/bin/python tools/ingest_stages.py [--messages 2000] [--rounds 15]

Starts tansu, writes ``--messages`` sample-drive CameraFrames (48.6 KB each) with the bench's producer
(:func:`avminer.evaluation.ingest.produce`), and captures the raw bytes of one fetch response (tansu
answers with ~6 MB, ~125 frames). Then, in a fresh process with glibc's default malloc thresholds and
in one with avminer's (:func:`avminer.sources.kafka_memory.keep_fetch_memory`), it replays that response
through each stage of kafka-python 3.0's own code, on one thread, ``--rounds`` times, and prints the
median CPU time (user + system, ``CLOCK_THREAD_CPUTIME_ID``) and minor page faults of each stage per
message:

- ``socket read``: the response written into a socket pair by another thread and read by kafka-python's
  ``KafkaTCPTransport._sock_recv`` (``recv(4096)`` and a join), or by avminer's ``BulkReceiver``;
- ``frame``: ``KafkaProtocol.receive_bytes`` (a zero-filled frame buffer, the copy into it, and
  ``FetchResponse`` decoding, which copies the records out);
- ``batches + CRC``: ``MemoryRecords`` -> ``DefaultRecordBatch`` (one more copy) and its CRC-32C check;
- ``records``: the Fetcher's ``PartitionRecords`` (per record: varints, value slice, ``ConsumerRecord``),
  minus the batch stage it includes;
- ``SourceMessage``: avminer's wrapper per record (:meth:`avminer.sources.kafka.KafkaSource.poll`);
- ``codec.decode``: avminer's decoding of the frame.

Last, each client reads all the messages end to end in a fresh process (kafka-python with both malloc
settings and confluent-kafka) and the tool prints the process's CPU per message, user and system apart,
and its page faults: what the stages do not cover (kafka-python's IO thread hand-off, selector and
fetch bookkeeping) is the difference. Private kafka-python names are used here to reach each stage;
this is a measuring tool for kafka-python 3.0.x, not product code.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TOPIC = "stages"


def _fetch_request(topic: str) -> Any:
    from kafka.protocol.consumer import FetchRequest

    part = FetchRequest.FetchTopic.FetchPartition(partition=0, current_leader_epoch=-1, fetch_offset=0,
                                                  last_fetched_epoch=-1, partition_max_bytes=1 << 20)
    request = FetchRequest(max_wait_ms=500, min_bytes=1, max_bytes=50 << 20, isolation_level=0, session_id=0,
                           session_epoch=-1, topics=[FetchRequest.FetchTopic(topic=topic, partitions=[part])],
                           forgotten_topics_data=[], rack_id="", min_version=4, max_version=12)
    request.API_VERSION = 11  # what kafka-python 3.0.12 negotiates with tansu
    return request


def capture(bootstrap: str, topic: str) -> bytes:
    """The raw bytes (size prefix included) of one fetch response for ``topic`` partition 0 from offset 0."""
    from kafka.protocol.parser import KafkaProtocol

    protocol = KafkaProtocol(client_id="avminer-stages")
    protocol.send_request(_fetch_request(topic))
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(protocol.send_bytes())
        raw = bytearray()
        while len(raw) < 4 or len(raw) < 4 + struct.unpack(">i", raw[:4])[0]:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the broker closed the connection before the fetch response was complete")
            raw += chunk
    return bytes(raw)


class _Transport:
    """What kafka-python's ``_sock_recv`` and avminer's ``BulkReceiver`` read of a transport."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock


def _thread_usage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return time.thread_time(), usage.ru_minflt


def _timed(fn: Any, *args: Any) -> tuple[Any, float, int]:
    cpu, faults = _thread_usage()
    out = fn(*args)
    cpu2, faults2 = _thread_usage()
    return out, cpu2 - cpu, faults2 - faults


def _read_socket(raw: bytes, receive: Any) -> tuple[float, int]:
    """CPU and faults of the reading thread while ``raw`` goes through a socket pair and ``receive`` reads it."""
    import selectors

    a, b = socket.socketpair()
    a.setblocking(False)
    sender = threading.Thread(target=b.sendall, args=(raw,))
    cpu = faults = 0.0
    got = 0
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sender.start()
            transport = _Transport(a)
            reader = receive(transport)
            while got < len(raw):
                sel.select(timeout=10)
                (data, err), dt, df = _timed(reader)
                if err is not None:
                    raise RuntimeError(f"socket read failed: {err}")
                cpu, faults, got = cpu + dt, faults + df, got + len(data)
            sender.join()
    finally:
        a.close()
        b.close()
    return cpu, int(faults)


def _check_batches(records: bytes) -> int:
    """kafka-python's record batches of ``records``, each CRC-checked (what the Fetcher does first)."""
    from kafka.record import MemoryRecords

    memory, count = MemoryRecords(records), 0
    batch = memory.next_batch()
    while batch is not None:
        if not batch.validate_crc():
            raise RuntimeError("CRC mismatch in a captured batch")
        count += 1
        batch = memory.next_batch()
    return count


def _consumer_records(tp: Any, records: bytes) -> list[Any]:
    """The ConsumerRecords kafka-python's Fetcher makes of ``records`` (CRC checks on)."""
    from kafka.consumer.fetcher import Fetcher
    from kafka.record import MemoryRecords

    return list(Fetcher.PartitionRecords(0, tp, MemoryRecords(records), check_crcs=True).take())


def _source_messages(records: list[Any]) -> list[Any]:
    """avminer's wrapper of each record, as :meth:`avminer.sources.kafka.KafkaSource.poll` builds it."""
    from avminer.sources.kafka import source_message

    return [source_message(r) for r in records]


def _decode_all(messages: list[Any]) -> list[Any]:
    from avminer.events.codec import decode

    return [decode(m.value) for m in messages]


def stages(raw: bytes, rounds: int, keep: bool) -> dict[str, Any]:
    """Median CPU µs and page faults per message of each stage, replaying ``raw`` ``rounds`` times."""
    from kafka.net.transport import KafkaTCPTransport
    from kafka.protocol.parser import KafkaProtocol
    from kafka.structs import TopicPartition

    from avminer.sources.kafka_memory import keep_fetch_memory
    from avminer.sources.kafka_recv import BulkReceiver

    malloc = keep_fetch_memory() if keep else "glibc defaults"
    tp = TopicPartition(TOPIC, 0)
    samples: dict[str, list[tuple[float, int]]] = {}
    n = 0

    def add(stage: str, cpu: float, faults: int) -> None:
        samples.setdefault(stage, []).append((cpu, faults))

    for _ in range(rounds):
        add("socket read (kafka-python recv(4096) + join)",
            *_read_socket(raw, lambda t: lambda: KafkaTCPTransport._sock_recv(t)))
        add("socket read (avminer BulkReceiver, 1 MiB recv_into)", *_read_socket(raw, BulkReceiver))

        protocol = KafkaProtocol(client_id="avminer-stages")
        protocol.send_request(_fetch_request(TOPIC))
        responses, cpu, faults = _timed(protocol.receive_bytes, raw)
        add("frame (KafkaProtocol.receive_bytes + FetchResponse decode)", cpu, faults)
        records = responses[0][1].responses[0].partitions[0].records
        _, batch_cpu, batch_faults = _timed(_check_batches, records)
        add("batches + CRC-32C (DefaultRecordBatch copy, crc32c)", batch_cpu, batch_faults)
        consumer_records, cpu, faults = _timed(_consumer_records, tp, records)
        add("records (varints, value slice, ConsumerRecord)", cpu - batch_cpu, faults - batch_faults)
        n = len(consumer_records)
        messages, cpu, faults = _timed(_source_messages, consumer_records)
        add("avminer SourceMessage", cpu, faults)
        _, cpu, faults = _timed(_decode_all, messages)
        add("avminer codec.decode", cpu, faults)
    return {"malloc": malloc, "messages_per_fetch": n, "response_bytes": len(raw), "stages": {
        stage: {"cpu_us_per_msg": round(1e6 * statistics.median(c for c, _ in vals) / n, 1),
                "faults_per_msg": round(statistics.median(f for _, f in vals) / n, 1)}
        for stage, vals in samples.items()}}


def end_to_end(bootstrap: str, messages: int, client: str, keep: bool) -> dict[str, Any]:
    """One client reading every message once in a fresh process, through the ingest bench's own worker
    (:func:`avminer.evaluation.ingest.worker`): rate, CPU (user, system) and page faults a message."""
    from avminer.evaluation.ingest import _run_worker

    spec = {"bootstrap": bootstrap, "topic": TOPIC, "partitions": 1, "messages": messages, "client": client,
            "decode": False, "keep_memory": keep, "bulk_recv": False, "block": [], "config": {}}
    result = _run_worker(spec, timeout_s=600)
    n = result["messages"]
    return {"client": client, "malloc": "kept" if keep else "defaults", "msgs_per_s": round(n / result["seconds"], 1),
            "user_us_per_msg": round(1e6 * result["user_s"] / n, 1),
            "sys_us_per_msg": round(1e6 * result["sys_s"] / n, 1),
            "faults_per_msg": round(result["minflt"] / n, 1)}


def _child(args: list[str], payload: bytes | None = None) -> Any:
    done = subprocess.run([sys.executable, __file__, *args], input=payload, capture_output=True, timeout=600,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{done.stderr.decode()[-3000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    from avminer.evaluation.broker import running_tansu
    from avminer.evaluation.ingest import build_messages, produce

    with tempfile.TemporaryDirectory(prefix="avminer-stages-") as tmp, running_tansu(Path(tmp)) as broker:
        produce(broker.bootstrap, TOPIC, build_messages(args.messages)[0], 1)
        raw = capture(broker.bootstrap, TOPIC)
        for keep in (False, True):
            report = _child(["stages", str(args.rounds), str(int(keep))], raw)
            print(f"\nkafka-python stages, malloc {report['malloc']}: one {report['response_bytes'] / 1e6:.1f} MB "
                  f"fetch response, {report['messages_per_fetch']} messages, median of {args.rounds} rounds")
            for stage, figures in report["stages"].items():
                print(f"  {stage:60s} {figures['cpu_us_per_msg']:7.1f} us/msg {figures['faults_per_msg']:6.1f} faults/msg")
        print(f"\nend to end, {args.messages} messages, one process each:")
        for client, keep in (("kafka-python", False), ("kafka-python", True), ("confluent-kafka", False)):
            row = end_to_end(broker.bootstrap, args.messages, client, keep)
            print(f"  {row['client']:16s} malloc {row['malloc']:8s} {row['msgs_per_s']:8.0f} msgs/s  CPU user "
                  f"{row['user_us_per_msg']:6.1f} + sys {row['sys_us_per_msg']:6.1f} us/msg  "
                  f"{row['faults_per_msg']:5.1f} faults/msg")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "stages":
        print(json.dumps(stages(sys.stdin.buffer.read(), int(sys.argv[2]), bool(int(sys.argv[3])))))
    else:
        sys.exit(main())
