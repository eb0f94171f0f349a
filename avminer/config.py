"""The one typed settings object for every avminer process.

Built in one place — :func:`load_settings` — from, in increasing precedence: the defaults declared
below, one YAML file (``yaml.safe_load``), and ``AVMINER_*`` environment variables. Environment keys
name a field by its dotted path with ``__`` between levels: ``AVMINER_KAFKA__BOOTSTRAP_SERVERS``,
``AVMINER_SELECTION__TARGET_RATE``. This is the only module that reads the environment.

Every field is documented where it is declared (``metadata={"help": ...}``); ``avminer config show``
prints them. Secrets are :class:`Secret` values and never printed.

A bad value raises :class:`~avminer.errors.ConfigError` naming the field, e.g.
``selection.target_rate: must be in (0, 1], got 2.0``.

Why one module of ~500 lines: the settings are one object built in one place, and each field's meaning
sits on the line that declares it; split by section, a field's default, help and check would live apart.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from avminer.errors import ConfigError

ENV_PREFIX = "AVMINER_"


class Secret:
    """A string that is never shown in reprs, logs or ``as_dict`` output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the plaintext value (only where it is handed to a client library)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class KafkaSettings:
    bootstrap_servers: str | None = field(
        default=None,
        metadata=_help("Comma-separated host:port list. Unset means embedded mode (drive log in, local dir out)."),
    )
    group_id: str = field(default="avminer-miners", metadata=_help("Consumer group shared by all miners."))
    client_id: str = field(default="avminer", metadata=_help("Kafka client id prefix."))
    security_protocol: str = field(
        default="PLAINTEXT", metadata=_help("PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (passed to kafka-python).")
    )
    sasl_mechanism: str | None = field(default=None, metadata=_help("PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ..."))
    sasl_plain_username: str | None = field(default=None, metadata=_help("SASL username."))
    sasl_plain_password: Secret | None = field(default=None, metadata=_help("SASL password (secret)."))
    ssl_cafile: str | None = field(default=None, metadata=_help("CA bundle for TLS."))
    ssl_certfile: str | None = field(default=None, metadata=_help("Client certificate for mutual TLS."))
    ssl_keyfile: str | None = field(default=None, metadata=_help("Client key for mutual TLS."))
    ssl_password: Secret | None = field(
        default=None, metadata=_help("Password of an encrypted ssl_keyfile (secret).")
    )
    max_poll_interval_ms: int = field(
        default=10000,
        metadata=_help(
            "Rebalance timeout. The poll thread never blocks on inference, so this can stay short;"
            " short values also make group joins fast."
        ),
    )
    session_timeout_ms: int = field(default=10000, metadata=_help("Group session timeout."))
    heartbeat_interval_ms: int = field(default=3000, metadata=_help("Group heartbeat interval."))
    max_poll_records: int = field(default=500, metadata=_help("Records fetched per poll."))
    commit_interval_ms: int = field(
        default=1000,
        metadata=_help("How often the miner commits the done prefix of its offsets (also on revocation and exit)."),
    )
    bulk_recv: bool = field(
        default=False,
        metadata=_help(
            "Consumers read the socket 1 MiB at a time (avminer.sources.kafka_recv; kafka-python 3.0.x only)"
            " instead of kafka-python's 4 KiB loop: ~20 us less CPU a message on a loaded 2-core box (with"
            " keep_fetch_memory), none on an idle one before fetch memory was kept (README, Ingest), so off"
            " unless measured to help on the node."
        ),
    )
    keep_fetch_memory: bool = field(
        default=True,
        metadata=_help(
            "A process with a Kafka consumer keeps freed fetch buffers for the next fetch (glibc's malloc"
            " thresholds, avminer.sources.kafka_memory): without it kafka-python's multi-megabyte buffers"
            " are page-faulted back in every fetch, ~2/3 of its CPU a message (README, Ingest). Costs up to"
            " 64 MiB of unused memory kept per malloc arena."
        ),
    )
    extra: dict[str, Any] = field(
        default_factory=dict, metadata=_help("Any other kafka-python client settings, passed through as-is.")
    )

    def client_kwargs(self) -> dict[str, Any]:
        """Connection and security settings for any kafka-python client (plaintext secrets)."""
        if not self.bootstrap_servers:
            raise ConfigError("is not set; a Kafka client needs a broker", "kafka.bootstrap_servers")
        kw: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        for name in ("sasl_mechanism", "sasl_plain_username", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                kw[name] = value
        for name in ("sasl_plain_password", "ssl_password"):
            secret = getattr(self, name)
            if secret is not None:
                kw[name] = secret.get()
        kw.update(self.extra)
        return kw


@dataclass
class TopicSettings:
    frames: str = field(default="avminer.frames", metadata=_help("Camera frames in (CameraFrame)."))
    radar: str = field(default="avminer.radar", metadata=_help("Radar scans in (RadarScan)."))
    decisions: str = field(default="avminer.decisions", metadata=_help("One Decision per frame out."))
    label_requests: str = field(default="avminer.label-requests", metadata=_help("LabelRequest out."))
    label_results: str = field(default="avminer.label-results", metadata=_help("LabelResult in (labels back)."))
    releases: str = field(default="avminer.releases", metadata=_help("ModelRelease announcements."))
    dead_letter: str = field(default="avminer.dead-letter", metadata=_help("Poison input with its reason."))
    sketches: str = field(
        default="avminer.sketches", metadata=_help("Compacted topic of per-miner per-slice quantile sketches.")
    )


@dataclass
class SourceSettings:
    drive_log: str | None = field(
        default=None,
        metadata=_help("Drive log to mine in embedded mode. Unset: the bundled sample drive."),
    )
    radar_join_window_ms: int = field(
        default=100, metadata=_help("A radar scan joins a camera frame of the same vehicle within this window.")
    )
    radar_wait_ms: int = field(
        default=50, metadata=_help("How long a frame waits for late radar before it goes on without.")
    )


@dataclass
class DecodeSettings:
    max_bytes: int = field(default=8 * 1024 * 1024, metadata=_help("Largest encoded image accepted."))
    max_pixels: int = field(default=4096 * 4096, metadata=_help("Largest decoded image (width*height) accepted."))
    workers: int = field(default=1, metadata=_help("Decode threads."))
    image_roots: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Directories a frame's file:// image_uri may point under (symlinks resolved). Empty: file:// image"
            " URIs are dead-lettered; anything else named by a message is never read."
        ),
    )


