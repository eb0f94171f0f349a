"""Fixtures of the mining tests: a fresh set of fleet topics on the session's broker."""

from __future__ import annotations

import pytest

from tests.services import KafkaBroker


@pytest.fixture
def fleet_topics(kafka: KafkaBroker) -> dict[str, str]:
    """Fresh topics for one test: frames and radar with 4 partitions, the outputs with 1."""
    parts = {"frames": 4, "radar": 4, "decisions": 1, "label_requests": 1, "dead_letter": 1, "releases": 1}
    return {name: kafka.topic(name.replace("_", "-"), n) for name, n in parts.items()}

