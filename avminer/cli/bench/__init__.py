"""``avminer bench ...``: commands that measure and print figures (``--json``: one JSON object)."""
