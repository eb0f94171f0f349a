"""Labels back: mask validation, the LabelResult consumer, the oracle labeler, Label Studio export/import.

- :mod:`avminer.labels.masks` — decode and validate class-id PNGs (void 11);
- :mod:`avminer.labels.consumer` — :class:`LabelApplier` (validate, store, mark labeled) and the Kafka
  consumer of ``topics.label_results`` with its dead-letter path;
- :mod:`avminer.labels.oracle` — ground-truth answers for simulation and tests;
- :mod:`avminer.labels.brush_rle`, :mod:`avminer.labels.labelstudio` — Label Studio tasks and exports;
- :mod:`avminer.labels.labelstudio_api` — a live Label Studio: push tasks, pull annotations;
- :mod:`avminer.labels.ml_backend` — avminer as Label Studio's ML backend (predict, annotation events);
- :mod:`avminer.labels.deliver` — where returned labels go: the results topic, or the catalog.
"""
