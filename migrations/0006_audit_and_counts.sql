-- 1. The audit log: every operator action (retry, cancel, resume, purge), from the admin API
--    ("api") or the command line ("cli"), newest last. `detail` says what it did or why not.
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    source  TEXT    NOT NULL CHECK (source IN ('api', 'cli')),
    ok      INTEGER NOT NULL CHECK (ok IN (0, 1)),
    detail  TEXT
);

-- 2. Counts that stay fast at millions of rows. `status` (and the admin API's overview)
--    read rows per state and kind and the credits spent; counting them is a scan of the
--    whole table (a second or more at 1,000,000 rows). Triggers keep the totals in
--    `imports_counts` instead: one small UPSERT per insert, state change or delete, and
--    `status` reads a handful of rows. A later rebuild of `imports` must re-create them.
CREATE TABLE imports_counts (
    state   TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    credits INTEGER NOT NULL DEFAULT 0,   -- sum of credits_used over these rows
    PRIMARY KEY (state, kind)
) WITHOUT ROWID;

INSERT INTO imports_counts (state, kind, n, credits)
SELECT state, kind, count(*), coalesce(sum(credits_used), 0) FROM imports GROUP BY state, kind;

CREATE TRIGGER imports_counts_on_insert AFTER INSERT ON imports
BEGIN
    INSERT INTO imports_counts (state, kind, n, credits)
    VALUES (NEW.state, NEW.kind, 1, coalesce(NEW.credits_used, 0))
    ON CONFLICT (state, kind) DO UPDATE SET n = n + 1, credits = credits + excluded.credits;
END;

CREATE TRIGGER imports_counts_on_delete AFTER DELETE ON imports
BEGIN
    UPDATE imports_counts SET n = n - 1, credits = credits - coalesce(OLD.credits_used, 0)
    WHERE state = OLD.state AND kind = OLD.kind;
END;

CREATE TRIGGER imports_counts_on_update AFTER UPDATE OF state, kind, credits_used ON imports
WHEN OLD.state IS NOT NEW.state OR OLD.kind IS NOT NEW.kind
  OR OLD.credits_used IS NOT NEW.credits_used
BEGIN
    -- One statement for both sides (the row leaves one count and joins another): every
    -- state change of a busy daemon pays for it.
    INSERT INTO imports_counts (state, kind, n, credits)
    VALUES (OLD.state, OLD.kind, -1, -coalesce(OLD.credits_used, 0)),
           (NEW.state, NEW.kind, 1, coalesce(NEW.credits_used, 0))
    ON CONFLICT (state, kind) DO UPDATE
        SET n = n + excluded.n, credits = credits + excluded.credits;
END;

-- 3. Indexes for the rest of `status` and for the row pages:
--    the oldest pending row (a seek instead of a scan of every pending row),
CREATE INDEX imports_pending_by_created ON imports (created_at) WHERE state = 'pending';
--    the latest error (rows with an error only),
CREATE INDEX imports_errors_by_updated ON imports (updated_at) WHERE last_error IS NOT NULL;
--    the latest completed rows of a kind (the drain estimate's mean job time: without it,
--    asking for the metadata rows among 600,000 completed imports walks all of them),
CREATE INDEX imports_completed_by_kind ON imports (kind, updated_at) WHERE state = 'completed';
--    failed rows grouped by their error (the dashboard's "failures by reason"),
CREATE INDEX imports_failed_by_error ON imports (last_error, updated_at) WHERE state = 'failed';
--    and a page of one state in id order, from a cursor (`WHERE state = ? AND id > ?
--    ORDER BY id LIMIT n` is a range of this index).
CREATE INDEX imports_by_state_id ON imports (state, id);