@dataclass
class BatcherSettings:
    max_batch: int = field(default=8, metadata=_help("Frames per engine batch at most."))
    max_wait_ms: int = field(default=20, metadata=_help("Longest a partial batch waits for more frames."))
    queue_size: int = field(
        default=64, metadata=_help("Bound of every stage queue; a full queue pauses the Kafka partitions.")
    )
    stage_nice: int = field(
        default=0,
        metadata=_help(
            "Niceness added to the decode, scoring and sink threads (Linux) so they fill the engine's idle"
            " cycles instead of preempting its threads; only on a box the miner has to itself (it starves"
            " them when other processes compete). 0: every stage at the process's priority."
        ),
    )
    heap_keep_mb: int = field(
        default=64,
        metadata=_help(
            "glibc only: blocks up to 32 MB (frames, batches, engine outputs) come from the heap, and up to this"
            " many MB of freed heap stay mapped, so the next frame reuses them instead of faulting in fresh"
            " pages (measured: the batch stack 135 -> 53 µs a frame on a VM). 0: the C library's defaults."
        ),
    )


@dataclass
class EngineSettings:
    bundle: str | None = field(default=None, metadata=_help("Model bundle directory. Unset: the starter bundle."))
    backend: str = field(
        default="auto",
        metadata=_help("auto, onnxruntime, torch, tensorrt or null (precomputed outputs: benchmarks the plumbing)."
                       " auto: TensorRT on a GPU, else ORT."),
    )
    threads: int = field(default=0, metadata=_help("Intra-op CPU threads (0: library default)."))
    device: str = field(default="cpu", metadata=_help("cpu or cuda[:N] for the torch and TensorRT backends."))
    precision: str | None = field(
        default=None, metadata=_help("torch backend: fp32, fp16 or bf16 (unset: fp16 on CUDA, fp32 on the CPU).")
    )
    compile: str = field(
        default="auto",
        metadata=_help("torch backend: torch.compile at load: on, off, or auto (on for CUDA; eager if it fails)."),
    )
    mc_dropout_samples: int = field(
        default=0,
        metadata=_help("torch backend: > 0 scores by Monte-Carlo dropout (T passes of the first member; MI becomes"
                       " BALD) instead of the ensemble: the `bald` baseline of `avminer backtest`. 0: off."),
    )
    cache_dir: str = field(
        default="~/.cache/avminer/bundles", metadata=_help("Where released bundles are downloaded to.")
    )


