"""Every Prometheus metric avminer exports, declared in one place.

Naming: ``avminer_`` prefix, base units (seconds, bytes), ``_total`` for counters, and bounded label
sets (slice keys are ``time_of_day/weather/region`` with a bounded region vocabulary; reasons and
stages are small fixed sets). Parts of the system import the objects they update from here; the
dashboard and alert rules in ``deploy/`` name only metrics declared here (a test checks it).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

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
    "avminer_frame_uncertainty",
    "Frame-level ensemble mutual information (nats)",
    ["slice"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
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
    "avminer_engine_batch_seconds",
    "Engine inference time per batch",
    ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ENGINE_BATCH = Histogram("avminer_engine_batch_size", "Frames per engine batch", buckets=(1, 2, 4, 8, 16, 32, 64))
MODEL_INFO = Info("avminer_model", "Model version currently serving")
MODEL_SWAPS = Counter("avminer_model_swaps_total", "Model hot-swaps", ["result"])  # ok | failed

# -- pipeline plumbing -------------------------------------------------------------------------------
QUEUE_DEPTH = Gauge("avminer_stage_queue_depth", "Items waiting in a pipeline stage queue", ["stage"])
CONSUMER_LAG = Gauge("avminer_consumer_lag_messages", "End offset minus committed offset", ["topic", "partition"])
COMMITS = Counter("avminer_commits_total", "Offset commits", ["result"])  # ok | failed
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
GATE_MIOU = Gauge("avminer_trainer_gate_miou", "mIoU per slice at the last gate", ["slice", "model"])


def serve(address: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on ``address:port`` in a daemon thread (port 0: do nothing)."""
    if port:
        start_http_server(port, addr=address, registry=registry)
