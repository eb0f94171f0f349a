"""Named selection profiles: the settings that make a small, local run show something.

The production defaults (``selection.target_rate`` 1/1000, 200 warm-up frames per slice, a camera
cooldown of 2 s) are right for a fleet and mine nothing from the 48-frame sample drive. The
``sample`` profile scales them to a log that short, and says so: :func:`describe` is printed by every
command that applies it, and :func:`check_embedded` refuses it when a broker is configured, so it can
never quietly lower the thresholds of a miner that reads Kafka.
"""

from __future__ import annotations

from typing import Any

from avminer.config import SelectionSettings, Settings
from avminer.errors import ConfigError

SAMPLE = "sample"
PROFILES = (SAMPLE,)

SAMPLE_TARGET_RATE = 0.1
SAMPLE_WARMUP_FRAMES = 8


def sample_selection(
    base: SelectionSettings, target_rate: float = SAMPLE_TARGET_RATE, warmup_frames: int = SAMPLE_WARMUP_FRAMES
) -> dict[str, Any]:
    """``selection`` overrides of the sample profile, derived from the configured ``base``.

    The per-condition ``slice_rates`` keep their ratio to the target rate (rare conditions are still
    mined more), capped at 1. The camera cooldown is off (the sample's frames are seconds apart) and
    so are the fleet sketches (there is no fleet).
    """
    if not 0 < target_rate <= 1:
        raise ConfigError(f"target rate: must be in (0, 1], got {target_rate}")
    if warmup_frames < 0:
        raise ConfigError(f"warm-up frames: must be >= 0, got {warmup_frames}")
    scale = target_rate / base.target_rate
    return {
        "target_rate": target_rate,
        "slice_rates": {k: min(1.0, v * scale) for k, v in base.slice_rates.items()},
        "warmup_frames": warmup_frames,
        "camera_cooldown_s": 0.0,
        "fleet_sketches": False,
    }


def profile_overrides(name: str, base: SelectionSettings) -> dict[str, Any]:
    """Settings overrides of the named profile (``load_settings(..., overrides=...)``).

    Raises:
        ConfigError: unknown profile name.
    """
    if name != SAMPLE:
        raise ConfigError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return {"selection": sample_selection(base)}


def check_embedded(settings: Settings, name: str) -> None:
    """Refuse a profile on a miner that reads Kafka: its thresholds are for a 48-frame log.

    Raises:
        ConfigError: ``kafka.bootstrap_servers`` is set.
    """
    if not settings.embedded:
        raise ConfigError(
            f"profile {name!r} is for embedded runs on a short drive log, but kafka.bootstrap_servers is set "
            f"({settings.kafka.bootstrap_servers}); a miner on Kafka uses the configured selection.* settings: "
            "drop --profile, or unset kafka.bootstrap_servers to mine a drive log"
        )


def describe(settings: Settings, name: str) -> str:
    """One line naming the profile's effective selection settings and the production defaults they replace."""
    sel = settings.selection
    production = SelectionSettings()
    rates = {k: round(v, 3) for k, v in sel.slice_rates.items()}
    return (
        f"profile {name!r} (not the production defaults): target_rate={sel.target_rate:g} slice_rates={rates} "
        f"warmup_frames={sel.warmup_frames} camera_cooldown_s={sel.camera_cooldown_s:g} "
        f"fleet_sketches={sel.fleet_sketches} -- production: target_rate={production.target_rate:g}, "
        f"warmup_frames={production.warmup_frames}, camera_cooldown_s={production.camera_cooldown_s:g}, "
        "which mine nothing from a log of tens of frames"
    )