@dataclass
class ScoringSettings:
    aggregation: str = field(
        default="topk", metadata=_help("Pixel-to-frame pooling: mean, topk or grid (max over grid cells).")
    )
    topk_fraction: float = field(default=0.05, metadata=_help("Fraction of pixels averaged by topk pooling."))
    map_stride: int = field(
        default=2,
        metadata=_help(
            "Pixel stride of the uncertainty maps (1: every pixel). 2 scores a quarter of the pixels: frame"
            " scores barely move and scoring stops competing with the engine for the CPU."
        ),
    )
    grid: int = field(default=4, metadata=_help("Grid cells per side for grid pooling."))
    rare_class_weight: float = field(
        default=3.0,
        metadata=_help("Weight w of pedestrian, bicyclist and sign pixels in the mi score: a pixel's MI counts"
                       " 1 + (w - 1) * (ensemble probability of those classes) times."),
    )
    drift_window: int = field(default=200, metadata=_help("Frames per slice in the drift statistic's window."))
    drift_alarm: float = field(default=3.0, metadata=_help("Drift statistic (z-score) that raises the alarm."))
    regions: dict[str, list[float]] = field(
        default_factory=dict,
        metadata=_help("Named regions as [lat_min, lon_min, lat_max, lon_max]; else a geohash prefix is used."),
    )
    geohash_precision: int = field(default=4, metadata=_help("Geohash prefix length when no region matches."))


SELECTION_POLICIES = ("full", "adaptive", "adaptive_mi", "random", "entropy", "mi", "bald")
"""Names ``selection.policy`` accepts (built by :func:`avminer.selection.registry.make_policy`)."""


