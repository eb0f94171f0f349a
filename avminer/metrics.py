"""Every Prometheus metric avminer exports, declared in one place.

Naming follows the Prometheus conventions: ``avminer_`` prefix, base units as suffixes (``_seconds``,
``_ratio`` for 0..1 fractions, ``_nats`` for information), ``_total`` for counters, and bounded label
sets. Label vocabularies:

- ``slice``: ``time_of_day/weather/region`` (3 x 4 x the configured regions or geohash prefixes);
- ``reason``: mining reasons (uncertainty, shift, radar, novelty) or dead-letter reasons (decode,
  schema, image, oversize, ...): small fixed sets chosen by the code, never free text;
- ``result``: ok | failed (swaps, commits), released | refused | failed (trainer runs);
- ``stage``, ``backend``, ``source``, ``sink``, ``operation``: fixed by the code;
- ``topic``/``partition``: the input topics and their partitions (bounded by the topic layout).

Parts of the system import the objects they update from here; the Grafana dashboard and the alert
rules in ``deploy/`` name only metrics declared here (``tests/deploy`` checks it with
:func:`series_names`). Processes serve them with :func:`serve` on ``metrics.address:metrics.port``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

# Sample-name suffixes each metric type exports (``_created`` is left out: nothing queries it).
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "info": ("_info",),
    "gauge": ("",),
    "stateset": ("",),
    "unknown": ("",),
}

# -- frames through the pipeline ------------------------------------------------------------------
FRAMES_IN = Counter("avminer_frames_in_total", "Camera frames received from the source", ["source"])
DECISIONS = Counter("avminer_decisions_total", "Decisions written (one per frame)", ["slice", "mined"])
MINED = Counter("avminer_mined_frames_total", "Frames mined for labeling", ["slice", "reason"])
MINING_RATE = Gauge("avminer_mining_rate_ratio", "Observed mined fraction over the recent window", ["slice"])
MINING_TARGET = Gauge("avminer_mining_target_ratio", "Target mined fraction", ["slice"])
SELECTION_THRESHOLD = Gauge("avminer_selection_threshold", "Current score threshold", ["slice", "score"])
DRIFT = Gauge("avminer_drift_statistic", "Windowed shift statistic per slice (z-score)", ["slice"])
DRIFT_ALARM = Gauge("avminer_drift_alarm", "1 while the slice's drift statistic is above the alarm level", ["slice"])
UNCERTAINTY = Histogram(
    "avminer_frame_mutual_information_nats",
    "Frame-level ensemble mutual information (epistemic uncertainty)",
    ["slice"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
ENTROPY = Histogram(
    "avminer_frame_entropy_nats",
    "Frame-level predictive entropy of the ensemble mean (total uncertainty)",
    ["slice"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5),
)
SHIFT_SCORE = Histogram(
    "avminer_frame_shift_score",
    "Frame-level Mahalanobis shift score",
    ["slice"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
RADAR_DISAGREEMENT = Counter(
    "avminer_radar_disagreements_total", "Frames where radar and the ensemble disagree", ["slice"]
)

# -- engine ------------------------------------------------------------------------------------------
ENGINE_LATENCY = Histogram(
    "avminer_engine_batch_duration_seconds",
    "Engine inference time per batch",
    ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ENGINE_BATCH = Histogram("avminer_engine_batch_size", "Frames per engine batch", buckets=(1, 2, 4, 8, 16, 32, 64))
MODEL_INFO = Info("avminer_model", "Model version currently serving")  # exported as avminer_model_info
MODEL_SWAPS = Counter("avminer_model_swaps_total", "Model hot-swaps", ["result"])  # ok | failed
ENGINE_ERRORS = Counter("avminer_engine_errors_total", "Engine batches that raised", ["backend"])

# -- pipeline plumbing -------------------------------------------------------------------------------
QUEUE_DEPTH = Gauge("avminer_stage_queue_depth", "Items waiting in a pipeline stage queue", ["stage"])
CONSUMER_LAG = Gauge("avminer_consumer_lag_messages", "End offset minus committed offset", ["topic", "partition"])
COMMITS = Counter("avminer_commits_total", "Offset commits", ["result"])  # ok | failed
ASSIGNED_PARTITIONS = Gauge(
    "avminer_consumer_assigned_partitions", "Partitions of the frames topic assigned to this miner"
)
PAUSES = Counter("avminer_partition_pauses_total", "Times the consumer paused its partitions for backpressure")
DEAD_LETTERS = Counter("avminer_dead_letters_total", "Messages sent to the dead-letter topic", ["reason"])
SINK_ERRORS = Counter("avminer_sink_errors_total", "Sink failures (retried)", ["sink"])
S3_ERRORS = Counter("avminer_s3_errors_total", "S3 request failures", ["operation"])
KAFKA_ERRORS = Counter("avminer_kafka_errors_total", "Kafka client errors", ["operation"])
LABELS_BACK = Counter("avminer_labels_received_total", "Label results received", ["result"])  # ok | invalid

# -- trainer -------------------------------------------------------------------------------------------
TRAIN_EPOCH = Gauge("avminer_trainer_epoch", "Current training epoch")
TRAIN_LOSS = Gauge("avminer_trainer_loss", "Last training loss")
TRAIN_RUNS = Counter("avminer_trainer_runs_total", "Training runs", ["result"])  # released | refused | failed
TRAIN_EPOCHS_PLANNED = Gauge("avminer_trainer_epochs_planned", "Epochs of the current training run")
TRAIN_PENDING_LABELS = Gauge("avminer_trainer_pending_labels", "Labels received since the last training run")
GATE_MIOU = Gauge(
    "avminer_trainer_gate_miou_ratio", "mIoU per slice at the last gate", ["slice", "model"]
)  # model: candidate | production
GATE_RESULTS = Counter("avminer_trainer_gate_results_total", "Release gate verdicts", ["result"])  # passed | refused
LAST_RELEASE = Gauge("avminer_trainer_last_release_timestamp_seconds", "Unix time of the last published release")


def serve(address: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on ``address:port`` in a daemon thread (port 0: do nothing)."""
    if port:
        start_http_server(port, addr=address, registry=registry)


def series_names(registry: CollectorRegistry = REGISTRY, prefix: str = "avminer_") -> set[str]:
    """Every series name the registry can export, as PromQL sees it.

    Counters appear as ``<name>_total``, histograms as ``_bucket``/``_sum``/``_count`` and Info
    metrics as ``<name>_info``, whether or not a labelled child exists yet (the dashboard and the
    alert rules are checked against this set).
    """
    return set().union(*family_series(registry, prefix).values())


def family_series(registry: CollectorRegistry = REGISTRY, prefix: str = "avminer_") -> dict[str, set[str]]:
    """``{family name: the series names it exports}`` for the families whose name starts with ``prefix``."""
    return {
        family.name: {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        for family in registry.collect()
        if family.name.startswith(prefix)
    }
