-- no-transaction
-- (sqlx runs this file outside its own transaction: `PRAGMA foreign_keys` is a no-op inside
-- one, and it must be off here, or dropping the old `imports` would cascade-delete every
-- `import_attempts` row. The work itself is one transaction below.)
--
-- 1. Row ids unique forever: `imports` is rebuilt with AUTOINCREMENT, so an id freed by
--    `purge` (or any DELETE) is never given to a new row and an old ticket's id never names
--    another row. The columns, CHECK constraints (same names), indexes and defaults are those
--    of 0001 and 0003; a later rebuild must carry over the triggers of 0004 and 0005 too.
-- 2. Canonical times: SQLite compares the time columns as text, but `julianday()` (the CHECK)
--    accepts '2025-11-25 10:00' or '2025-11-25T12:00:00+02:00', which sort wrongly against
--    '2025-11-25T09:30:00.000Z'. Triggers rewrite any parseable time an INSERT or UPDATE
--    writes to the canonical strftime('%Y-%m-%dT%H:%M:%fZ') form; what julianday() cannot
--    parse is still refused by `next_attempt_at_must_be_a_time` (and left as written in the
--    other columns, as before). Existing rows are normalised by the copy.
--
-- Every statement is safe to run twice (a crash between COMMIT and sqlx's record of this
-- migration re-runs it).

PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

DROP TABLE IF EXISTS imports_rebuilt;
CREATE TABLE imports_rebuilt (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
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

INSERT INTO imports_rebuilt (id, url, kind, options, external_id, state, attempts,
        next_attempt_at, importly_job_id, media_url, credits_used, result, last_error,
        created_at, updated_at, completed_at)
    SELECT id, url, kind, options, external_id, state, attempts,
        coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', next_attempt_at), next_attempt_at),
        importly_job_id, media_url, credits_used, result, last_error,
        coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at),
        coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', updated_at), updated_at),
        coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', completed_at), completed_at)
    FROM imports ORDER BY id;

-- The high-water mark: the largest id copied, or the one `imports` already had when this
-- runs a second time (ids deleted before the first run above the largest left are unknown).
DELETE FROM sqlite_sequence WHERE name = 'imports_rebuilt';
INSERT INTO sqlite_sequence (name, seq) VALUES ('imports_rebuilt', max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'imports'), 0),
    coalesce((SELECT max(id) FROM imports), 0)));

DROP TABLE imports;
ALTER TABLE imports_rebuilt RENAME TO imports;

-- The indexes of 0001 and 0003, word for word.
CREATE INDEX imports_due ON imports (kind, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX imports_by_state ON imports (state, updated_at);
CREATE INDEX imports_metadata_by_url ON imports (url, id) WHERE kind = 'metadata';
CREATE INDEX imports_waiting_for_preflight ON imports (url)
    WHERE state = 'pending' AND last_error = 'waiting for preflight metadata';

-- A value is rewritten only when strftime() parses it and it is not canonical yet, so our
-- own writes (always canonical) cost one comparison per column and no extra UPDATE, and the
-- rewrite does not fire the triggers again.
CREATE TRIGGER imports_times_canonical_on_insert AFTER INSERT ON imports
WHEN coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_attempt_at) <> NEW.next_attempt_at, 0)
  OR coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) <> NEW.created_at, 0)
  OR coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at) <> NEW.updated_at, 0)
  OR coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.completed_at) <> NEW.completed_at, 0)
BEGIN
    UPDATE imports SET
        next_attempt_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', next_attempt_at), next_attempt_at),
        created_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at),
        updated_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', updated_at), updated_at),
        completed_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', completed_at), completed_at)
    WHERE id = NEW.id;
END;

CREATE TRIGGER imports_times_canonical_on_update
AFTER UPDATE OF next_attempt_at, created_at, updated_at, completed_at ON imports
WHEN coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.next_attempt_at) <> NEW.next_attempt_at, 0)
  OR coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) <> NEW.created_at, 0)
  OR coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at) <> NEW.updated_at, 0)
  OR coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', NEW.completed_at) <> NEW.completed_at, 0)
BEGIN
    UPDATE imports SET
        next_attempt_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', next_attempt_at), next_attempt_at),
        created_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at),
        updated_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', updated_at), updated_at),
        completed_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', completed_at), completed_at)
    WHERE id = NEW.id;
END;

COMMIT;
PRAGMA foreign_keys = ON;