@dataclass
class SelectionSettings:
    policy: str = field(
        default="full",
        metadata=_help(
            "Selection policy: full (MI and shift ranked fleet-wide, a budget per frame seen with catch-up),"
            " adaptive (pooled shift, a rate per distinct frame), adaptive_mi (adaptive, MI pooled too), or a"
            " baseline: random, entropy, mi."
        ),
    )
    seed: int = field(default=0, metadata=_help("Seed of the random baseline's draws."))
    target_rate: float = field(
        default=0.001,
        metadata=_help(
            "Fraction of frames mined, counted over frames seen (repeats too). The full policy spends it where"
            " the priorities are highest: a slice's rate is the share of the pooled ranking its frames must beat."
        ),
    )
    slice_rates: dict[str, float] = field(
        default_factory=lambda: {"dusk/*/*": 0.005, "night/*/*": 0.005, "*/fog/*": 0.005, "*/rain/*": 0.005,
                                 "*/snow/*": 0.005},
        metadata=_help(
            "Per-slice overrides, key 'time_of_day/weather/region' with * wildcards, e.g. 'dusk/*/*'. An exact key"
            " wins (it may lower a rate); else the highest of target_rate and the matching patterns' rates"
            " (rare conditions are mined more)."
        ),
    )
    score_weights: dict[str, float] = field(
        default_factory=lambda: {"mi": 1.0, "shift": 1.0, "radar": 1.0, "novelty": 0.5},
        metadata=_help(
            "Weight of each component (mi, shift, radar, novelty) in the priority: max(w_mi*s_mi + w_shift*s_shift,"
            " w_radar*s_radar, w_novelty*s_novelty) of their tail surprises, -log10 of the fraction of frames"
            " scoring higher (mi, shift fleet-wide, radar, novelty per slice). 0 disables one."
        ),
    )
    quality_weight: float = field(
        default=1.0,
        metadata=_help(
            "Weight of the release's measured per-condition quality (its gates' mIoU, shipped in the bundle) in"
            " the full policy's priority: a condition at half the fleet's mIoU ranks its frames as if each were"
            " 2**weight times rarer. 0 disables it."
        ),
    )
    hourly_budget: int = field(default=1000, metadata=_help("Mined frames per slice per hour at most."))
    camera_cooldown_s: float = field(default=2.0, metadata=_help("Seconds between two mined frames of one camera."))
    duplicate_similarity: float = field(
        default=0.97, metadata=_help("Cosine similarity above which a frame counts as a near-duplicate.")
    )
    memory_size: int = field(default=2048, metadata=_help("Recently mined embeddings kept for duplicate checks."))
    warmup_frames: int = field(
        default=200,
        metadata=_help(
            "Frames seen (every slice, repeats included; at least 20 of them distinct) before the policy's own"
            " thresholds are trusted; until then the fleet's pooled statistics stand in, or nothing is mined."
        ),
    )
    rank_window: int = field(
        default=4096,
        metadata=_help(
            "Recent distinct frames whose priorities, re-scored against the current sketches, set the full"
            " policy's threshold (its budget is a fraction of them); a new model starts a new window."
        ),
    )
    fleet_sketches: bool = field(
        default=True, metadata=_help("Publish and merge per-slice sketches over Kafka for fleet-wide thresholds.")
    )
    sketch_publish_interval_s: float = field(
        default=30.0, metadata=_help("Seconds between two publications of this miner's sketches to the fleet topic.")
    )


@dataclass
class S3Settings:
    endpoint_url: str | None = field(default=None, metadata=_help("S3 endpoint; unset: frames stay local."))
    bucket: str = field(default="avminer", metadata=_help("Bucket for frames and model bundles."))
    prefix: str = field(default="frames/", metadata=_help("Key prefix for mined frames."))
    region: str = field(default="us-east-1", metadata=_help("Region name passed to boto3."))
    access_key_id: str | None = field(default=None, metadata=_help("Access key id (else boto3's own chain)."))
    secret_access_key: Secret | None = field(default=None, metadata=_help("Secret access key (secret)."))
    max_retries: int = field(default=5, metadata=_help("Retries with exponential backoff per upload."))


@dataclass
class SinkSettings:
    output_dir: str = field(
        default="avminer-out", metadata=_help("Local directory sink (embedded mode): frames, requests, decisions.")
    )
    catalog_url: str | None = field(
        default=None,
        metadata=_help("sqlite:///path or postgresql://... Unset: sqlite in output_dir."),
    )
    s3: S3Settings = field(default_factory=S3Settings)
    queues: str = field(
        default="auto",
        metadata=_help("Where label requests and decisions go: auto (Kafka topics with a broker, else JSONL in "
                       "output_dir), kafka, local, or another sink of avminer.sinks.registry."),
    )
    api_address: str = field(
        default="127.0.0.1", metadata=_help("Address the datasets HTTP API binds to (loopback unless you mean it).")
    )
    api_port: int = field(default=8710, metadata=_help("Port of the datasets HTTP API (`avminer catalog serve`)."))
    api_token: Secret | None = field(
        default=None,
        metadata=_help("Bearer token the datasets API requires (secret); mandatory when api_address is not loopback."),
    )
    api_allowed_hosts: list[str] = field(
        default_factory=list,
        metadata=_help("Host names (besides localhost) the API answers to on loopback, e.g. a reverse proxy's."),
    )


@dataclass
class MetricsSettings:
    address: str = field(default="127.0.0.1", metadata=_help("Address the /metrics endpoint binds to."))
    port: int = field(default=9464, metadata=_help("Port of the /metrics endpoint; 0 disables it."))


