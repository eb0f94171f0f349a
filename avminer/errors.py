"""One error hierarchy for avminer.

Every error avminer raises on purpose derives from :class:`AvminerError`, with one subclass per part
of the system, so callers can catch a whole part (``except SinkError``) or everything
(``except AvminerError``). Foreign errors are wrapped with ``raise ... from exc`` so the cause survives.
Messages say what was wrong and how to fix it.
"""

from __future__ import annotations


class AvminerError(Exception):
    """Root of every error avminer raises deliberately."""


class ConfigError(AvminerError):
    """A configuration value is missing or invalid.

    Attributes:
        field: dotted path of the offending field (``kafka.bootstrap_servers``), when known.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class EventDecodeError(AvminerError):
    """Bytes could not be decoded into an event (truncated, unknown schema, wrong types)."""


class EventEncodeError(AvminerError):
    """A record could not be encoded against its schema."""


class DriveLogError(AvminerError):
    """A drive log file is missing, corrupt or not a drive log."""


class DatasetError(AvminerError):
    """A dataset directory (CamVid layout) is malformed."""


class DecodeError(AvminerError):
    """A frame's image could not be decoded, or breaks the size limits (poison input)."""


class SourceError(AvminerError):
    """A source (Kafka consumer group, drive log) failed."""


class EngineError(AvminerError):
    """An inference engine failed to load or run."""


class BundleError(EngineError):
    """A model bundle is malformed, corrupt (checksum mismatch) or incompatible."""


class BackendUnavailableError(EngineError):
    """An optional engine backend (TensorRT, CUDA) is not installed or has no device."""


class ScoringError(AvminerError):
    """Scoring inputs are inconsistent (shapes, missing reference statistics)."""


class SelectionError(AvminerError):
    """The selection policy was misconfigured or fed inconsistent data."""


class SinkError(AvminerError):
    """A sink (S3, Kafka topic, local directory, catalog) failed to store a sample."""


class SinkUnavailableError(SinkError):
    """A sink is temporarily unreachable; the caller should pause and retry, not drop."""


class CatalogError(SinkError):
    """The provenance catalog rejected an operation."""


class LabelError(AvminerError):
    """A label result is invalid (mask size, class ids) or cannot be stored."""


class TrainerError(AvminerError):
    """Training, gating or releasing a model failed."""


class GateRefusedError(TrainerError):
    """A release was refused because a condition slice regressed beyond the allowed margin."""


class MiningError(AvminerError):
    """The mining pipeline failed in a way it cannot recover from."""
