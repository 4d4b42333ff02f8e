-- The queue users write into, and the log behind `importlyd ticket`.
-- Timestamps are UTC ISO-8601 text with milliseconds ("2026-11-25T10:00:00.123Z"), so they
-- sort and compare as text and read well in `sqlite3`.

CREATE TABLE imports (
    id              INTEGER PRIMARY KEY,
    url             TEXT    NOT NULL
        CONSTRAINT url_must_be_http_or_https CHECK (
            ((lower(substr(url, 1, 7)) = 'http://' AND length(url) > 7)
              OR (lower(substr(url, 1, 8)) = 'https://' AND length(url) > 8))
            AND instr(url, ' ') = 0 AND instr(url, char(10)) = 0 AND instr(url, char(9)) = 0),
    kind            TEXT    NOT NULL DEFAULT 'import'
        CONSTRAINT kind_must_be_import_or_metadata CHECK (kind IN ('import', 'metadata')),
    -- CASE, not AND: SQLite does not promise to short-circuit, and json_type() raises a
    -- non-constraint error on malformed JSON.
    options         TEXT    NOT NULL DEFAULT '{}'
        CONSTRAINT options_must_be_json_object CHECK (
            CASE WHEN json_valid(options) THEN json_type(options) = 'object' ELSE 0 END),
    external_id     TEXT    UNIQUE,
    state           TEXT    NOT NULL DEFAULT 'pending'
        CONSTRAINT state_must_be_known CHECK (
            state IN ('pending', 'submitting', 'running', 'completed', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0
        CONSTRAINT attempts_must_not_be_negative CHECK (attempts >= 0),
    next_attempt_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        CONSTRAINT next_attempt_at_must_be_a_time CHECK (julianday(next_attempt_at) IS NOT NULL),
    importly_job_id TEXT,
    media_url       TEXT,
    credits_used    INTEGER,
    result          TEXT,
    last_error      TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    completed_at    TEXT,
    CONSTRAINT running_row_needs_job_id CHECK (state <> 'running' OR importly_job_id IS NOT NULL)
);

-- "Next due pending row of this kind" is one index seek; the index holds only pending rows,
-- so it stays small however many finished rows the table keeps.
CREATE INDEX imports_due ON imports (kind, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX imports_by_state ON imports (state, updated_at);

-- One row per HTTP exchange that went wrong, plus the submit that got a job id.
CREATE TABLE import_attempts (
    id              INTEGER PRIMARY KEY,
    import_id       INTEGER NOT NULL REFERENCES imports (id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,   -- the row's own failure count when this exchange began
    method          TEXT    NOT NULL,
    endpoint        TEXT    NOT NULL,
    request_body    TEXT,               -- exactly as sent; never holds the Authorization header
    started_at      TEXT    NOT NULL,
    finished_at     TEXT    NOT NULL,
    http_status     INTEGER,
    error           TEXT,               -- transport failure: timeout, connection refused, TLS
    outcome         TEXT    NOT NULL,   -- the classified outcome, e.g. rate_limited
    rate_limit      TEXT,               -- JSON: X-RateLimit-* and Retry-After as received
    response_body   TEXT,
    body_truncated  INTEGER NOT NULL DEFAULT 0,
    job_id          TEXT,
    daemon_version  TEXT    NOT NULL
);
CREATE INDEX import_attempts_by_import ON import_attempts (import_id, id);

-- A stored pause survives restarts; `importlyd resume` deletes it and the daemon notices.
CREATE TABLE pauses (
    scope       TEXT PRIMARY KEY CHECK (scope IN ('all', 'import', 'metadata')),
    reason      TEXT    NOT NULL,
    http_status INTEGER,
    since       TEXT    NOT NULL,
    next_probe  TEXT    NOT NULL
);

-- Request budgets as last known, so a restart does not grant a second burst.
CREATE TABLE buckets (
    name        TEXT PRIMARY KEY,  -- e.g. 'import' (server-reported) or 'import.local' (config)
    lim         INTEGER NOT NULL,
    remaining   INTEGER NOT NULL,
    reset_at    INTEGER NOT NULL,  -- unix milliseconds when the window ends
    window_ms   INTEGER NOT NULL,
    blocked_until INTEGER,         -- unix milliseconds; set by a rate-limit 429
    updated_at  TEXT    NOT NULL
);