@dataclass
class TrainerSettings:
    members: int = field(default=4, metadata=_help("Ensemble size K (Deep Probabilistic Ensembles)."))
    width: float = field(default=0.25, metadata=_help("Width multiplier of the ERFNet-style members."))
    input_height: int = field(default=176, metadata=_help("Training/inference input height."))
    input_width: int = field(default=240, metadata=_help("Training/inference input width."))
    epochs: int = field(default=30, metadata=_help("Epochs per (re)training run."))
    batch_size: int = field(default=8, metadata=_help("Frames per optimisation step."))
    lr: float = field(default=2e-3, metadata=_help("Adam learning rate."))
    dpe_beta: float = field(default=1e-5, metadata=_help("Weight of the DPE KL regulariser."))
    gate_margin: float = field(
        default=0.02, metadata=_help("A release is refused if any slice's mIoU drops more than this.")
    )
    retrain_every_labels: int = field(default=200, metadata=_help("Retrain after this many new labels."))
    retrain_interval_s: float = field(default=86400.0, metadata=_help("Retrain at least this often (seconds)."))
    work_dir: str = field(default="avminer-train", metadata=_help("Checkpoints and candidate bundles."))
    synth_mix: dict[str, float] = field(
        default_factory=lambda: {"fog": 0.05, "dusk": 0.2, "night": 0.05, "rain": 0.05, "appearance": 0.1,
                                 "target_style": 0.1},
        metadata=_help("Adaptation (train run --adapt synth): share of training frames rendered in each synthetic"
                       " condition (fog, dusk, night, rain, appearance, target_style: see avminer.trainer.synth);"
                       " each in [0, 1], sum <= 1, the rest stay clear."),
    )


@dataclass
class LabelStudioSettings:
    url: str | None = field(
        default=None, metadata=_help("Label Studio base URL (http://host:8080); unset: no live Label Studio.")
    )
    token: Secret | None = field(
        default=None, metadata=_help("Label Studio personal access token or legacy API token (secret).")
    )
    project: str = field(default="avminer", metadata=_help("Title of the project mined frames are pushed to."))
    presign_s: int = field(
        default=7 * 86400, metadata=_help("Lifetime of presigned s3:// frame URLs in pushed tasks (seconds).")
    )
    local_files_root: str | None = field(
        default=None,
        metadata=_help("Label Studio's LOCAL_FILES_DOCUMENT_ROOT: file:// frames under it become local-files URLs."),
    )
    ml_backend_address: str = field(
        default="127.0.0.1", metadata=_help("Address `avminer label ml-backend` binds to (loopback unless you mean it).")
    )
    ml_backend_port: int = field(default=9090, metadata=_help("Port of `avminer label ml-backend`."))
    ml_backend_secret: Secret | None = field(
        default=None,
        metadata=_help("Password Label Studio must send (HTTP Basic) to the ML backend; unset: none (secret)."),
    )


