-- avminer provenance catalog, schema version 1.
-- One schema for SQLite and PostgreSQL: portable types only (TEXT, BIGINT, INTEGER, DOUBLE PRECISION),
-- JSON kept as TEXT. Statements are separated by ';' at the end of a line.

CREATE TABLE IF NOT EXISTS catalog_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per mined frame. state only moves forward: mined -> requested -> labeled -> used.
CREATE TABLE IF NOT EXISTS samples (
    sample_id       TEXT PRIMARY KEY,
    frame_id        TEXT NOT NULL,
    frame_uri       TEXT,
    uncertainty_uri TEXT,
    prediction_uri  TEXT,
    vehicle         TEXT NOT NULL,
    camera          TEXT NOT NULL,
    timestamp_us    BIGINT NOT NULL,
    slice           TEXT NOT NULL,
    scores          TEXT NOT NULL,           -- JSON object score name -> value
    reasons         TEXT NOT NULL,           -- JSON list: uncertainty | shift | radar | novelty
    model_version   TEXT NOT NULL,
    mined           INTEGER NOT NULL,        -- 1 mined, 0 kept for reference only
    width           INTEGER,
    height          INTEGER,
    priority        DOUBLE PRECISION NOT NULL,
    state           TEXT NOT NULL,
    decided_at_us   BIGINT,
    requested_at_us BIGINT,
    label_uri       TEXT,
    labeler         TEXT,
    labeled_at_us   BIGINT,
    used_by_run     TEXT,                    -- the latest training run that used the label
    updated_at_us   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_slice_time ON samples (slice, timestamp_us);
CREATE INDEX IF NOT EXISTS samples_time ON samples (timestamp_us);
CREATE INDEX IF NOT EXISTS samples_state ON samples (state);

-- A dataset version is a frozen query result: its rows never change once written.
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id    TEXT NOT NULL,
    version       INTEGER NOT NULL,
    query         TEXT NOT NULL,             -- JSON of the DatasetQuery that produced it
    created_at_us BIGINT NOT NULL,
    sample_count  INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, version)
);

CREATE TABLE IF NOT EXISTS dataset_samples (
    dataset_id TEXT NOT NULL,
    version    INTEGER NOT NULL,
    sample_id  TEXT NOT NULL,
    frame_uri  TEXT,
    label_uri  TEXT,                         -- the label as it was when frozen (content-addressed)
    PRIMARY KEY (dataset_id, version, sample_id)
);

CREATE TABLE IF NOT EXISTS training_runs (
    run_id          TEXT PRIMARY KEY,
    model_version   TEXT,
    dataset_id      TEXT NOT NULL,
    dataset_version INTEGER NOT NULL,
    started_at_us   BIGINT NOT NULL,
    notes           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS training_runs_model ON training_runs (model_version);