@dataclass
class Settings:
    """Everything an avminer process can be configured with."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    source: SourceSettings = field(default_factory=SourceSettings)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    batcher: BatcherSettings = field(default_factory=BatcherSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    sinks: SinkSettings = field(default_factory=SinkSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    labelstudio: LabelStudioSettings = field(default_factory=LabelStudioSettings)
    shutdown_deadline_s: float = field(
        default=30.0, metadata=_help("On SIGTERM/SIGINT: stop polling, drain, commit, close within this.")
    )
    log_level: str = field(default="INFO", metadata=_help("Python logging level."))

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: read a drive log, write to a local directory."""
        return not self.kafka.bootstrap_servers

    def as_dict(self, plaintext_secrets: bool = False) -> dict[str, Any]:
        """Plain nested dict of the settings; secrets masked unless ``plaintext_secrets``."""
        out: dict[str, Any] = _to_dict(self, plaintext_secrets)
        return out

    def validate(self) -> Settings:
        """Check cross-field constraints; raise :class:`ConfigError` naming the field."""
        checks: list[tuple[bool, str, str]] = [
            (0 < self.selection.target_rate <= 1, "selection.target_rate", "must be in (0, 1]"),
            (self.selection.policy in SELECTION_POLICIES, "selection.policy",
             f"must be one of {', '.join(SELECTION_POLICIES)}"),
            (self.selection.quality_weight >= 0, "selection.quality_weight", "must be >= 0"),
            (self.batcher.max_batch >= 1, "batcher.max_batch", "must be >= 1"),
            (self.batcher.max_wait_ms >= 0, "batcher.max_wait_ms", "must be >= 0"),
            (self.batcher.queue_size >= 1, "batcher.queue_size", "must be >= 1"),
            (self.decode.max_bytes > 0, "decode.max_bytes", "must be > 0"),
            (self.decode.max_pixels > 0, "decode.max_pixels", "must be > 0"),
            (self.engine.backend in {"auto", "onnxruntime", "torch", "tensorrt", "null"}, "engine.backend",
             "must be one of auto, onnxruntime, torch, tensorrt, null"),
            (self.engine.precision in {None, "fp32", "fp16", "bf16"}, "engine.precision",
             "must be fp32, fp16 or bf16 (or unset)"),
            (self.engine.compile in {"auto", "on", "off"}, "engine.compile", "must be auto, on or off"),
            (self.engine.mc_dropout_samples == 0 or self.engine.mc_dropout_samples >= 2,
             "engine.mc_dropout_samples", "must be 0 (off) or >= 2"),
            (self.engine.mc_dropout_samples == 0 or self.engine.backend == "torch",
             "engine.mc_dropout_samples", "needs engine.backend: torch"),
            (self.scoring.aggregation in {"mean", "topk", "grid"}, "scoring.aggregation",
             "must be one of mean, topk, grid"),
            (0 < self.scoring.topk_fraction <= 1, "scoring.topk_fraction", "must be in (0, 1]"),
            (1 <= self.scoring.map_stride <= 16, "scoring.map_stride", "must be in 1..16"),
            (0 <= self.metrics.port < 65536, "metrics.port", "must be a TCP port (0 disables)"),
            (self.shutdown_deadline_s > 0, "shutdown_deadline_s", "must be > 0"),
            (self.trainer.members >= 1, "trainer.members", "must be >= 1"),
            (self.kafka.security_protocol in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"},
             "kafka.security_protocol", "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
            (self.labelstudio.url is None or self.labelstudio.url.startswith(("http://", "https://")),
             "labelstudio.url", "must be an http:// or https:// URL"),
            (self.labelstudio.presign_s > 0, "labelstudio.presign_s", "must be > 0"),
        ]
        checks += [
            (self.decode.workers >= 1, "decode.workers", "must be >= 1"),
            (0 <= self.engine.threads <= 1024, "engine.threads", "must be in 0..1024 (0: library default)"),
            (1 <= self.scoring.grid <= 64, "scoring.grid", "must be in 1..64"),
            (self.scoring.rare_class_weight >= 0, "scoring.rare_class_weight", "must be >= 0"),
            (self.scoring.drift_window >= 2, "scoring.drift_window", "must be >= 2"),
            (self.scoring.drift_alarm > 0, "scoring.drift_alarm", "must be > 0"),
            (1 <= self.scoring.geohash_precision <= 12, "scoring.geohash_precision", "must be in 1..12"),
            (self.selection.hourly_budget >= 0, "selection.hourly_budget", "must be >= 0"),
            (self.selection.camera_cooldown_s >= 0, "selection.camera_cooldown_s", "must be >= 0"),
            (0 < self.selection.duplicate_similarity <= 1, "selection.duplicate_similarity", "must be in (0, 1]"),
            (self.selection.memory_size >= 0, "selection.memory_size", "must be >= 0"),
            (self.selection.warmup_frames >= 0, "selection.warmup_frames", "must be >= 0"),
            (self.selection.rank_window >= 16, "selection.rank_window", "must be >= 16"),
            (self.selection.sketch_publish_interval_s >= 0, "selection.sketch_publish_interval_s", "must be >= 0"),
            (self.batcher.stage_nice >= 0, "batcher.stage_nice", "must be >= 0"),
            (self.batcher.heap_keep_mb >= 0, "batcher.heap_keep_mb", "must be >= 0"),
            (self.source.radar_join_window_ms >= 0, "source.radar_join_window_ms", "must be >= 0"),
            (self.source.radar_wait_ms >= 0, "source.radar_wait_ms", "must be >= 0"),
            (self.kafka.max_poll_records >= 1, "kafka.max_poll_records", "must be >= 1"),
            (self.kafka.commit_interval_ms >= 1, "kafka.commit_interval_ms", "must be >= 1"),
            (self.kafka.session_timeout_ms >= 1, "kafka.session_timeout_ms", "must be >= 1"),
            (self.kafka.heartbeat_interval_ms >= 1, "kafka.heartbeat_interval_ms", "must be >= 1"),
            (self.kafka.max_poll_interval_ms >= 1, "kafka.max_poll_interval_ms", "must be >= 1"),
            (0 < self.sinks.api_port < 65536, "sinks.api_port", "must be a TCP port"),
            (self.sinks.s3.max_retries >= 0, "sinks.s3.max_retries", "must be >= 0"),
            (self.trainer.width > 0, "trainer.width", "must be > 0"),
            (self.trainer.input_height >= 8, "trainer.input_height", "must be >= 8"),
            (self.trainer.input_width >= 8, "trainer.input_width", "must be >= 8"),
            (self.trainer.epochs >= 0, "trainer.epochs", "must be >= 0"),
            (self.trainer.batch_size >= 1, "trainer.batch_size", "must be >= 1"),
            (self.trainer.lr > 0, "trainer.lr", "must be > 0"),
            (self.trainer.dpe_beta >= 0, "trainer.dpe_beta", "must be >= 0"),
            (0 <= self.trainer.gate_margin <= 1, "trainer.gate_margin", "must be in [0, 1]"),
            (self.trainer.retrain_every_labels >= 1, "trainer.retrain_every_labels", "must be >= 1"),
            (self.trainer.retrain_interval_s > 0, "trainer.retrain_interval_s", "must be > 0"),
            (self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, "log_level",
             "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        ]
        for key, weight in self.selection.score_weights.items():
            checks.append((weight >= 0, f"selection.score_weights.{key}", "must be >= 0"))
        for key, box in self.scoring.regions.items():
            checks.append((len(box) == 4, f"scoring.regions.{key}", "must be [lat_min, lon_min, lat_max, lon_max]"))
        for key, rate in self.selection.slice_rates.items():
            checks.append((0 < rate <= 1, f"selection.slice_rates.{key}", "must be in (0, 1]"))
        for ok, name, message in checks:
            if not ok:
                raise ConfigError(f"{message}, got {_lookup(self, name)!r}", name)
        return self


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
    return obj


def _to_dict(obj: Any, plaintext: bool) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_dict(getattr(obj, f.name), plaintext) for f in dataclasses.fields(obj)}
    if isinstance(obj, Secret):
        return obj.get() if plaintext else "***"
    if isinstance(obj, dict):
        return {k: _to_dict(v, plaintext) if plaintext or not _SECRET_KEY.search(str(k)) else "***"
                for k, v in obj.items()}
    if isinstance(obj, str) and not plaintext:
        return mask_url(obj)
    if isinstance(obj, list):
        return [_to_dict(v, plaintext) for v in obj]
    return obj


# Pass-through mappings (kafka.extra) may carry credentials under any of these names.
_SECRET_KEY = re.compile(r"pass|secret|token|credential|jaas|private|(^|_)key($|_)", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with the password of a ``scheme://user:password@host`` URL replaced by ``***``.

    Catalog URLs (``postgresql://miner:pw@db/avminer``) are printed and logged; their password is not.
    """
    return re.sub(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", r"\g<head>***@", text)


def _masked_values(plain: Any, masked: Any) -> Iterator[str]:
    """The plaintext of every value ``as_dict`` masks, from its plaintext and masked trees side by side."""
    if masked == "***" and plain not in (None, "", "***"):
        if isinstance(plain, dict | list):
            yield from _masked_values(plain, None)  # a secret-named mapping: every value in it
        else:
            yield str(plain)
    elif isinstance(plain, dict):
        for key, value in plain.items():
            yield from _masked_values(value, masked.get(key) if isinstance(masked, dict) else "***")
    elif isinstance(plain, list):
        for i, value in enumerate(plain):
            yield from _masked_values(value, masked[i] if isinstance(masked, list) and i < len(masked) else "***")


class SecretFilter(logging.Filter):
    """Replaces every secret of the settings by ``***`` in log records, whoever logs them.

    Installed on the log handlers by the ``avminer`` command: client libraries log their own
    configuration (kafka-python's admin client prints its keyword arguments, passwords included, at
    DEBUG), and an exception text may quote a URL with its password.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        # A secret is whatever as_dict masks (Secret fields, secret-named kafka.extra keys); URLs: mask_url.
        found = set(_masked_values(settings.as_dict(plaintext_secrets=True), settings.as_dict()))
        # Values under 4 characters (a user name inside a masked jaas mapping) would mask every
        # occurrence of a letter or a word in every line; no real password is that short.
        self._secrets = sorted((v for v in found if len(v) >= 4), key=len, reverse=True)  # longest first

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return mask_url(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


T = TypeVar("T")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (from YAML or an env string) to the declared type ``tp``, or raise naming ``name``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"", "none", "null"}):
            return None
        return _coerce(value, args[0], name)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"must be a mapping, got {type(value).__name__}", name)
        return _build(tp, value, name)
    if tp is Secret:
        return value if isinstance(value, Secret) else Secret(str(value))
    if origin is dict:
        if isinstance(value, str):
            value = _parse_inline(value, name)
        if not isinstance(value, Mapping):
            raise ConfigError(f"must be a mapping, got {type(value).__name__}", name)
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{name}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = _parse_inline(value, name)
        if not isinstance(value, list):
            raise ConfigError(f"must be a list, got {type(value).__name__}", name)
        (et,) = typing.get_args(tp)
        return [_coerce(v, et, f"{name}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"must be a boolean, got {value!r}", name)
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"must be a number, got {value!r}", name)
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"must be {'an integer' if tp is int else 'a number'}, got {value!r}", name) from None
        except OverflowError:
            raise ConfigError(f"must be a finite number, got {value!r}", name) from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"must be an integer, got {value!r}", name)
        if tp is float and not math.isfinite(out):
            raise ConfigError(f"must be a finite number, got {value!r}", name)
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"must be a string, got {type(value).__name__}", name)
        return str(value)
    return value


def _parse_inline(text: str, name: str) -> Any:
    """A mapping or list given as one string (an environment variable): YAML flow syntax or JSON."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"is not valid YAML/JSON ({str(exc).splitlines()[0]}), got {text!r}", name) from None


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise ConfigError(f"unknown field; known fields: {', '.join(sorted(known))}", name)
        kwargs[key] = _coerce(value, hints[key], name)
    return cls(**kwargs)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in environ.items():
        # AVMINER_TEST_* and AVMINER_RUNSLOW steer the test suite (CI exports them), not a process.
        if not key.startswith(ENV_PREFIX) or key in {"AVMINER_CONFIG", "AVMINER_RUNSLOW"} or key.startswith(
            "AVMINER_TEST_"
        ):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from defaults, a YAML file, ``AVMINER_*`` variables and explicit overrides.

    Args:
        path: YAML file; if None, ``$AVMINER_CONFIG`` when set.
        environ: environment to read (default ``os.environ``).
        overrides: nested mapping applied last (CLI flags).

    Raises:
        ConfigError: a file that cannot be read or parsed, an unknown field, or a bad value (named).
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("AVMINER_CONFIG"):
        path = env["AVMINER_CONFIG"]
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = dict(loaded or {})
    data = _merge(data, _env_overrides(env))
    if overrides:
        data = _merge(data, overrides)
    return _build(Settings, data).validate()


def describe_fields(cls: type = Settings, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every leaf field, for ``avminer config show --help-fields``."""
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_fields(tp, f"{name}."))  # type: ignore[arg-type]
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((name, repr(default), f.metadata.get("help", "")))
    return rows
